"""Encoder throughput and quality: int8 against float32 (and float32 against bare sentence-transformers), same run.

    .venv/bin/python bench/encoder_bench.py [--reviews ../shared/data/toys-10k/reviews.csv] [--sentences 2000]
        [--quality-sentences 5000] [--threads 1 2] [--rounds 2] [--no-bare]

Sentences: a seeded sample of toys-10k review sentences, split as training splits them.
- Throughput: for 1 and 2 threads the encoders take turns (float32, int8, bare, float32, ...:
  `--rounds`, the best round of each counts), so machine noise hits all alike. float32 and int8 are the
  pipeline's ONNX Runtime encoders (knn.encoder_export builds both); bare = `SentenceTransformer(path)
  .encode(sentences, batch_size=64, normalize_embeddings=True)` on the same weights.
- Quality of int8 against float32 on `--quality-sentences` sentences: cosine between each sentence's two
  vectors, and recall@10 of the int8 vectors' 10 nearest neighbours (among the same sentences, by
  exact search) against float32's.
- Query latency: one short query at a time, 1 thread, both encoders taking turns; p50/p90.
Targets: int8 >= 2.0 x float32 sentences/s at every thread count; neighbour recall@10 >= 0.95; int8
query p50 <= float32's; float32 >= 0.90 x bare. Search quality on an evaluation set is measured
separately (`python -m knn.evaluate MODEL_DIR bench/eval/toys_queries.json`, one model per precision).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from common import TOYS_10K, percentiles, report, target, toys_sentences

QUERIES = ["my kids loved it", "a bath toy that floats", "it broke within a week", "great gift for a toddler",
           "too small", "the paint chipped off", "easy to assemble", "my dog chewed it up"]


def neighbour_recall(reference: np.ndarray, other: np.ndarray, k: int = 10, chunk: int = 1000) -> float:
    """Mean over rows of |other's k nearest rows & reference's k nearest rows| / k (self excluded)."""
    hits = 0
    for start in range(0, len(reference), chunk):
        rows = np.arange(start, min(start + chunk, len(reference)))
        found = []
        for vectors in (reference, other):
            scores = vectors[rows] @ vectors.T
            scores[np.arange(len(rows)), rows] = -np.inf
            found.append(np.argpartition(-scores, k, axis=1)[:, :k])
        hits += sum(len(set(a) & set(b)) for a, b in zip(*found))
    return hits / (k * len(reference))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", default=str(TOYS_10K))
    parser.add_argument("--sentences", type=int, default=2000, help="sentences per throughput round")
    parser.add_argument("--quality-sentences", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--queries", type=int, default=200, help="single-query encodings per encoder")
    parser.add_argument("--no-bare", action="store_true", help="skip bare sentence-transformers")
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    from knn.encoder import load_encoder, read_settings
    from knn.encoder_export import encoder_model_path

    paths = {precision: encoder_model_path(precision) for precision in ("float32", "int8")}
    pool = toys_sentences(args.reviews, max(args.sentences, args.quality_sentences))
    sentences = pool[:args.sentences]
    bare = None
    if not args.no_bare:
        import torch
        from sentence_transformers import SentenceTransformer

        from knn.encoder import bundled_model_path

        bare = SentenceTransformer(str(bundled_model_path()), device="cpu", local_files_only=True)
    results = {"sentences": len(sentences), "int8_recipe": read_settings(paths["int8"]).get("int8_recipe"),
               "by_threads": {}}
    targets = []
    for threads in args.threads:
        encoders = {precision: load_encoder(path, threads=threads, verify=False) for precision, path in paths.items()}
        if bare is not None:
            torch.set_num_threads(threads)
        runs = {name: (lambda e=e: e.encode(sentences, batch_size=64, progress=False)) for name, e in encoders.items()}
        if bare is not None:
            runs["bare"] = lambda: bare.encode(sentences, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        for name, run in runs.items():  # warm up every encoder
            (encoders[name].encode if name in encoders else bare.encode)(sentences[:64])
        best = {name: float("inf") for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                started = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - started)
        rates = {name: len(sentences) / seconds for name, seconds in best.items()}
        row = {f"{name}_sentences_per_s": round(rate, 1) for name, rate in rates.items()}
        row["int8_vs_float32"] = round(rates["int8"] / rates["float32"], 3)
        if bare is not None:
            row["float32_vs_bare"] = round(rates["float32"] / rates["bare"], 3)
        results["by_threads"][str(threads)] = row
        print(f"threads {threads}: " + ", ".join(f"{name} {rate:.0f} sentences/s" for name, rate in rates.items()))
        targets.append(target(f"int8 encoder throughput vs float32, {threads} thread(s)", row["int8_vs_float32"], 2.0, "x",
                              higher_is_better=True, note=f"{rates['int8']:.0f} vs {rates['float32']:.0f} sentences/s"))
        if bare is not None:
            targets.append(target(f"float32 encoder throughput vs bare encode, {threads} thread(s)", row["float32_vs_bare"],
                                  0.90, "x", higher_is_better=True,
                                  note=f"{rates['float32']:.0f} vs {rates['bare']:.0f} sentences/s"))

    quality_sentences = pool[:args.quality_sentences]
    encoders = {precision: load_encoder(path, threads=max(args.threads), verify=False) for precision, path in paths.items()}
    vectors = {name: encoder.encode(quality_sentences, progress=False) for name, encoder in encoders.items()}
    cosines = np.sum(vectors["float32"] * vectors["int8"], axis=1)
    recall = neighbour_recall(vectors["float32"], vectors["int8"])
    results["quality"] = {"sentences": len(quality_sentences), "cosine_mean": round(float(cosines.mean()), 5),
                          "cosine_p01": round(float(np.percentile(cosines, 1)), 5),
                          "cosine_min": round(float(cosines.min()), 5), "neighbour_recall_at_10": round(recall, 4)}
    print(f"int8 vs float32 on {len(quality_sentences)} sentences: cosine mean {cosines.mean():.4f}, "
          f"min {cosines.min():.4f}; neighbour recall@10 {recall:.4f}")
    targets.append(target("int8 neighbours' recall@10 against float32's", recall, 0.95, "", higher_is_better=True,
                          note=f"{len(quality_sentences)} toys-10k sentences, cosine mean {cosines.mean():.4f}"))

    encoders = {precision: load_encoder(path, threads=1, verify=False) for precision, path in paths.items()}
    timings = {name: [] for name in encoders}
    for name, encoder in encoders.items():
        encoder.encode(QUERIES)
    for number in range(args.queries):
        query = QUERIES[number % len(QUERIES)]
        for name, encoder in encoders.items():
            started = time.perf_counter()
            encoder.encode([query], progress=False)
            timings[name].append(time.perf_counter() - started)
    results["query_latency_1_thread"] = {name: percentiles(values) for name, values in timings.items()}
    p50 = {name: results["query_latency_1_thread"][name]["p50_ms"] for name in encoders}
    print(f"one short query, 1 thread: p50 int8 {p50['int8']:.2f} ms, float32 {p50['float32']:.2f} ms")
    targets.append(target("int8 query encoding p50 vs float32's", p50["int8"] / p50["float32"], 1.0, "x",
                          note=f"{p50['int8']:.2f} vs {p50['float32']:.2f} ms, one short query, 1 thread"))
    report("encoder", results, targets, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
