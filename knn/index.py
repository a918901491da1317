"""Nearest-neighbour search over unit vectors: a pynndescent kNN graph, or exact search.

`build_index(vectors, kind)` picks the structure: "graph" (pynndescent, cosine), "exact" (one matrix
product), or "auto" (exact below GRAPH_MIN_VECTORS vectors, where a graph cannot pay for itself).
Both answer `query(queries, k) -> (ids, similarities)`, best first, with k clamped to the corpus and
similarities re-scored exactly (pynndescent caps cosine distances at 1.0, so its distances are never
used as scores).

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
component as it reads it.

pynndescent cannot search float16 rows: numba has no float16 on the CPU (a jitted function reading a
float16 array raises NotImplementedError float16), so pynndescent would need a float32 copy of all the
vectors, the very memory being saved. Over float16 rows the graph is therefore walked by
`_Float16Graph`: pynndescent's own search (the same saved graph and tree, epsilon bound and -log2(dot)
distance, so model dirs and graph files are unchanged) as one cached numba function that reads rows as
int16 bits and widens them to float32 with two integer operations inside the dot product. Weighed and
not chosen: pynndescent's int8 quantization (compiles a search per process, re-ranks on float32 rows,
and int8 codes + float16 rows would hold 1.5x the float16 bytes); hardware float16 conversion through
an LLVM intrinsic (same speed measured, 19 vs 20 ms for 200k rows, but a libcall on CPUs without F16C).
Measured by bench/vector_dtype_bench.py (200k synthetic 384-d vectors, one graph, queries one at a
time, 2 busy cores): vectors 307 -> 154 MB; recall@10 against exact float32 search 0.993 either way;
graph latency that of pynndescent over float32 (p50/p99 ms, k=10: 0.345/1.73 vs 0.338/1.86; k=64:
0.647/4.91 vs 0.736/5.81); scores within 6e-5 of float32; exact search over float16 faster than
float32 BLAS (22 vs 53 ms p50, one query: one pass over half the bytes).
"""
from __future__ import annotations

import heapq
import json
import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from knn.errors import IndexFileError
from knn.numba_cache import ensure_numba_cache_dir

log = logging.getLogger(__name__)

GRAPH_MIN_VECTORS = 5000
GRAPH_NEIGHBORS = 80  # measured: bench/knn_bench.py (recall@10 >= 0.99 at the default epsilon, 200k vectors)
GRAPH_EPSILON = 0.3
INDEX_KINDS = ("auto", "graph", "exact")
_STATE_FILE = "graph_state.json"
_ARRAYS_FILE = "graph_arrays.npz"
_FORMAT = 1
VECTOR_DTYPES = ("float16", "float32")
DEFAULT_VECTOR_DTYPE = "float16"  # what a model dir stores and serves (model dirs written before: float32)
_BLOCK_ROWS = 16_384  # rows converted at a time by compact_vectors (no float32 temporary of the whole array)
_FLOAT16_TINY = np.float32(2.0 ** -14)  # float16's smallest normal
_NUMPY_WIDEN_MAX = 1 << 18  # values (rows x dimensions) that `similarities` widens with numpy, not numba


class VectorIndex(Protocol):
    kind: str

    def query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, directory: Path) -> list[Path]: ...


def _check_queries(queries: np.ndarray, dimensions: int) -> np.ndarray:
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if queries.shape[1] != dimensions:
        raise ValueError(f"query vectors have {queries.shape[1]} dimensions, the index {dimensions}")
    return queries


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
    """float16 rows stay float16; anything else becomes float32 (as before); C-contiguous either way."""
    vectors = np.asarray(vectors)
    dtype = np.float16 if vectors.dtype == np.float16 else np.float32
    return np.ascontiguousarray(vectors, dtype=dtype)


def similarities(queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """queries . vectors[rows].T (all rows when None), (n_queries, n_rows), computed in float32.

    float16 vectors are never upcast as a whole: a cached numba kernel widens each row's float16 bits
    as it reads them (`_Float16Graph`'s trick). Measured at 200k x 384, one query: 20 ms, where numpy's
    float16 -> float32 conversion alone takes ~300 ms (~4 ns a component) and float32 BLAS 50-60 ms."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if vectors.dtype != np.float16:
        return queries @ (vectors if rows is None else vectors[rows]).T
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64).ravel()
    if (len(vectors) if rows is None else len(rows)) * vectors.shape[1] <= _NUMPY_WIDEN_MAX:
        # a few hundred rows (a graph's candidates, a small catalogue): numpy widens them in well under
        # a millisecond, and a process that never needs the kernel never loads numba (~3.7 s)
        return queries @ (vectors if rows is None else vectors[rows]).astype(np.float32).T
    bits = vectors.view(np.int16)
    rows = np.arange(len(vectors), dtype=np.int64) if rows is None else rows
    out = np.empty((len(queries), len(rows)), dtype=np.float32)
    if len(rows) and len(queries):
        _float16_kernels()[1](bits, rows, queries * _WIDEN, out)
    return out


def _top_k(similarities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-first top k per row; ties broken by the lower id (deterministic)."""
    n = similarities.shape[1]
    k = min(k, n)
    if k == 0:
        return np.zeros((similarities.shape[0], 0), np.int64), np.zeros((similarities.shape[0], 0), np.float32)
    if k < n:
        part = np.argpartition(-similarities, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(n), (similarities.shape[0], 1))
    part_sims = np.take_along_axis(similarities, part, axis=1)
    order = np.lexsort((part, -part_sims), axis=1)
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return ids, np.take_along_axis(part_sims, order, axis=1)


class ExactIndex:
    """Brute force: one matrix product against all vectors (float16 rows: `similarities`, in float32)."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors

    def query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = _check_queries(queries, self.vectors.shape[1])
        return _top_k(similarities(queries, self.vectors), k)  # float16: no float32 copy of the rows

    def save(self, directory: Path) -> list[Path]:
        return []


class GraphIndex:
    """A pynndescent kNN graph; candidates are re-scored with an exact dot product."""

    kind = "graph"

    def __init__(self, vectors: np.ndarray, nnd, epsilon: float = GRAPH_EPSILON):
        self.vectors = vectors
        self._nnd = nnd
        self.epsilon = epsilon

    @classmethod
    def build(cls, vectors: np.ndarray, n_neighbors: int = GRAPH_NEIGHBORS, random_state: int = 42,
              n_jobs: int | None = None, verbose: bool = False) -> "GraphIndex":
        ensure_numba_cache_dir()
        from pynndescent import NNDescent

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

    def query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = _check_queries(queries, self.vectors.shape[1])
        k = min(k, len(self.vectors))
        if k == 0:
            return _top_k(np.zeros((len(queries), 0), np.float32), 0)
        if k * 4 >= len(self.vectors):
            # Asking for a large part of the corpus: a graph walk cannot beat one matrix product,
            # and pynndescent pads what it cannot reach with duplicate ids.
            return ExactIndex(self.vectors).query(queries, k)
        # Unit queries (what the encoder gives) skip pynndescent's normalising copy; others are
        # normalised by pynndescent as before.
        if len(queries) == 1:  # the serving path (one call per query sentence): fewest numpy calls
            query = queries[0]
            unit = abs(float(query @ query) - 1.0) < 1e-4
            row = self._nnd.query(queries, k=k, epsilon=self.epsilon, return_distances=False, pre_normalized=unit)[0]
            if row.min() < 0 or len(set(row.tolist())) < k:  # padded: answer exactly
                return ExactIndex(self.vectors).query(queries, k)
            row = row.astype(np.int64)
            if self.vectors.dtype == np.float16:
                sims = similarities(queries, self.vectors, row)[0]
            else:
                sims = self.vectors[row] @ query
            order = np.lexsort((row, -sims))
            return row[order][None, :], sims[order][None, :]
        unit = bool(np.all(np.abs(np.einsum("qd,qd->q", queries, queries) - 1.0) < 1e-4))
        ids = self._nnd.query(queries, k=k, epsilon=self.epsilon, return_distances=False, pre_normalized=unit)
        ids = ids.astype(np.int64)
        ordered = np.sort(ids, axis=1)
        for row in np.flatnonzero((ordered[:, 0] < 0) | (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)):
            ids[row] = ExactIndex(self.vectors).query(queries[row], k)[0][0]  # padded: answer this row exactly
        if self.vectors.dtype == np.float16:
            sims = np.vstack([similarities(queries[i], self.vectors, ids[i]) for i in range(len(queries))])
        else:
            sims = np.einsum("qd,qkd->qk", queries, self.vectors[ids])
        order = np.lexsort((ids, -sims), axis=1)
        return np.take_along_axis(ids, order, axis=1), np.take_along_axis(sims, order, axis=1)

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
        with open(arrays_path, "wb") as handle:
            np.savez(handle, **arrays)
        return [state_path, arrays_path]

    @classmethod
    def load(cls, directory: Path, vectors: np.ndarray) -> "GraphIndex":
        ensure_numba_cache_dir()
        import pynndescent

        try:
            meta = json.loads((directory / _STATE_FILE).read_text())
            with np.load(directory / _ARRAYS_FILE, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, KeyError) as exc:
            raise IndexFileError(f"cannot read the graph index in {directory}: {exc}; rebuild the model") from None
        if meta.get("format") != _FORMAT or meta.get("pynndescent") != pynndescent.__version__:
            raise IndexFileError(
                f"the graph index in {directory} was saved by pynndescent {meta.get('pynndescent')} "
                f"(format {meta.get('format')}); this is pynndescent {pynndescent.__version__}: rebuild the model"
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
    `_Float16Graph` over float16 rows. Both answer `query(queries, k=, epsilon=, return_distances=False,
    pre_normalized=)` with ids and give `__getstate__()` for `GraphIndex.save`."""
    if vectors.dtype == np.float16:
        return _Float16Graph(state, vectors)
    state["_raw_data"] = vectors
    return _restore(state)


class _Float16Graph:
    """pynndescent's search walk (tree leaf seeds, then the bounded best-first graph search, cosine as
    its -log2(dot) distance) over float16 rows, in one cached numba function (`_float16_search`).

    Numba has no float16 on the CPU (any float16 array read or conversion raises NotImplementedError),
    so the rows are read as int16 bits and widened in the distance loop: sign-extended to int32, shifted
    left by 13 and masked with 0x8FFFFFFF (sign, then exponent and mantissa), the bits reinterpreted as
    float32 are the value x 2**-112 for every normal float16 (`compact_vectors` leaves no subnormals),
    so the query is scaled by 2**112 once instead: two integer operations per component.
    Same graph, same tree, same epsilon bound as pynndescent; only the float16 rounding of the rows
    (<= 2**-11 relative) differs, and the candidates are re-scored by GraphIndex anyway."""

    def __init__(self, state: dict, vectors: np.ndarray):
        state.pop("_raw_data", None)
        self._state = state
        self._raw_data = vectors  # the model's float16 array itself (bench/ reads these attributes)
        graph = state["_search_graph"]
        if graph.indices.dtype != np.int32 or graph.indptr.dtype != np.int32:  # one int32 copy, held once
            from scipy.sparse import csr_array

            graph = csr_array((graph.data, graph.indices.astype(np.int32), graph.indptr.astype(np.int32)),
                              shape=graph.shape)
            graph.has_sorted_indices = True
            state["_search_graph"] = graph
        self._search_graph = graph
        self._search_forest = forest = state["_search_forest"]
        self._bits = vectors.view(np.int16)  # sign-extended on loading: (h << 13) & 0x8FFFFFFF
        self._indptr, self._indices = np.asarray(graph.indptr), np.asarray(graph.indices)  # views
        dimensions = vectors.shape[1]
        if not state.get("tree_init", True) or not forest:
            self._tree = (np.zeros((1, 1, dimensions), np.float32), np.zeros((1, 1), np.float32),
                          np.full((1, 1, 2), -1, np.int32), np.zeros((1, 1), np.int32), 0)
        elif len(forest) == 1:  # views, no stacked copy
            tree = forest[0]
            self._tree = tuple(np.asarray(a, dtype=t)[None] for a, t in zip(
                tree[:4], (np.float32, np.float32, np.int32, np.int32))) + (1,)
        else:
            from pynndescent.search import stack_search_forest

            self._tree = (*stack_search_forest(forest, len(vectors)), len(forest))
        self._leaf_budget = int(state.get("search_tree_leaf_budget", 1) or 1)
        self._n_neighbors = int(state["n_neighbors"])
        self._min_distance = np.float32(state["_min_distance"])
        self._rng_state = np.asarray(state["search_rng_state"], dtype=np.int64).copy()
        self._visited = np.zeros(len(vectors) // 8 + 1, dtype=np.uint8)
        self._search = _float16_search()

    def query(self, queries: np.ndarray, k: int = 10, epsilon: float = GRAPH_EPSILON,
              return_distances: bool = False, pre_normalized: bool = False) -> np.ndarray:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if not pre_normalized:
            norms = np.linalg.norm(queries, axis=1, keepdims=True)
            queries = queries / np.where(norms > 0, norms, 1.0).astype(np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int32)
        hyperplanes, offsets, children, tree_indices, n_trees = self._tree
        self._search(self._bits, queries * _WIDEN, queries, np.int64(k), np.float32(epsilon), self._visited,
                     self._rng_state.copy(), self._indptr, self._indices, hyperplanes, offsets, children,
                     tree_indices, np.int64(n_trees), np.int64(self._leaf_budget), np.int64(self._n_neighbors),
                     self._min_distance, ids)
        if return_distances:
            raise ValueError("the float16 graph gives ids only (GraphIndex re-scores them)")
        return ids

    def __getstate__(self) -> dict:
        return dict(self._state)


_WIDEN = np.float32(2.0 ** 112)  # float16 bits << 13 read as float32 are the value x 2**-112
_KEEP = np.int32(-0x70000001)  # 0x8FFFFFFF: the sign bit and the 15 bits of exponent and mantissa
_SHIFT = np.int32(13)
_FAR = np.float32(np.finfo(np.float32).max)
_FLOAT16_KERNELS = None


def _float16_search():
    return _float16_kernels()[0]


def _float16_kernels():
    """The numba graph search and dot products over float16 bits, compiled once per machine, then read
    from numba's cache.

    The functions below are plain module-level Python until this jits them in place (numba must not
    be imported before knn.numba_cache has set its cache directory): as module globals, not closures,
    numba can cache them on disk (a closure recompiled in every process, ~15 s)."""
    global _FLOAT16_KERNELS, _f16_alternative, _f16_distance, _f16_four_distances, _f16_walk, _f16_dots
    global _select_side, _tree_spill_leaves, _check_and_mark_visited, _bits_as_float32, _heap_push, _rand_int
    if _FLOAT16_KERNELS is not None:
        return _FLOAT16_KERNELS
    ensure_numba_cache_dir()
    import numba
    from pynndescent.rp_trees import select_side
    from pynndescent.search import _tree_spill_leaves as spill
    from pynndescent.utils import check_and_mark_visited, int32_bits_as_float32, simple_heap_push, tau_rand_int

    _select_side, _tree_spill_leaves, _check_and_mark_visited = select_side, spill, check_and_mark_visited
    _bits_as_float32, _heap_push, _rand_int = int32_bits_as_float32, simple_heap_push, tau_rand_int
    _f16_alternative = numba.njit(inline="always", fastmath=True)(_f16_alternative)
    _f16_distance = numba.njit(inline="always", fastmath=True, boundscheck=False)(_f16_distance)
    _f16_four_distances = numba.njit(inline="always", fastmath=True, boundscheck=False)(_f16_four_distances)
    _f16_walk = numba.njit(fastmath=True, cache=True, locals={
        "candidate": numba.int32, "vertex": numba.int32, "d": numba.float32, "d_vertex": numba.float32,
        "distance_bound": numba.float32, "node": numba.uint32})(_f16_walk)
    _f16_dots = numba.njit(fastmath=True, cache=True, boundscheck=False)(_f16_dots)
    _FLOAT16_KERNELS = (_f16_walk, _f16_dots)
    return _FLOAT16_KERNELS


def _f16_dots(bits, rows, queries, out):
    """out[q, i] = (2**112-scaled) queries[q] . float16 row rows[i], each row read once for all queries."""
    for i in range(rows.shape[0]):
        row = bits[rows[i]]
        for q in range(queries.shape[0]):
            query = queries[q]
            total = np.float32(0.0)
            for t in range(query.shape[0]):
                total += query[t] * _bits_as_float32((np.int32(row[t]) << _SHIFT) & _KEEP)
            out[q, i] = total


# Bound by _float16_search (pynndescent's numba helpers), so that the functions below find them as globals.
_select_side = _tree_spill_leaves = _check_and_mark_visited = _bits_as_float32 = _heap_push = _rand_int = None


def _f16_alternative(dot):
    """pynndescent's alternative dot distance: -log2 of the dot product, far when it is <= 0."""
    if dot <= 0.0:
        return _FAR
    return np.float32(-np.log2(dot))


def _f16_distance(query, bits, row):
    """The distance from the (2**112-scaled) query to float16 row `row`, read as int16 bits."""
    total = np.float32(0.0)
    for t in range(query.shape[0]):
        total += query[t] * _bits_as_float32((np.int32(bits[row, t]) << _SHIFT) & _KEEP)
    return _f16_alternative(total)


def _f16_four_distances(query, bits, rows, out):
    """`_f16_distance` to four rows at once (as pynndescent's walk does: four independent sums)."""
    s0 = s1 = s2 = s3 = np.float32(0.0)
    r0, r1, r2, r3 = rows[0], rows[1], rows[2], rows[3]
    for t in range(query.shape[0]):
        x = query[t]
        s0 += x * _bits_as_float32((np.int32(bits[r0, t]) << _SHIFT) & _KEEP)
        s1 += x * _bits_as_float32((np.int32(bits[r1, t]) << _SHIFT) & _KEEP)
        s2 += x * _bits_as_float32((np.int32(bits[r2, t]) << _SHIFT) & _KEEP)
        s3 += x * _bits_as_float32((np.int32(bits[r3, t]) << _SHIFT) & _KEEP)
    out[0], out[1] = _f16_alternative(s0), _f16_alternative(s1)
    out[2], out[3] = _f16_alternative(s2), _f16_alternative(s3)


def _f16_walk(bits, queries, tree_queries, k, epsilon, visited, rng_state, indptr, indices, hyperplanes,
              offsets, children, tree_indices, n_trees, leaf_budget, n_neighbors, min_distance, out):
    """pynndescent.search._search_one for each query over float16 rows; fills `out` with the k ids found
    (heap order, -1 where fewer)."""
    priorities = np.empty(k, dtype=np.float32)
    pending = np.empty(4, dtype=np.int32)
    pending_d = np.empty(4, dtype=np.float32)
    for i in range(queries.shape[0]):
        query = queries[i]
        tree_query = tree_queries[i]
        visited[:] = 0
        priorities[:] = np.inf
        heap = out[i]
        heap[:] = -1
        seeds = [(np.float32(np.inf), np.int32(-1)) for _ in range(0)]
        n_initial = 0
        if leaf_budget == 1:
            for tree in range(n_trees):
                node = 0
                while children[tree, node, 0] > 0:
                    if _select_side(hyperplanes[tree, node], offsets[tree, node], tree_query, rng_state) == 0:
                        node = children[tree, node, 0]
                    else:
                        node = children[tree, node, 1]
                for j in range(-children[tree, node, 0], -children[tree, node, 1]):
                    candidate = tree_indices[tree, j]
                    if _check_and_mark_visited(visited, candidate) == 0:
                        d = _f16_distance(query, bits, candidate)
                        _heap_push(priorities, heap, d, candidate)
                        heapq.heappush(seeds, (d, candidate))
                        n_initial += 1
        else:
            leaves = np.empty((leaf_budget, 2), dtype=np.int32)
            n_leaves = _tree_spill_leaves(tree_query, rng_state, leaves, hyperplanes, offsets, children, leaf_budget)
            for leaf in range(n_leaves):
                for j in range(leaves[leaf, 0], leaves[leaf, 1]):
                    candidate = tree_indices[0, j]
                    if _check_and_mark_visited(visited, candidate) == 0:
                        d = _f16_distance(query, bits, candidate)
                        _heap_push(priorities, heap, d, candidate)
                        heapq.heappush(seeds, (d, candidate))
                        n_initial += 1
        for _ in range(min(k, n_neighbors) - n_initial):  # random seeds when the tree gave too few
            candidate = np.int32(np.abs(_rand_int(rng_state)) % bits.shape[0])
            if _check_and_mark_visited(visited, candidate) == 0:
                d = _f16_distance(query, bits, candidate)
                _heap_push(priorities, heap, d, candidate)
                heapq.heappush(seeds, (d, candidate))
        if len(seeds) == 0:
            continue
        distance_bound = priorities[0] + epsilon * (priorities[0] - min_distance)
        d_vertex, vertex = heapq.heappop(seeds)
        while d_vertex < distance_bound:
            # Unvisited neighbours are scored four at a time, then considered in their order (as
            # pynndescent does: the walk is the same, the four sums run side by side).
            n_pending = 0
            for j in range(indptr[vertex], indptr[vertex + 1]):
                candidate = indices[j]
                if _check_and_mark_visited(visited, candidate) == 0:
                    pending[n_pending] = candidate
                    n_pending += 1
                    if n_pending == 4:
                        _f16_four_distances(query, bits, pending, pending_d)
                        for r in range(4):
                            d = pending_d[r]
                            if d < distance_bound:
                                _heap_push(priorities, heap, d, pending[r])
                                heapq.heappush(seeds, (d, pending[r]))
                                distance_bound = priorities[0] + epsilon * (priorities[0] - min_distance)
                        n_pending = 0
            for r in range(n_pending):
                d = _f16_distance(query, bits, pending[r])
                if d < distance_bound:
                    _heap_push(priorities, heap, d, pending[r])
                    heapq.heappush(seeds, (d, pending[r]))
                    distance_bound = priorities[0] + epsilon * (priorities[0] - min_distance)
            if len(seeds) == 0:
                break
            d_vertex, vertex = heapq.heappop(seeds)
    return out


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
        return "graph" if n_vectors >= GRAPH_MIN_VECTORS else "exact"
    if kind == "graph" and n_vectors < 3:
        return "exact"  # pynndescent needs a few points to build a graph at all
    return kind


def build_index(vectors: np.ndarray, kind: str = "auto", **graph_options) -> VectorIndex:
    """Build the index for unit `vectors` (one row per sentence; float16 is searched as float16, any
    other dtype as float32)."""
    vectors = _servable(vectors)
    chosen = choose_kind(kind, len(vectors))
    if chosen == "exact":
        return ExactIndex(vectors)
    log.info("building a pynndescent graph over %d vectors: the longest step of a fit (measured on 2 cores: "
             "~30 s at 27k vectors, ~6.5 min at 1M; a machine's first build also compiles numba code, ~20 s)",
             len(vectors))
    return GraphIndex.build(vectors, **graph_options)


def load_index(kind: str, directory: Path, vectors: np.ndarray) -> VectorIndex:
    if kind == "exact":
        return ExactIndex(vectors)
    if kind == "graph":
        return GraphIndex.load(directory, vectors)
    raise IndexFileError(f"unknown index kind {kind!r} in the model dir; rebuild the model")
