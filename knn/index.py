"""Nearest-neighbour search over unit vectors: a pynndescent kNN graph, an inverted file, or exact search.

`build_index(vectors, kind)` picks the structure: "graph" (pynndescent, cosine), "ivf" (k-means lists,
knn.ivf_index), "exact" (one matrix product), or "auto" (exact below GRAPH_MIN_VECTORS vectors, where a
graph cannot pay for itself; a graph up to IVF_MIN_VECTORS; an inverted file from there, where a
pynndescent build takes ~11 min and ~7 GB a million vectors on 2 cores and clustering ~15 s).
Both answer `query(queries, k) -> (ids, similarities)`, best first, with k clamped to the corpus and
similarities re-scored exactly (pynndescent caps cosine distances at 1.0, so its distances are never
used as scores).

How far a graph walk looks (pynndescent's epsilon) is calibrated per catalogue when the graph is
built (`GraphIndex.calibrate`, called by `build_index` with held-out queries: a fit uses the headlines
for the sentence graph and the sentences for the headline graph): the least of CALIBRATION_EPSILONS,
from GRAPH_EPSILON up, whose recall@10 against exact search reaches 0.99. It is saved with the graph.

A graph is saved without pickle: pynndescent's own state (its `__getstate__`) is written as plain
arrays (`.npz`, allow_pickle off) plus JSON scalars, and the data rows are not stored twice, on disk or
in memory: pynndescent keeps its own copy of the data, re-ordered by its search tree, so the graph is
renumbered into the vectors' own order (`_in_vector_order`) and searches the model's vectors array
itself (at 1M sentences x 384 dimensions that copy was 1.5 GB of a serving process's memory). Graphs
saved in tree order still load (they are renumbered on load). Loading goes through pynndescent's
`__setstate__`, which installs its disk-cached search function; the numba cache directory is set up
by `knn.numba_cache` so that JIT work survives processes.

Vectors may be float16 (what model dirs store and serve: half the memory; see
`compact_vectors`) or float32 (model dirs written before, served as before). Every similarity is
computed in float32, and no float32 copy of float16 rows is ever made: exact search and the graph's
re-scoring of its candidates go through one cached numba kernel (`similarities`) that widens each
component as it reads it (knn.exact).

pynndescent cannot walk float16 rows (numba has no float16 on the CPU), so over float16 rows the
graph is walked by `knn.float16_graph.Float16Graph`, pynndescent's own search as a cached numba
kernel over the float16 bits (same graph files). A loaded graph model's vectors are
`knn.quantized_vectors.QuantizedVectors`: the same walk reads their int8 codes, and the candidates
are re-scored from the float16 rows read from the file.
Measured by bench/vector_dtype_bench.py (200k synthetic 384-d vectors, one graph, queries one at a
time, 2 busy cores): vectors 307 -> 154 MB; recall@10 against exact float32 search 0.993 either way;
graph latency that of pynndescent over float32 (p50/p99 ms, k=10: 0.345/1.73 vs 0.338/1.86; k=64:
0.647/4.91 vs 0.736/5.81); scores within 6e-5 of float32; exact search over float16 faster than
float32 BLAS (22 vs 53 ms p50, one query: one pass over half the bytes).
"""
from __future__ import annotations

import json
import logging
import threading
import zipfile
from pathlib import Path
from typing import Protocol

import numpy as np

from knn.cached_nn_descent import route_cosine_builds
from knn.errors import IndexFileError
from knn.exact import ExactIndex, check_queries, similarities, top_k
from knn.float16_graph import Float16Graph
from knn.mapped_npz import load_npz, save_npz
from knn.numba_cache import ensure_numba_cache_dir, share_knn_cache
from knn.quantized_vectors import QuantizedVectors

log = logging.getLogger(__name__)

GRAPH_MIN_VECTORS = 5000
GRAPH_NEIGHBORS = 80  # measured: bench/knn_bench.py (recall@10 >= 0.99 at the default epsilon, 200k vectors)
GRAPH_EPSILON = 0.3  # the least a graph searches with: calibration (GraphIndex.calibrate) only raises it
CALIBRATION_EPSILONS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.8)  # tried in order; the first to reach the target stays
CALIBRATION_QUERIES = 200
CALIBRATION_TARGET = 0.99  # recall@10 against exact search over the served rows
INDEX_KINDS = ("auto", "graph", "exact", "ivf")
# A walk over int8 codes ranks by the codes, and their rounding reorders near-ties: asked for fewer, it
# walks for this many and keeps the best k after re-scoring them from the float16 rows. Measured at
# 200k synthetic vectors, epsilon 0.3: recall@10 0.978 asking the walk for 10, 0.997 for 16, 0.999 for
# 24; p50 0.238 / 0.288 / 0.336 ms (walk 0.108 ms, re-scoring 10 rows read from the file 0.106 ms).
RESCORED_FROM_CODES = 16
IVF_MIN_VECTORS = 1_000_000  # "auto" clusters from here on (knn.ivf_index): 15 s to build at 1M, a graph 11 min
_STATE_FILE = "graph_state.json"
_ARRAYS_FILE = "graph_arrays.npz"
_FORMAT = 1
VECTOR_DTYPES = ("float16", "float32")
DEFAULT_VECTOR_DTYPE = "float16"  # what a model dir stores and serves (model dirs written before: float32)
_BLOCK_ROWS = 16_384  # rows converted at a time by compact_vectors (no float32 temporary of the whole array)
_FLOAT16_TINY = np.float32(2.0 ** -14)  # float16's smallest normal


class VectorIndex(Protocol):
    kind: str

    def query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, directory: Path) -> list[Path]: ...


def compact_vectors(vectors: np.ndarray, dtype: str = DEFAULT_VECTOR_DTYPE) -> np.ndarray:
    """`vectors` as the dtype a model stores and serves (C-contiguous; a copy only when it must convert).

    float16 flushes components below float16's smallest normal (2**-14, ~6e-5) to zero: they change a
    dot product of unit vectors by < 1e-4 at most, and the graph walk then never meets a subnormal
    float (which costs x86 a slow path on every multiply)."""
    if dtype not in VECTOR_DTYPES:
        raise ValueError(f"vector dtype must be one of {', '.join(VECTOR_DTYPES)}, got {dtype!r}")
    vectors = np.asarray(vectors)
    if vectors.dtype == np.dtype(dtype) and vectors.flags.c_contiguous:
        return vectors
    if dtype == "float32":
        return np.ascontiguousarray(vectors, dtype=np.float32)
    out = np.empty(vectors.shape, dtype=np.float16)
    for begin in range(0, len(vectors), _BLOCK_ROWS):  # no float32 temporary of the whole array
        block = np.asarray(vectors[begin:begin + _BLOCK_ROWS], dtype=np.float32)
        out[begin:begin + _BLOCK_ROWS] = np.where(np.abs(block) < _FLOAT16_TINY, np.float32(0), block)
    return out


def _servable(vectors: np.ndarray) -> np.ndarray:
    """float16 rows stay float16; anything else becomes float32 (as before); C-contiguous either way.
    QuantizedVectors stay as they are."""
    if isinstance(vectors, QuantizedVectors):
        return vectors
    vectors = np.asarray(vectors)
    dtype = np.float16 if vectors.dtype == np.float16 else np.float32
    return np.ascontiguousarray(vectors, dtype=dtype)


class GraphIndex:
    """A pynndescent kNN graph; candidates are re-scored with an exact dot product."""

    kind = "graph"

    def __init__(self, vectors: np.ndarray, nnd, epsilon: float = GRAPH_EPSILON):
        self.vectors = vectors
        self._nnd = nnd
        # One walk at a time: the walk's scratch (pynndescent's visited table, the float16 walk's visited
        # table and heap of seeds) is one per graph, and threads that search one model at once (an
        # endpoint worker serving several requests, the walker thread beside a request's own) would
        # overwrite each other's (measured: 125 of 300 answers differed under 4 threads).
        self._walk_lock = threading.Lock()
        self.epsilon = epsilon
        self.calibration: dict | None = None  # what `calibrate` tried, when it ran

    @classmethod
    def build(cls, vectors: np.ndarray, n_neighbors: int = GRAPH_NEIGHBORS, random_state: int = 42,
              n_jobs: int | None = None, verbose: bool = False) -> "GraphIndex":
        ensure_numba_cache_dir()
        from pynndescent import NNDescent

        route_cosine_builds()  # pynndescent's build compiled once per machine, not once per process
        served = _servable(vectors)
        data = np.ascontiguousarray(served, dtype=np.float32)  # float16 rows: a float32 copy for the build only
        nnd = NNDescent(
            data, metric="cosine", n_neighbors=min(n_neighbors, len(data) - 1),
            random_state=random_state, n_jobs=n_jobs, compressed=True, verbose=verbose,
        )
        nnd.prepare()
        state = nnd.__getstate__()
        del nnd, data
        # Search the caller's vectors rather than pynndescent's re-ordered copy (which is then freed).
        return cls(served, _searcher(_in_vector_order(state), served))

    def _walk(self, queries: np.ndarray, k: int, unit: bool) -> np.ndarray:
        """The graph's k ids per query (-1 or repeated where it found fewer), one walk at a time."""
        with self._walk_lock:
            return self._nnd.query(queries, k=k, epsilon=self.epsilon, return_distances=False, pre_normalized=unit)

    def query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = check_queries(queries, self.vectors.shape[1])
        k = min(k, len(self.vectors))
        if k == 0:
            return top_k(np.zeros((len(queries), 0), np.float32), 0)
        if k * 4 >= len(self.vectors):
            # Asking for a large part of the corpus: a graph walk cannot beat one matrix product,
            # and pynndescent pads what it cannot reach with duplicate ids.
            return ExactIndex(self.vectors).query(queries, k)
        walked = max(k, RESCORED_FROM_CODES) if isinstance(self.vectors, QuantizedVectors) else k
        walked = min(walked, len(self.vectors))
        # Unit queries (what the encoder gives) skip pynndescent's normalising copy; others are
        # normalised by pynndescent as before.
        if len(queries) == 1:  # the serving path (one call per query sentence): fewest numpy calls
            query = queries[0]
            unit = abs(float(query @ query) - 1.0) < 1e-4
            row = self._walk(queries, walked, unit)[0]
            if row.min() < 0 or len(set(row.tolist())) < walked:  # padded: answer exactly
                return ExactIndex(self.vectors).query(queries, k)
            row = row.astype(np.int64)
            if self.vectors.dtype == np.float16:
                sims = similarities(queries, self.vectors, row)[0]
            else:
                sims = self.vectors[row] @ query
            order = np.lexsort((row, -sims))[:k]
            return row[order][None, :], sims[order][None, :]
        unit = bool(np.all(np.abs(np.einsum("qd,qd->q", queries, queries) - 1.0) < 1e-4))
        ids = self._walk(queries, walked, unit).astype(np.int64)
        ordered = np.sort(ids, axis=1)
        for row in np.flatnonzero((ordered[:, 0] < 0) | (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)):
            ids[row] = ExactIndex(self.vectors).query(queries[row], walked)[0][0]  # padded: answer this row exactly
        if self.vectors.dtype == np.float16:
            sims = np.vstack([similarities(queries[i], self.vectors, ids[i]) for i in range(len(queries))])
        else:
            sims = np.einsum("qd,qkd->qk", queries, self.vectors[ids])
        order = np.lexsort((ids, -sims), axis=1)[:, :k]
        return np.take_along_axis(ids, order, axis=1), np.take_along_axis(sims, order, axis=1)

    def calibrate(self, queries: np.ndarray, k: int = 10, target: float = CALIBRATION_TARGET,
                  epsilons: tuple[float, ...] = CALIBRATION_EPSILONS) -> dict:
        """Set the search's epsilon to the first of `epsilons` whose recall@10 reaches `target` on up to
        CALIBRATION_QUERIES of `queries` (unit rows that are not in the index, e.g. the headlines for the
        sentence graph), each asked for its top `k` as serving asks (the top 10 of them count), against
        exact search over the same rows. An id counts when it is as similar as the 10th true neighbour
        (ties with repeated sentences are not misses). Keeps the last epsilon tried when none reaches it.

        Why: how far the walk must look depends on the catalogue. On 1M synthetic clustered vectors,
        epsilon 0.3 found the top 10 of k=64 for 0.985 of the neighbours and 0.4 for 0.995 (bench/README);
        at 100k, 0.3 already gave 0.9995. Returns what was tried, for the fit's log and figures."""
        queries = np.asarray(queries, dtype=np.float32)
        if len(queries) == 0 or len(self.vectors) <= 10 or k * 4 >= len(self.vectors):
            self.calibration = {"epsilon": self.epsilon, "queries": 0, "tried": {}}
            return self.calibration
        if len(queries) > CALIBRATION_QUERIES:
            rows = np.random.default_rng(0).choice(len(queries), CALIBRATION_QUERIES, replace=False)
            queries = queries[np.sort(rows)]
        exact = ExactIndex(self.vectors)  # 16 queries at a time: (16, n) similarities, not (200, n)
        tenth = np.concatenate([exact.query(queries[i:i + 16], 10)[1][:, -1] for i in range(0, len(queries), 16)])
        tried: dict[str, float] = {}
        for epsilon in epsilons:
            self.epsilon = epsilon
            found = 0
            for query, bound in zip(queries, tenth):
                sims = self.query(query[None], k)[1][0, :10]
                found += int(np.count_nonzero(sims >= bound - 1e-5))
            recall = found / (10 * len(queries))
            tried[f"{epsilon:g}"] = round(recall, 4)
            if recall >= target:
                break
        log.info("graph search epsilon %g: recall@10 %.4f (top 10 of k=%d, %d held-out queries; tried %s)",
                 self.epsilon, recall, k, len(queries), tried)
        self.calibration = {"epsilon": self.epsilon, "recall_at_10": round(recall, 4), "k": k,
                            "queries": len(queries), "tried": tried}
        return self.calibration

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        state = self._nnd.__getstate__()
        scalars: dict = {}
        arrays: dict[str, np.ndarray] = {}
        for key, value in state.items():
            if key in ("_raw_data", "_neighbor_graph", "_rp_forest"):
                continue  # rebuilt from the model's vectors, or not needed to query
            if callable(value) and not isinstance(value, type):
                continue  # numba functions: rebuilt by __setstate__
            if key == "_input_dtype":
                scalars[key] = {"dtype": np.dtype(value).name}
            elif key == "_search_graph":
                arrays["search_graph.indptr"] = value.indptr
                arrays["search_graph.indices"] = value.indices
                scalars[key] = {"csr_shape": list(value.shape)}
            elif key == "_search_forest":
                for number, tree in enumerate(value):
                    hyperplanes, offsets, children, indices, leaf_size = tree
                    for name, array in (("hyperplanes", hyperplanes), ("offsets", offsets),
                                        ("children", children), ("indices", indices)):
                        arrays[f"forest.{number}.{name}"] = np.asarray(array)
                    scalars.setdefault("_search_forest", {"leaf_sizes": []})["leaf_sizes"].append(int(leaf_size))
            elif isinstance(value, np.ndarray):
                arrays[f"attr.{key}"] = value
            elif isinstance(value, np.generic):
                scalars[key] = {"numpy_scalar": value.item(), "dtype": value.dtype.name}
            elif isinstance(value, tuple):
                scalars[key] = {"tuple": list(value)}
            elif value is None or isinstance(value, (bool, int, float, str, dict)):
                scalars[key] = {"value": value}
            else:
                raise TypeError(f"cannot save pynndescent attribute {key} of type {type(value).__name__}")
        import pynndescent

        meta = {"format": _FORMAT, "pynndescent": pynndescent.__version__, "epsilon": self.epsilon,
                "attributes": scalars}
        state_path, arrays_path = directory / _STATE_FILE, directory / _ARRAYS_FILE
        state_path.write_text(json.dumps(meta, indent=1, sort_keys=True))
        save_npz(arrays_path, arrays)  # arrays 64-byte aligned: load maps them (knn.mapped_npz)
        return [state_path, arrays_path]

    @classmethod
    def load(cls, directory: Path, vectors: np.ndarray) -> "GraphIndex":
        ensure_numba_cache_dir()
        from importlib.metadata import version

        installed = version("pynndescent")  # not imported: serving float16 rows never needs it
        # Walked by Float16Graph (float16 rows or int8 codes): the arrays are mapped read-only, one copy
        # for all the workers of a machine (knn.mapped_npz); pynndescent (float32 rows) gets them read.
        mapped = vectors.dtype == np.float16
        try:
            meta = json.loads((directory / _STATE_FILE).read_text())
            arrays = load_npz(directory / _ARRAYS_FILE, mapped=mapped)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise IndexFileError(f"cannot read the graph index in {directory}: {exc}; rebuild the model") from None
        if meta.get("format") != _FORMAT or meta.get("pynndescent") != installed:
            raise IndexFileError(
                f"the graph index in {directory} was saved by pynndescent {meta.get('pynndescent')} "
                f"(format {meta.get('format')}); this is pynndescent {installed}: rebuild the model"
            )
        from scipy.sparse import csr_array

        state: dict = {}
        for key, spec in meta["attributes"].items():
            if key == "_input_dtype":
                state[key] = np.dtype(spec["dtype"]).type
            elif key == "_search_graph":
                indices = arrays["search_graph.indices"]
                graph = csr_array(
                    (np.ones(len(indices), dtype=np.uint8), indices, arrays["search_graph.indptr"]),
                    shape=tuple(spec["csr_shape"]),
                )
                graph.has_sorted_indices = True
                state[key] = graph
            elif key == "_search_forest":
                state[key] = tuple(
                    tuple(arrays[f"forest.{n}.{name}"] for name in ("hyperplanes", "offsets", "children", "indices"))
                    + (leaf_size,)
                    for n, leaf_size in enumerate(spec["leaf_sizes"])
                )
            elif "numpy_scalar" in spec:
                state[key] = np.dtype(spec["dtype"]).type(spec["numpy_scalar"])
            elif "tuple" in spec:
                state[key] = tuple(spec["tuple"])
            else:
                state[key] = spec["value"]
        for name, array in arrays.items():
            if name.startswith("attr."):
                state[name[5:]] = array
        order = state.get("_vertex_order")
        if order is None or len(order) != len(vectors):
            raise IndexFileError(f"the graph index in {directory} does not match the model's vectors; rebuild the model")
        vectors = _servable(vectors)
        return cls(vectors, _searcher(_in_vector_order(state), vectors), epsilon=float(meta.get("epsilon", GRAPH_EPSILON)))


def _searcher(state: dict, vectors: np.ndarray):
    """What walks the graph over `vectors` (in vector order): pynndescent itself over float32 rows,
    `Float16Graph` over float16 rows. Both answer `query(queries, k=, epsilon=, return_distances=False,
    pre_normalized=)` with ids and give `__getstate__()` for `GraphIndex.save`."""
    if vectors.dtype == np.float16:
        return Float16Graph(state, vectors)
    state["_raw_data"] = vectors
    return _restore(state)


def _restore(state: dict):
    """An NNDescent from its `__getstate__` dict (as unpickling does: installs the cached search function).

    The search function holds its own int32 graph and a stacked copy of the search tree; the state's
    graph is made int32 first (then shared, not copied) and the tree arrays are swapped for views of
    the stacked copy, so neither is held twice (at 1M vectors: 0.1 GB of graph, 0.15 GB of tree
    hyperplanes)."""
    from pynndescent import NNDescent
    from scipy.sparse import csr_array

    graph = state["_search_graph"]
    if graph.nnz < 2 ** 31 and (graph.indices.dtype != np.int32 or graph.indptr.dtype != np.int32):
        compact = csr_array((graph.data, graph.indices.astype(np.int32), graph.indptr.astype(np.int32)),
                            shape=graph.shape)
        if compact.indices.dtype == np.int32:  # scipy keeps int32 when it fits
            compact.has_sorted_indices = True
            state["_search_graph"] = compact
    nnd = NNDescent.__new__(NNDescent)
    nnd.__setstate__(state)
    _share_search_tree(nnd)
    return nnd


def _share_search_tree(nnd) -> None:
    """Point the NNDescent's search tree at the search function's stacked copy of it (one tree only)."""
    import functools

    search = getattr(nnd, "_search_function", None)
    index = search.args[0] if isinstance(search, functools.partial) and search.args else None
    if index is None or len(nnd._search_forest) != 1 or type(index).__name__ != "SearchIndex":
        return  # not pynndescent's cached search function: leave its state as it is
    try:
        hyperplanes, offsets, children, indices = _search_tree_arrays()(index)
    except Exception as exc:  # a pynndescent whose SearchIndex differs: keep the copy, lose nothing else
        log.debug("cannot share the search tree with the search function: %s", exc)
        return
    tree = nnd._search_forest[0]
    if hyperplanes.shape[1:] != tree.hyperplanes.shape or indices.shape[1:] != tree.indices.shape:
        return
    nnd._search_forest = (type(tree)(hyperplanes[0], offsets[0], children[0], indices[0], tree.leaf_size),)


_TREE_GETTER = None


def _search_tree_arrays():
    """A numba function returning a pynndescent SearchIndex's tree arrays (views, no copies)."""
    global _TREE_GETTER
    if _TREE_GETTER is None:
        share_knn_cache()
        import numba

        @numba.njit(cache=True)
        def tree_arrays(index):
            return index.tree_hyperplanes, index.tree_offsets, index.tree_children, index.tree_indices

        _TREE_GETTER = tree_arrays
    return _TREE_GETTER


def _in_vector_order(state: dict) -> dict:
    """Renumber a pynndescent state from its search-tree vertex order to the rows of the model's
    vectors, whose array it then searches directly (`_searcher`).

    pynndescent re-orders its data copy by the first search tree's leaves for memory locality; here
    the search graph's rows and columns and the search trees' point indices are mapped back through
    `_vertex_order` (vertex v is row order[v]) and the order becomes the identity. It is the same
    graph, but each neighbour list is now sorted by row, so the walk meets neighbours in another order:
    a few approximate answers differ, recall does not (toys-10k, k=64: 0.9969 either way)."""
    from scipy.sparse import csr_array

    order = np.asarray(state["_vertex_order"])
    n = len(order)
    if not np.array_equal(order, np.arange(n)):
        graph = state["_search_graph"]
        indptr, indices = np.asarray(graph.indptr), np.asarray(graph.indices)
        rows = np.repeat(order.astype(np.int64), np.diff(indptr))  # each edge's source, as a vectors row
        columns = order[indices].astype(np.int64)
        edges = np.argsort(rows * n + columns)
        new_indptr = np.zeros(n + 1, dtype=indptr.dtype)
        np.cumsum(np.bincount(rows, minlength=n), out=new_indptr[1:])
        remapped = csr_array((np.ones(len(edges), dtype=np.uint8), columns[edges].astype(indices.dtype), new_indptr),
                             shape=graph.shape)
        remapped.has_sorted_indices = True
        state["_search_graph"] = remapped
        state["_search_forest"] = tuple(
            (*tree[:3], order[np.asarray(tree[3])].astype(np.asarray(tree[3]).dtype), *tree[4:])
            for tree in state["_search_forest"]
        )
        state["_vertex_order"] = np.arange(n, dtype=order.dtype)
    return state


def choose_kind(kind: str, n_vectors: int) -> str:
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {', '.join(INDEX_KINDS)}, got {kind!r}")
    if kind == "auto":
        return "ivf" if n_vectors >= IVF_MIN_VECTORS else "graph" if n_vectors >= GRAPH_MIN_VECTORS else "exact"
    if kind == "graph" and n_vectors < 3:
        return "exact"  # pynndescent needs a few points to build a graph at all
    return kind


def build_index(vectors: np.ndarray, kind: str = "auto", calibration_queries: np.ndarray | None = None,
                calibration_k: int = 10, **graph_options) -> VectorIndex:
    """Build the index for unit `vectors` (one row per sentence; float16 is searched as float16, any
    other dtype as float32). A graph's search epsilon is calibrated on `calibration_queries` when given
    (`GraphIndex.calibrate`, for queries asking `calibration_k`)."""
    vectors = _servable(vectors)
    chosen = choose_kind(kind, len(vectors))
    if chosen == "exact":
        return ExactIndex(vectors)
    if chosen == "ivf":
        from knn.ivf_index import IvfIndex

        ivf = IvfIndex.build(vectors)
        if calibration_queries is not None:
            ivf.calibrate(calibration_queries, calibration_k)
        return ivf
    log.info("building a pynndescent graph over %d vectors (measured on 2 cores: ~13 s at 27k vectors, ~11 min "
             "at 1M; a machine's first build also compiles numba code once, ~50 s)", len(vectors))
    graph = GraphIndex.build(vectors, **graph_options)
    if calibration_queries is not None:
        graph.calibrate(calibration_queries, calibration_k)
    return graph


def load_index(kind: str, directory: Path, vectors: np.ndarray) -> VectorIndex:
    if kind == "exact":
        return ExactIndex(vectors)
    if kind == "graph":
        return GraphIndex.load(directory, vectors)
    if kind == "ivf":
        from knn.ivf_index import IvfIndex

        return IvfIndex.load(directory, vectors)
    raise IndexFileError(f"unknown index kind {kind!r} in the model dir; rebuild the model")
