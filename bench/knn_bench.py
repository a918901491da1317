"""kNN benchmark (issue "Performance", item 3): pynndescent graph vs exact numpy vs hnswlib.

Run:  .venv/bin/python bench/knn_bench.py --model-dir /path/to/model_dir
      (sizes: --sizes 50000 200000 by default; --model-dir adds the model's real sentence vectors;
      --vector-dtype float16 builds and walks the graph on float16 rows; --vector-dtype int8 builds it
      on float16 rows and walks their int8 codes, re-scoring from the float16 rows in a file, as graph
      model dirs serve them)

For each data set it builds, in the same process: knn.index.GraphIndex (pynndescent, exactly as the
product builds and queries it), knn.index.ExactIndex (one matrix product) and hnswlib (M=16,
ef_construction=200, inner product), then answers held-out queries one at a time (single-query
latency, p50/p99 in ms, 1 thread for the search) and scores recall@10 against exact ground truth. The
query-time knob of each is swept (GraphIndex epsilon; hnswlib ef) into recall/latency curves; for each
method the fastest setting reaching recall@10 >= 0.99 is reported, with the ratios the issue asks for
(graph / hnswlib latency at matched recall, exact / graph latency). Build time, size on disk (as
saved: GraphIndex.save's files, hnswlib's save_index) and in memory are recorded.

Data:
- synthetic-N: `clustered_unit_vectors` below, 384-d float32 unit vectors, a mixture of 2,400 Gaussian
  sub-topics (300 topics x 8, Dirichlet(0.5) topic weights) around a shared mean direction, every
  component drawn with a power-law spectrum (std ~ rank^-0.4) in a random rotation. Calibrated on the
  real toys-10k MiniLM sentence vectors (27,196 of them) at the same size: mean cosine 0.122 (real
  0.124), nearest-neighbour cosine 0.68 (0.71), 10th 0.60 (0.58), 100th 0.45 (0.46), norm of the mean
  vector 0.35 (0.35), PCA variance in the top 10/50/100/200 components 0.29/0.58/0.74/0.88
  (0.25/0.56/0.74/0.91). Queries are the next 1000 rows of the same stream (same distribution, not
  in the index).
- toys-10k (with --model-dir): the model's vectors.npy, 1000 random rows held out as queries.

Prints one recall/latency table per data set and the target lines ("target: ... measured: ...
PASS / FALLS SHORT", via bench/common.py); writes --out (default bench/results/knn.json).
"""
from __future__ import annotations

import argparse
import os
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

DIMENSIONS = 384
TARGET_RECALL = 0.99
GRAPH_EPSILONS = (0.0, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8)
HNSW_EFS = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256)
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 200


from common import report, target  # noqa: E402  (bench/common.py)


# --- helpers (also used by scale_bench.py) ---------------------------------------------------------
def percentiles(milliseconds: np.ndarray) -> dict:
    values = np.asarray(milliseconds, dtype=np.float64)
    return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
            "p99": float(np.percentile(values, 99)), "mean": float(values.mean()), "max": float(values.max())}


_CHUNK = 10_000


def _world(d: int, structure_seed: int, n_topics: int, subtopics: int):
    rng = np.random.default_rng(structure_seed)
    spectrum = (np.arange(1, d + 1) ** -0.4).astype(np.float32)
    spectrum /= np.sqrt((spectrum ** 2).sum())
    rotation = np.linalg.qr(rng.normal(size=(d, d)))[0].astype(np.float32)
    mean = rng.normal(size=d).astype(np.float32)
    mean /= np.linalg.norm(mean)

    def draw(generator, m):
        return (generator.normal(size=(m, d)).astype(np.float32) * spectrum) @ rotation

    topics = draw(rng, n_topics) * 0.75
    weights = rng.dirichlet(np.full(n_topics, 0.5))
    centres = np.repeat(topics, subtopics, 0) + draw(rng, n_topics * subtopics) * 0.55
    return mean * 0.45, centres, np.repeat(weights / subtopics, subtopics), draw


def clustered_unit_vectors(n: int, seed: int = 0, skip: int = 0, d: int = DIMENSIONS, structure_seed: int = 0,
                           n_topics: int = 300, subtopics: int = 8, noise: float = 0.85,
                           progress: bool = False) -> np.ndarray:
    """Rows [skip, skip + n) of a reproducible stream of clustered unit vectors (float32, (n, d)).

    The clusters (the "world") depend on `structure_seed` only; `seed` picks the stream of points drawn
    from it, in chunks of 10,000 that do not depend on n, so rows past a corpus are held-out queries from
    the same distribution. See the module docstring for the calibration against MiniLM vectors."""
    mean, centres, p, draw = _world(d, structure_seed, n_topics, subtopics)
    out = np.empty((n, d), np.float32)
    first, last = skip // _CHUNK, (skip + n + _CHUNK - 1) // _CHUNK
    chunks = range(first, last)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="vectors", unit="chunk", mininterval=2)
    for chunk in chunks:
        rng = np.random.default_rng([seed, chunk])
        x = mean + centres[rng.choice(len(centres), _CHUNK, p=p)] + draw(rng, _CHUNK) * noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        lo, hi = max(skip, chunk * _CHUNK), min(skip + n, (chunk + 1) * _CHUNK)
        out[lo - skip:hi - skip] = x[lo - chunk * _CHUNK:hi - chunk * _CHUNK]
    return out


# --- measuring ---------------------------------------------------------------------------------------
def recall_at(ids: np.ndarray, truth: np.ndarray, vectors: np.ndarray | None = None, queries: np.ndarray | None = None,
              tolerance: float = 1e-5) -> float:
    """Recall@k. With `vectors` and `queries`: a returned id counts when its similarity reaches the k-th
    true one (less `tolerance`), so that duplicate vectors (the real sentences repeat: "Love it" x103)
    tied with the k-th neighbour are not counted as misses because of float rounding in the tie-break
    (ANN-benchmarks counts recall by distance the same way). Without them: id-set overlap."""
    k = truth.shape[1]
    if vectors is None or queries is None:
        return float(np.mean([len(set(a[:k].tolist()) & set(b.tolist())) / k for a, b in zip(ids, truth)]))
    kth = np.einsum("qd,qd->q", queries, vectors[truth[:, -1]])
    found = np.einsum("qd,qkd->qk", queries, vectors[np.maximum(ids[:, :k], 0)])
    hits = (found >= kth[:, None] - tolerance) & (ids[:, :k] >= 0)
    return float(np.mean(np.minimum(hits.sum(axis=1), k) / k))


def time_single(query_one, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Answer each query alone; return (ids (n, k), per-query milliseconds)."""
    ids = np.full((len(queries), k), -1, np.int64)
    times = np.empty(len(queries))
    for i in range(len(queries)):
        q = queries[i:i + 1]
        start = time.perf_counter()
        found = query_one(q)
        times[i] = time.perf_counter() - start
        ids[i, :len(found)] = found[:k]
    return ids, times * 1e3


def _dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def bench_dataset(name: str, vectors: np.ndarray, queries: np.ndarray, k: int = 10, epsilons=GRAPH_EPSILONS,
                  efs=HNSW_EFS, hnsw: bool = True, warmup: int = 20, vector_dtype: str = "float32") -> dict:
    """`vector_dtype`: the rows the graph is built on and walks (float16; int8: built on float16 rows,
    walking their int8 codes and re-scoring from the float16 rows read from a file, as graph model dirs
    serve them); exact search, the ground truth and hnswlib stay float32."""
    from tqdm import tqdm

    from knn.index import ExactIndex, GraphIndex, compact_vectors

    vectors = np.ascontiguousarray(vectors, np.float32)
    queries = np.ascontiguousarray(queries, np.float32)
    n = len(vectors)
    result: dict = {"dataset": name, "n": n, "dimensions": int(vectors.shape[1]), "queries": len(queries), "k": k,
                    "graph_vector_dtype": vector_dtype, "methods": {}}
    exact = ExactIndex(vectors)
    truth = exact.query(queries, k)[0]
    steps = tqdm(total=1 + len(epsilons) + (len(efs) if hnsw else 0) + 2, desc=name, unit="run")

    # exact
    for q in queries[:warmup]:
        exact.query(q, k)
    ids, ms = time_single(lambda q: exact.query(q, k)[0][0], queries, k)
    result["methods"]["exact"] = {"build_s": 0.0, "disk_bytes": 0, "memory_bytes": int(vectors.nbytes),
                                  "curve": [{"setting": None, "recall": recall_at(ids, truth, vectors, queries), **percentiles(ms)}]}
    steps.update()

    # pynndescent graph, as the product builds and queries it
    served = compact_vectors(vectors, "float16" if vector_dtype == "int8" else vector_dtype)
    start = time.perf_counter()
    graph = GraphIndex.build(served)
    build_s = time.perf_counter() - start
    rows_dir = tempfile.TemporaryDirectory()  # int8: the float16 rows' file, read while queries run
    with tempfile.TemporaryDirectory() as tmp:
        graph.save(Path(tmp))
        disk = _dir_bytes(Path(tmp))
        if vector_dtype == "int8":
            served = _int8_codes(served, Path(rows_dir.name))
        reloaded = GraphIndex.load(Path(tmp), served)
    nnd = reloaded._nnd
    graph_memory = int(nnd._search_graph.indices.nbytes + nnd._search_graph.indptr.nbytes
                       + sum(np.asarray(a).nbytes for tree in nnd._search_forest for a in tree[:4]))
    copies_vectors = not np.shares_memory(nnd._raw_data, getattr(served, "codes", served))  # int8: walks the codes
    default_epsilon = reloaded.epsilon
    curve = []
    for epsilon in sorted(set(epsilons) | {default_epsilon}):
        reloaded.epsilon = epsilon
        for q in queries[:warmup]:
            reloaded.query(q, k)
        ids, ms = time_single(lambda q: reloaded.query(q, k)[0][0], queries, k)
        curve.append({"setting": epsilon, "recall": recall_at(ids, truth, vectors, queries), **percentiles(ms)})
        steps.update()
    reloaded.epsilon = default_epsilon
    # the product asks for CANDIDATES_PER_SENTENCE (64) neighbours per query sentence
    ids64, ms64 = time_single(lambda q: reloaded.query(q, 64)[0][0], queries, 64)
    raw_ids, raw_ms = time_single(lambda q: nnd.query(q, k=k, epsilon=default_epsilon, return_distances=False)[0],
                                  queries, k)
    steps.update()
    rows_dir.cleanup()
    result["methods"]["graph"] = {
        "build_s": build_s, "disk_bytes": disk,
        "memory_bytes": graph_memory + int(nnd._raw_data.nbytes if copies_vectors else 0),
        "copies_vectors": bool(copies_vectors), "default_epsilon": default_epsilon,
        "search_graph_edges": int(nnd._search_graph.nnz), "curve": curve,
        "default_k64_ms": percentiles(ms64),
        "default_k64_top10_recall": recall_at(ids64[:, :k], truth, vectors, queries),  # what serving keeps
        "pynndescent_query_direct_ms": {"recall": recall_at(raw_ids, truth, vectors, queries), **percentiles(raw_ms)}}

    if hnsw:
        import hnswlib

        index = hnswlib.Index(space="ip", dim=vectors.shape[1])
        start = time.perf_counter()
        index.init_index(max_elements=n, M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, random_seed=42)
        index.set_num_threads(os.cpu_count() or 1)
        index.add_items(vectors, np.arange(n))
        build_s = time.perf_counter() - start
        index.set_num_threads(1)
        with tempfile.TemporaryDirectory() as tmp:
            index.save_index(str(Path(tmp) / "hnsw.bin"))
            disk = (Path(tmp) / "hnsw.bin").stat().st_size
        curve = []
        for ef in efs:
            index.set_ef(max(ef, k))
            for q in queries[:warmup]:
                index.knn_query(q[None], k)
            ids, ms = time_single(lambda q: index.knn_query(q, k)[0][0], queries, k)
            curve.append({"setting": max(ef, k), "recall": recall_at(ids, truth, vectors, queries), **percentiles(ms)})
            steps.update()
        result["methods"]["hnswlib"] = {"build_s": build_s, "disk_bytes": disk, "memory_bytes": disk,
                                        "M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "curve": curve}
    steps.update()
    steps.close()
    summarise(result)
    return result


def _int8_codes(rows: np.ndarray, directory: Path):
    """float16 rows as a graph model dir serves them: int8 codes in memory, the rows in a file."""
    from knn.quantized_vectors import FileRows, QuantizedVectors, quantize

    np.save(directory / "vectors.npy", rows, allow_pickle=False)
    codes, scales = quantize(rows)
    return QuantizedVectors(codes, scales, FileRows(directory / "vectors.npy"))


def summarise(result: dict) -> None:
    """Fastest setting (by p50) reaching the target recall per method, and the issue's ratios."""
    best = {}
    for method, data in result["methods"].items():
        reaching = [point for point in data["curve"] if point["recall"] >= TARGET_RECALL]
        data["fastest_at_target"] = min(reaching, key=lambda point: point["p50"]) if reaching else None
        data["best_recall"] = max(point["recall"] for point in data["curve"])
        best[method] = data["fastest_at_target"]
    ratios = {}
    if best.get("graph") and best.get("hnswlib"):
        ratios["graph_over_hnswlib_p50"] = best["graph"]["p50"] / best["hnswlib"]["p50"]
        ratios["graph_over_hnswlib_p99"] = best["graph"]["p99"] / best["hnswlib"]["p99"]
    if best.get("graph"):
        ratios["exact_over_graph_p50"] = best["exact"]["p50"] / best["graph"]["p50"]
        ratios["exact_over_graph_p99"] = best["exact"]["p99"] / best["graph"]["p99"]
    result["ratios_at_target"] = ratios


def _mib(value) -> str:
    return f"{value / 1024 ** 2:.1f} MiB"


def table(result: dict) -> list[str]:
    lines = [f"== {result['dataset']}: {result['n']:,} vectors x {result['dimensions']}, {result['queries']} held-out "
             f"queries, recall@{result['k']}, single-query latency (ms)",
             f"{'method':<9}{'setting':>9}{'recall':>8}{'p50':>8}{'p99':>8}{'mean':>8}"]
    for method, data in result["methods"].items():
        for point in data["curve"]:
            mark = " <- fastest >= 0.99" if point is data.get("fastest_at_target") else ""
            setting = "-" if point["setting"] is None else f"{point['setting']:g}"
            lines.append(f"{method:<9}{setting:>9}{point['recall']:>8.4f}{point['p50']:>8.3f}{point['p99']:>8.3f}"
                         f"{point['mean']:>8.3f}{mark}")
    for method, data in result["methods"].items():
        extra = ""
        if method == "graph":
            extra = (f", copies vectors: {data['copies_vectors']}, k=64 at eps {data['default_epsilon']:g}: p50 "
                     f"{data['default_k64_ms']['p50']:.3f} p99 {data['default_k64_ms']['p99']:.3f} ms, recall@10 of "
                     f"its top 10 {data.get('default_k64_top10_recall', float('nan')):.4f}, pynndescent "
                     f"query() direct p50 {data['pynndescent_query_direct_ms']['p50']:.3f} ms")
        lines.append(f"{method}: build {data['build_s']:.1f} s, disk {_mib(data['disk_bytes'])}, memory "
                     f"{_mib(data['memory_bytes'])}{extra}")
    return lines


def targets_of(results: list[dict]) -> list[dict]:
    """The issue's three targets for every data set (common.target records)."""
    out = []
    for result in results:
        name = result["dataset"]
        graph = result["methods"]["graph"]
        best = graph.get("fastest_at_target")
        setting = f"epsilon {best['setting']:g}" if best else "no setting reaches 0.99"
        out.append(target(f"{name}: graph recall@10", best["recall"] if best else graph["best_recall"], TARGET_RECALL, "",
                          higher_is_better=True, note=setting))
        ratios = result["ratios_at_target"]
        if "hnswlib" in result["methods"]:
            hnsw = result["methods"]["hnswlib"].get("fastest_at_target")
            note = (f"p50 at recall >= 0.99: graph {best['p50']:.3f} ms ({setting}), hnswlib {hnsw['p50']:.3f} ms "
                    f"(ef {hnsw['setting']}); p99 ratio {ratios['graph_over_hnswlib_p99']:.2f}"
                    if best and hnsw else "a method does not reach recall 0.99")
            out.append(target(f"{name}: graph / hnswlib latency at matched recall",
                              ratios.get("graph_over_hnswlib_p50"), 1.0, "x", note=note))
        note = (f"p50: exact {result['methods']['exact']['curve'][0]['p50']:.3f} ms, graph {best['p50']:.3f} ms; "
                f"p99 ratio {ratios['exact_over_graph_p99']:.1f}" if best else "graph does not reach recall 0.99")
        out.append(target(f"{name}: exact / graph latency", ratios.get("exact_over_graph_p50"), 20.0, "x",
                          higher_is_better=True, note=note))
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[50_000, 200_000])
    parser.add_argument("--model-dir", type=Path, help="a built model dir: adds its real vectors.npy")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--no-hnswlib", action="store_true")
    parser.add_argument("--epsilons", type=float, nargs="*", default=list(GRAPH_EPSILONS))
    parser.add_argument("--efs", type=int, nargs="*", default=list(HNSW_EFS))
    parser.add_argument("--vector-dtype", default="float32", choices=("float32", "float16", "int8"),
                        help="rows the graph is built on and walks (float16: as model dirs store them; int8: "
                             "the codes of float16 rows, re-scored from the rows, as graph model dirs serve them)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "knn.json")
    args = parser.parse_args(argv)

    from knn.numba_cache import ensure_numba_cache_dir

    ensure_numba_cache_dir()
    results = []
    options = dict(epsilons=args.epsilons, efs=args.efs, hnsw=not args.no_hnswlib, vector_dtype=args.vector_dtype)
    if args.model_dir is not None:
        vectors = np.load(args.model_dir / "vectors.npy", allow_pickle=False).astype(np.float32)
        held = np.random.default_rng(0).permutation(len(vectors))
        n_queries = min(args.queries, len(vectors) // 5)
        results.append(bench_dataset(f"real:{args.model_dir.name}", vectors[np.sort(held[n_queries:])],
                                     vectors[held[:n_queries]], **options))
        print("\n".join(table(results[-1])), flush=True)
    for size in args.sizes:
        data = clustered_unit_vectors(size + args.queries, progress=size >= 100_000)
        results.append(bench_dataset(f"synthetic-{size}", data[:size], data[size:], **options))
        print("\n".join(table(results[-1])), flush=True)
    output = {"target_recall": TARGET_RECALL, "queries_single": True,
              "hnswlib": {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION}, "datasets": results}
    report("knn", output, targets_of(results), args.out)
    return output


if __name__ == "__main__":
    main()
