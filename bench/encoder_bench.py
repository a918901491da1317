"""Encoder throughput: the pipeline's encoder (ONNX Runtime) against bare sentence-transformers, same run.

    .venv/bin/python bench/encoder_bench.py [--reviews ../shared/data/toys-10k/reviews.csv] [--sentences 3000]

Sentences: a seeded sample of toys-10k review sentences, split as training splits them. For 1 and 2
threads, the two encoders take turns (pipeline, bare, pipeline, bare, ...: `--rounds`, the best round
of each counts), so machine noise hits both alike. Bare = `SentenceTransformer(path).encode(sentences,
batch_size=64, normalize_embeddings=True)` on the same weights. Also reports the largest difference
between the two sets of vectors. Target: pipeline >= 0.90 x bare sentences/s.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from common import TOYS_10K, report, target, toys_sentences


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", default=str(TOYS_10K))
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    import torch
    from sentence_transformers import SentenceTransformer

    from knn.encoder import bundled_model_path, load_encoder

    sentences = toys_sentences(args.reviews, args.sentences)
    bare = SentenceTransformer(str(bundled_model_path()), device="cpu", local_files_only=True)
    results, targets = {"sentences": len(sentences), "by_threads": {}}, []
    for threads in args.threads:
        torch.set_num_threads(threads)
        pipeline = load_encoder(threads=threads)
        pipeline.encode(sentences[:64]), bare.encode(sentences[:64])  # warm up both
        best = {"pipeline": float("inf"), "bare": float("inf")}
        for _ in range(args.rounds):
            for name in ("pipeline", "bare"):
                started = time.perf_counter()
                if name == "pipeline":
                    mine = pipeline.encode(sentences, batch_size=64, progress=False)
                else:
                    theirs = bare.encode(sentences, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
                best[name] = min(best[name], time.perf_counter() - started)
        rates = {name: len(sentences) / seconds for name, seconds in best.items()}
        ratio = rates["pipeline"] / rates["bare"]
        difference = float(np.abs(mine - theirs).max())
        results["by_threads"][str(threads)] = {"pipeline_sentences_per_s": round(rates["pipeline"], 1),
                                               "bare_sentences_per_s": round(rates["bare"], 1),
                                               "ratio": round(ratio, 3), "max_abs_vector_difference": difference}
        print(f"threads {threads}: pipeline {rates['pipeline']:.0f} sentences/s, bare sentence-transformers "
              f"{rates['bare']:.0f} sentences/s, ratio {ratio:.2f}, max |difference| {difference:.1e}")
        targets.append(target(f"encoder throughput vs bare encode, {threads} thread(s)", ratio, 0.90, "x",
                              higher_is_better=True,
                              note=f"{rates['pipeline']:.0f} vs {rates['bare']:.0f} sentences/s"))
    report("encoder", results, targets, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
