"""Search quality with float16 vectors against float32 (issue 14): `knn.evaluate` on toys-10k, both
model dirs from one embedding of the reviews, side by side in one run.

    .venv/bin/python bench/vector_dtype_eval.py [--reviews ../shared/data/toys-10k/reviews.csv]

Splits and embeds the reviews once (knn.build.build_corpus), builds the sentence and headline graphs
once, and saves two model dirs that differ only in `vector_dtype` (knn.model_dir.save_model_dir):
float32, as model dirs were written before, and float16, the default. Then `knn.evaluate.evaluate` runs
every query set of bench/eval/ that is about toys (toys_queries.json, toys_paraphrase_queries.json) on
both, with the model's graph and with exact search. Target: every metric within 0.005 of float32.
Writes --out (default bench/results/vector_dtype_eval.json). Takes 3-6 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (ROOT, HERE):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from common import TOYS_10K, report, target  # noqa: E402

QUERY_SETS = ("toys_queries.json", "toys_paraphrase_queries.json")
TOLERANCE = 0.005
METRICS = ("recall@1", "recall@5", "recall@10", "mrr@10")


def main(argv=None) -> dict:
    from knn.build import build_corpus
    from knn.encoder import load_encoder
    from knn.encoder_export import encoder_model_path
    from knn.evaluate import evaluate
    from knn.index import build_index
    from knn.model_dir import save_model_dir
    from knn.reviews import read_reviews

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=Path, default=TOYS_10K)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "vector_dtype_eval.json")
    args = parser.parse_args(argv)
    if not args.reviews.is_file():
        sys.exit(f"no reviews file at {args.reviews}: pass --reviews")

    started = time.perf_counter()
    encoder_path = encoder_model_path("float32")
    corpus = build_corpus(read_reviews(args.reviews), load_encoder(encoder_path, threads=args.threads))
    index = build_index(corpus.vectors, "graph")
    headline_index = build_index(corpus.headline_vectors, "graph")
    print(f"embedded and indexed {len(corpus.sentences)} sentences in {time.perf_counter() - started:.0f} s")
    results: dict = {"reviews_file": str(args.reviews), "sentences": len(corpus.sentences), "sets": {}}
    targets = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for dtype in ("float32", "float16"):
            dirs[dtype] = save_model_dir(Path(tmp) / dtype, corpus, index, encoder_path,
                                         headline_index=headline_index, vector_dtype=dtype)
        for name in QUERY_SETS:
            reports = {dtype: evaluate(directory, HERE / "eval" / name) for dtype, directory in dirs.items()}
            entry = results["sets"][name] = {}
            for run in reports["float32"]["runs"]:
                figures = {dtype: {m: reports[dtype]["runs"][run]["metrics"][m] for m in METRICS} for dtype in dirs}
                gap = max(abs(figures["float16"][m] - figures["float32"][m]) for m in METRICS)
                entry[run] = {**figures, "largest_difference": round(gap, 4)}
                print(f"{name} {run}: float32 {figures['float32']}  float16 {figures['float16']}  largest diff {gap:.4f}")
                targets.append(target(f"{name} ({run}): every metric within {TOLERANCE} of float32", gap,
                                      TOLERANCE, ""))
    report("vector_dtype_eval", results, targets, args.out)
    return results


if __name__ == "__main__":
    main()
