"""Vector dtype benchmark (issue 14): float32 vs float16 vectors, same graph, side by side in one run.

Run:  OMP_NUM_THREADS=1 .venv/bin/python bench/vector_dtype_bench.py            (200k vectors; --n N)

Builds one knn.index.GraphIndex over N synthetic 384-d unit vectors (bench/knn_bench.py
`clustered_unit_vectors`, calibrated on real MiniLM vectors), saves it, and loads it twice, as a model
dir would: over the float32 vectors (pynndescent's own search) and over knn.index.compact_vectors'
float16 copy (knn.float16_graph.Float16Graph). Then 1000 held-out queries, one at a time, k=10 and k=64 (two
rounds, float32 and float16 in turn, the second kept):
p50/p99 latency, recall@10 against exact float32 search (ids; and by similarity as knn_bench counts
it), the largest |score - float32 dot product| of what each returned, and the bytes of vectors held.
Exact search (knn.index.ExactIndex) is timed too: float32 one product, float16 in blocks.
Writes --out (default bench/results/vector_dtype.json).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (ROOT, HERE):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from knn_bench import clustered_unit_vectors, percentiles, recall_at, time_single  # noqa: E402


def main(argv=None) -> dict:
    from knn.index import ExactIndex, GraphIndex, compact_vectors

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "vector_dtype.json")
    args = parser.parse_args(argv)

    vectors = clustered_unit_vectors(args.n)
    queries = clustered_unit_vectors(args.queries, skip=args.n)
    truth = np.vstack([ExactIndex(vectors).query(queries[i:i + 100], 10)[0] for i in range(0, len(queries), 100)])
    start = time.perf_counter()
    graph = GraphIndex.build(vectors)
    build_s = time.perf_counter() - start
    result = {"n": args.n, "dimensions": int(vectors.shape[1]), "queries": args.queries, "build_s": build_s,
              "dtypes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        graph.save(Path(tmp))
        del graph
        loaded = {"float32": GraphIndex.load(Path(tmp), vectors),
                  "float16": GraphIndex.load(Path(tmp), compact_vectors(vectors))}
    timings = {}
    for _ in range(2):  # two rounds, float32 and float16 in turn; the second is kept (warm, less drift)
        for name, index in loaded.items():
            for q in queries[:50]:  # warm-up: first numba calls
                index.query(q, 10)
            ids, ms = time_single(lambda q: index.query(q, 10)[0][0], queries, 10)
            _, ms64 = time_single(lambda q: index.query(q, 64)[0][0], queries, 64)
            timings[name] = ids, ms, ms64
    for name, index in loaded.items():
        ids, ms, ms64 = timings[name]
        sims = np.vstack([index.query(q, 10)[1] for q in queries])
        true_sims = np.einsum("qd,qkd->qk", queries, vectors[ids])  # float32 dot products of the same ids
        exact = ExactIndex(index.vectors)
        exact_ids, exact_ms = time_single(lambda q: exact.query(q, 10)[0][0], queries[:100], 10)
        result["dtypes"][name] = {
            "vector_bytes": int(index.vectors.nbytes),
            "graph_k10_ms": percentiles(ms), "graph_k64_ms": percentiles(ms64),
            "recall_at_10_ids": recall_at(ids, truth), "recall_at_10": recall_at(ids, truth, vectors, queries),
            "max_score_error_vs_float32": float(np.abs(sims - true_sims).max()),
            "exact_k10_ms": percentiles(exact_ms), "exact_recall_at_10_ids": recall_at(exact_ids, truth[:100]),
        }
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
