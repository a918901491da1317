"""pynndescent's graph search over float16 rows, and float32 dot products with float16 rows, as cached
numba kernels: what `knn.index` uses when a model's vectors are float16.

pynndescent cannot search float16 rows: numba has no float16 on the CPU (a jitted function reading a
float16 array raises NotImplementedError float16), so pynndescent would need a float32 copy of all the
vectors, the very memory being saved. `Float16Graph` is therefore pynndescent 0.7.0's own search (the
same saved graph and tree, epsilon bound and -log2(dot) distance, so model dirs and graph files are
unchanged) as one cached numba function that reads rows as int16 bits and widens them to float32 with
two integer operations inside the dot product; `float16_kernels()[1]` computes dot products the same
way for exact search and the re-scoring of candidates. No library does this: numba, pynndescent and
hnswlib all need float32 rows. Weighed and not chosen: pynndescent's int8 quantization (compiles a
search per process, re-ranks on float32 rows, and int8 codes + float16 rows would hold 1.5x the float16
bytes); hardware float16 conversion through an LLVM intrinsic (same speed measured, 19 vs 20 ms for
200k rows, but a libcall on CPUs without F16C).
"""
from __future__ import annotations

import threading

import numpy as np

from knn.numba_cache import share_knn_cache


class Float16Graph:
    """pynndescent's search walk (tree leaf seeds, then the bounded best-first graph search, cosine as
    its -log2(dot) distance) over float16 rows, in one cached numba function (`_float16_search`).

    Numba has no float16 on the CPU (any float16 array read or conversion raises NotImplementedError),
    so the rows are read as int16 bits and widened in the distance loop: sign-extended to int32, shifted
    left by 13 and masked with 0x8FFFFFFF (sign, then exponent and mantissa), the bits reinterpreted as
    float32 are the value x 2**-112 for every normal float16 (`compact_vectors` leaves no subnormals),
    so the query is scaled by 2**112 once instead: two integer operations per component.
    Same graph, same tree, same epsilon bound as pynndescent; only the float16 rounding of the rows
    (<= 2**-11 relative) differs, and the candidates are re-scored by GraphIndex anyway.

    Given a knn.quantized_vectors.QuantizedVectors instead, the same walk reads its int8 codes (the
    query scaled by the codes' per-dimension scales), and GraphIndex re-scores from the float16 rows."""

    def __init__(self, state: dict, vectors):
        state.pop("_raw_data", None)
        self._state = state
        codes = getattr(vectors, "codes", None)  # knn.quantized_vectors.QuantizedVectors: walk its int8 codes
        if codes is not None:
            if getattr(vectors, "positions", None) is not None:
                raise ValueError("a graph walks codes stored in row order; these are in an inverted file's order")
            self._raw_data, self._bits, self._query_scale = codes, codes, vectors.scales
        else:  # the model's float16 array itself (bench/ reads these attributes), read as its bits
            self._raw_data, self._bits, self._query_scale = vectors, vectors.view(np.int16), WIDEN
        graph = state["_search_graph"]
        if graph.indices.dtype != np.int32 or graph.indptr.dtype != np.int32:  # one int32 copy, held once
            from scipy.sparse import csr_array

            graph = csr_array((graph.data, graph.indices.astype(np.int32), graph.indptr.astype(np.int32)),
                              shape=graph.shape)
            graph.has_sorted_indices = True
            state["_search_graph"] = graph
        self._search_graph = graph
        self._search_forest = forest = state["_search_forest"]
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
        hyperplanes, offsets, children, tree_indices, n_trees = self._tree
        self._node_rows, planes = internal_planes(hyperplanes, children)
        self._tree = (planes, offsets, children, tree_indices, n_trees)
        self._compact_forest = planes is not hyperplanes and bool(forest) and state.get("tree_init", True)
        if self._compact_forest:
            # The trees are held with their split nodes' hyperplanes only; __getstate__ puts the
            # leaves' rows of zeros back for saving.
            self._search_forest = tuple((planes[number, :int((self._node_rows[number] >= 0).sum())], *tree[1:])
                                        for number, tree in enumerate(forest))
            state["_search_forest"] = None
        self._leaf_budget = int(state.get("search_tree_leaf_budget", 1) or 1)
        self._n_neighbors = int(state["n_neighbors"])
        self._min_distance = np.float32(state["_min_distance"])
        self._rng_state = np.asarray(state["search_rng_state"], dtype=np.int64).copy()
        self._visited = np.zeros(len(vectors) // 8 + 1, dtype=np.uint8)
        self._seed_keys = np.empty(len(vectors) + 1, dtype=np.float32)  # the walk's heap of seeds
        self._seed_ids = np.empty(len(vectors) + 1, dtype=np.int32)
        self._search = _float16_search()

    def query(self, queries: np.ndarray, k: int = 10, epsilon: float = 0.3,
              return_distances: bool = False, pre_normalized: bool = False) -> np.ndarray:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if not pre_normalized:
            norms = np.linalg.norm(queries, axis=1, keepdims=True)
            queries = queries / np.where(norms > 0, norms, 1.0).astype(np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int32)
        planes, offsets, children, tree_indices, n_trees = self._tree
        self._search(self._bits, queries * self._query_scale, queries, np.int64(k), np.float32(epsilon), self._visited,
                     self._seed_keys, self._seed_ids, self._rng_state.copy(), self._indptr, self._indices, planes,
                     self._node_rows, offsets, children, tree_indices, np.int64(n_trees),
                     np.int64(self._leaf_budget), np.int64(self._n_neighbors), self._min_distance, ids)
        if return_distances:
            raise ValueError("the float16 graph gives ids only (GraphIndex re-scores them)")
        return ids

    def __getstate__(self) -> dict:
        state = dict(self._state)
        if self._compact_forest:  # a tree's nodes: its offsets, one per node
            state["_search_forest"] = tuple((full_planes(tree[0], self._node_rows[number, :len(tree[1])]), *tree[1:])
                                            for number, tree in enumerate(self._search_forest))
        return state


def internal_planes(hyperplanes: np.ndarray, children: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A search forest's hyperplanes (trees x nodes x dimensions) without the leaves' rows: each row
    of a leaf is all zeros (pynndescent fills only the split nodes'), and about half the nodes are
    leaves (150 MB of float32 zeros in a 1M-sentence tree). Returns (row of each node in the compact
    array, -1 for a leaf; the compact array). When a leaf row is not zero (not pynndescent's layout),
    nothing is dropped: every node keeps its own row."""
    internal = children[:, :, 0] > 0
    n_trees, n_nodes, dimensions = hyperplanes.shape
    for tree in range(n_trees):
        leaves = np.flatnonzero(~internal[tree])
        for begin in range(0, len(leaves), 4096):  # a block of rows at a time, no copy of all of them
            if np.any(hyperplanes[tree, leaves[begin:begin + 4096]]):
                return np.tile(np.arange(n_nodes, dtype=np.int32), (n_trees, 1)), hyperplanes
    counts = internal.sum(axis=1)
    planes = np.zeros((n_trees, max(int(counts.max()), 1), dimensions), dtype=np.float32)
    rows = np.full((n_trees, n_nodes), -1, dtype=np.int32)
    for tree in range(n_trees):
        nodes = np.flatnonzero(internal[tree])
        rows[tree, nodes] = np.arange(len(nodes), dtype=np.int32)
        planes[tree, :len(nodes)] = hyperplanes[tree, nodes]
    return rows, planes


def full_planes(planes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One tree's hyperplanes as pynndescent keeps them (`internal_planes` undone): a row per node."""
    full = np.zeros((len(rows), planes.shape[-1]), dtype=np.float32)
    nodes = np.flatnonzero(rows >= 0)
    full[nodes] = planes[rows[nodes]]
    return full


WIDEN = np.float32(2.0 ** 112)  # float16 bits << 13 read as float32 are the value x 2**-112
_KEEP = np.int32(-0x70000001)  # 0x8FFFFFFF: the sign bit and the 15 bits of exponent and mantissa
_SHIFT = np.int32(13)
_FAR = np.float32(np.finfo(np.float32).max)
_FLOAT16_KERNELS = None
_KERNELS_LOCK = threading.Lock()
_BACKGROUND = None  # compile_in_background's thread, once started


def _float16_search():
    return float16_kernels()[0]


def float16_kernels():
    """The numba graph search and dot products over float16 bits, compiled once per machine, then read
    from numba's cache.

    The functions below are plain module-level Python until this jits them in place (numba must not
    be imported before knn.numba_cache has set its cache directory): as module globals, not closures,
    numba can cache them on disk (a closure recompiled in every process, ~15 s)."""
    global _FLOAT16_KERNELS
    if _FLOAT16_KERNELS is not None:
        return _FLOAT16_KERNELS
    with _KERNELS_LOCK:  # a first use on the main thread while compile_in_background's thread wraps them
        if _FLOAT16_KERNELS is None:
            _FLOAT16_KERNELS = _jit_kernels()
    return _FLOAT16_KERNELS


def _jit_kernels():
    global _f16_alternative, _f16_distance, _f16_four_distances, _f16_walk, _f16_dots
    global _select_side, _tree_spill_leaves, _check_and_mark_visited, _widen, _heap_push, _rand_int
    global _seed_push, _seed_pop
    share_knn_cache()
    import numba

    inline = numba.njit(fastmath=True, boundscheck=False)  # LLVM inlines them; numba's IR inlining compiled 3x slower
    _widen = _widen_intrinsic(numba)
    _rand_int = inline(_rand_int)
    _check_and_mark_visited = inline(_check_and_mark_visited)
    _heap_push = inline(_heap_push)
    _select_side = inline(_select_side)
    _tree_spill_leaves = inline(_tree_spill_leaves)
    _seed_push = inline(_seed_push)
    _seed_pop = inline(_seed_pop)
    _f16_alternative = inline(_f16_alternative)
    _f16_distance = inline(_f16_distance)
    _f16_four_distances = inline(_f16_four_distances)
    # nogil: ProductSearch walks the graphs on a second thread while BM25 runs (knn.search).
    _f16_walk = numba.njit(fastmath=True, cache=True, nogil=True, locals={
        "candidate": numba.int32, "vertex": numba.int32, "d": numba.float32, "d_vertex": numba.float32,
        "distance_bound": numba.float32, "node": numba.uint32})(_f16_walk)
    _f16_dots = numba.njit(fastmath=True, cache=True, nogil=True, boundscheck=False)(_f16_dots)
    return _f16_walk, _f16_dots


def compile_in_background(rows: str = "float16") -> None:
    """Compile (or read from numba's cache) the walk and dot-product kernels for a read-only model's
    float16 rows (or its int8 codes: rows="int8") on a thread of their own, once per process, while the
    caller loads the model.

    On an empty numba cache (a fresh machine) the walk's compile is most of the time to a first
    answer (~7 s on 2 cores), and it needs nothing from the model: the kernels are typed by the
    arguments' dtypes and layouts only, so tiny arrays of the same types compile the very functions
    the first query calls (numba's dispatcher makes a query that comes first wait for them, no second
    compile). A model's vectors are mapped read-only (knn.model_dir), so the rows are typed read-only."""
    global _BACKGROUND
    with _KERNELS_LOCK:
        if _BACKGROUND is not None:
            return
        _BACKGROUND = threading.Thread(target=compile_for_read_only_rows, args=(rows,), name="float16-kernels",
                                       daemon=True)
    _BACKGROUND.start()


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def compile_for_read_only_rows(rows: str = "float16") -> None:
    """The kernels typed as a loaded model's arrays are: its rows (float16 bits or int8 codes), the
    graph's neighbour lists and the tree's offsets, children and point indices mapped read-only from
    the model dir (knn.mapped_npz); the compact hyperplanes and node rows made at load, writable."""
    walk, dots = float16_kernels()
    bits = _read_only(np.zeros((1, 1), np.int8 if rows == "int8" else np.int16))
    one = np.zeros((1, 1), np.float32)
    walk(bits, one, one.copy(), np.int64(1), np.float32(0.0), np.zeros(1, np.uint8), np.zeros(2, np.float32),
         np.zeros(2, np.int32), np.zeros(3, np.int64), _read_only(np.zeros(1, np.int32)),
         _read_only(np.zeros(1, np.int32)), np.zeros((1, 1, 1), np.float32), np.zeros((1, 1), np.int32),
         _read_only(np.zeros((1, 1), np.float32)), _read_only(np.full((1, 1, 2), -1, np.int32)),
         _read_only(np.zeros((1, 1), np.int32)), np.int64(0), np.int64(1), np.int64(0), np.float32(0.0),
         np.full((1, 1), -1, np.int32))
    dots(bits, np.zeros(1, np.int64), one, np.zeros((1, 1), np.float32))


def _f16_dots(bits, rows, queries, out):
    """out[q, i] = (2**112-scaled) queries[q] . float16 row rows[i], each row read once for all queries."""
    for i in range(rows.shape[0]):
        row = bits[rows[i]]
        for q in range(queries.shape[0]):
            query = queries[q]
            total = np.float32(0.0)
            for t in range(query.shape[0]):
                total += query[t] * _widen(row[t])
            out[q, i] = total


_widen = None  # the intrinsic, made by float16_kernels once numba may be imported


def _widen_intrinsic(numba):
    """A row component as float32, by the row array's dtype: int16 holds float16 bits, widened as the
    class docstring says ((sign-extended << 13) & 0x8FFFFFFF, read as float32: the value x 2**-112);
    int8 is a quantized code (knn.quantized_vectors), converted as it is. The query carries the scale
    (WIDEN, or the codes' per-dimension scales), so one kernel serves both kinds of rows."""
    from llvmlite import ir
    from numba.extending import intrinsic

    @intrinsic
    def widen(typingctx, x):
        if not isinstance(x, numba.types.Integer) or x.bitwidth not in (8, 16) or not x.signed:
            return None

        def codegen(context, builder, sig, args):
            if sig.args[0].bitwidth == 8:
                return builder.sitofp(args[0], ir.FloatType())
            int32 = ir.IntType(32)
            bits = builder.shl(builder.sext(args[0], int32), ir.Constant(int32, int(_SHIFT)))
            return builder.bitcast(builder.and_(bits, ir.Constant(int32, int(_KEEP))), ir.FloatType())

        return numba.types.float32(x), codegen

    return widen


# pynndescent 0.7.0's helpers of its search (BSD-2-Clause, (c) Leland McInnes), copied so that serving a
# float16 model never imports pynndescent: its import compiles its explicitly typed functions, ~18 s
# of a first start on an empty numba cache. Jitted (inline) by float16_kernels.

def _rand_int(state):
    """pynndescent.utils.tau_rand_int: a fast pseudo-random int32 (rng state: 3 int64)."""
    state[0] = (((state[0] & 4294967294) << 12) & 0xFFFFFFFF) ^ ((((state[0] << 13) & 0xFFFFFFFF) ^ state[0]) >> 19)
    state[1] = (((state[1] & 4294967288) << 4) & 0xFFFFFFFF) ^ ((((state[1] << 2) & 0xFFFFFFFF) ^ state[1]) >> 25)
    state[2] = (((state[2] & 4294967280) << 17) & 0xFFFFFFFF) ^ ((((state[2] << 3) & 0xFFFFFFFF) ^ state[2]) >> 11)
    return np.int32(state[0] ^ state[1] ^ state[2])


def _check_and_mark_visited(table, candidate):
    """pynndescent.utils.check_and_mark_visited: was `candidate` visited (bit table)? Marks it."""
    loc = candidate >> 3
    mask = np.uint8(1 << (candidate & 7))
    was_visited = table[loc] & mask
    table[loc] |= mask
    return was_visited


def _heap_push(priorities, indices, p, n):
    """pynndescent.utils.simple_heap_push: push (p, n) into a max-heap of fixed size if p beats its top."""
    if p >= priorities[0]:
        return 0
    size = priorities.shape[0]
    priorities[0] = p
    indices[0] = n
    i = 0
    while True:
        ic1 = 2 * i + 1
        ic2 = ic1 + 1
        if ic1 >= size:
            break
        elif ic2 >= size:
            if priorities[ic1] > p:
                i_swap = ic1
            else:
                break
        elif priorities[ic1] >= priorities[ic2]:
            if p < priorities[ic1]:
                i_swap = ic1
            else:
                break
        else:
            if p < priorities[ic2]:
                i_swap = ic2
            else:
                break
        priorities[i] = priorities[i_swap]
        indices[i] = indices[i_swap]
        i = i_swap
    priorities[i] = p
    indices[i] = n
    return 1


def _select_side(hyperplane, offset, point, rng_state):
    """pynndescent.rp_trees.select_side: which child of a tree node the point falls in (0 or 1)."""
    margin = offset
    for d in range(point.shape[0]):
        margin += hyperplane[d] * point[d]
    if abs(margin) < 1e-8:
        return 0 if np.abs(_rand_int(rng_state)) % 2 == 0 else 1
    elif margin > 0:
        return 0
    return 1


def _tree_spill_leaves(point, rng_state, leaves, tree_hyperplanes, tree_node_rows, tree_offsets, tree_children,
                       leaf_budget):
    """pynndescent.search._tree_spill_leaves: best-first descent of the first tree, up to leaf_budget leaves."""
    max_tree_nodes = tree_children.shape[1]
    frontier_priorities = np.empty(max_tree_nodes, dtype=np.float32)
    frontier_nodes = np.empty(max_tree_nodes, dtype=np.int32)
    frontier_size = 1
    frontier_priorities[0] = 0.0
    frontier_nodes[0] = 0
    leaf_count = 0
    while leaf_count < leaf_budget and frontier_size > 0:
        best = 0
        for frontier_index in range(1, frontier_size):
            if frontier_priorities[frontier_index] < frontier_priorities[best]:
                best = frontier_index
        priority = frontier_priorities[best]
        node = frontier_nodes[best]
        frontier_size -= 1
        frontier_priorities[best] = frontier_priorities[frontier_size]
        frontier_nodes[best] = frontier_nodes[frontier_size]
        if tree_children[0, node, 0] <= 0:
            leaves[leaf_count, 0] = -tree_children[0, node, 0]
            leaves[leaf_count, 1] = -tree_children[0, node, 1]
            leaf_count += 1
            continue
        margin = tree_offsets[0, node]
        plane = tree_node_rows[0, node]
        for dimension in range(point.shape[0]):
            margin += tree_hyperplanes[0, plane, dimension] * point[dimension]
        if abs(margin) < 1.0e-8:
            primary_side = np.abs(_rand_int(rng_state)) % 2
        elif margin > 0.0:
            primary_side = 0
        else:
            primary_side = 1
        alternate_side = 1 - primary_side
        frontier_priorities[frontier_size] = priority
        frontier_nodes[frontier_size] = tree_children[0, node, primary_side]
        frontier_size += 1
        frontier_priorities[frontier_size] = max(priority, abs(margin))
        frontier_nodes[frontier_size] = tree_children[0, node, alternate_side]
        frontier_size += 1
    return leaf_count


def _f16_alternative(dot):
    """pynndescent's alternative dot distance: -log2 of the dot product, far when it is <= 0."""
    if dot <= 0.0:
        return _FAR
    return np.float32(-np.log2(dot))


def _f16_distance(query, bits, row):
    """The distance from the (2**112-scaled) query to float16 row `row`, read as int16 bits."""
    total = np.float32(0.0)
    for t in range(query.shape[0]):
        total += query[t] * _widen(bits[row, t])
    return _f16_alternative(total)


def _f16_four_distances(query, bits, rows, out):
    """`_f16_distance` to four rows at once (as pynndescent's walk does: four independent sums)."""
    s0 = s1 = s2 = s3 = np.float32(0.0)
    r0, r1, r2, r3 = rows[0], rows[1], rows[2], rows[3]
    for t in range(query.shape[0]):
        x = query[t]
        s0 += x * _widen(bits[r0, t])
        s1 += x * _widen(bits[r1, t])
        s2 += x * _widen(bits[r2, t])
        s3 += x * _widen(bits[r3, t])
    out[0], out[1] = _f16_alternative(s0), _f16_alternative(s1)
    out[2], out[3] = _f16_alternative(s2), _f16_alternative(s3)


def _seed_push(keys, ids, size, key, vertex):
    """Push onto the walk's min-heap of seeds (arrays with room for every vertex: each is pushed once at
    most, when first visited); the new size. pynndescent uses heapq on a list of tuples, which numba
    compiles ~2x slower."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if keys[parent] <= key:
            break
        keys[i] = keys[parent]
        ids[i] = ids[parent]
        i = parent
    keys[i] = key
    ids[i] = vertex
    return size + 1


def _seed_pop(keys, ids, size):
    """The nearest seed off the min-heap: (key, vertex, new size)."""
    top_key, top_id = keys[0], ids[0]
    size -= 1
    key, vertex = keys[size], ids[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and keys[child + 1] < keys[child]:
            child += 1
        if keys[child] >= key:
            break
        keys[i] = keys[child]
        ids[i] = ids[child]
        i = child
    keys[i] = key
    ids[i] = vertex
    return top_key, top_id, size


def _f16_walk(bits, queries, tree_queries, k, epsilon, visited, seed_keys, seed_ids, rng_state, indptr, indices,
              hyperplanes, node_rows, offsets, children, tree_indices, n_trees, leaf_budget, n_neighbors, min_distance,
              out):
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
        n_seeds = 0
        n_initial = 0
        if leaf_budget == 1:
            for tree in range(n_trees):
                node = 0
                while children[tree, node, 0] > 0:
                    if _select_side(hyperplanes[tree, node_rows[tree, node]], offsets[tree, node], tree_query,
                                    rng_state) == 0:
                        node = children[tree, node, 0]
                    else:
                        node = children[tree, node, 1]
                for j in range(-children[tree, node, 0], -children[tree, node, 1]):
                    candidate = tree_indices[tree, j]
                    if _check_and_mark_visited(visited, candidate) == 0:
                        d = _f16_distance(query, bits, candidate)
                        _heap_push(priorities, heap, d, candidate)
                        n_seeds = _seed_push(seed_keys, seed_ids, n_seeds, d, candidate)
                        n_initial += 1
        else:
            leaves = np.empty((leaf_budget, 2), dtype=np.int32)
            n_leaves = _tree_spill_leaves(tree_query, rng_state, leaves, hyperplanes, node_rows, offsets, children,
                                          leaf_budget)
            for leaf in range(n_leaves):
                for j in range(leaves[leaf, 0], leaves[leaf, 1]):
                    candidate = tree_indices[0, j]
                    if _check_and_mark_visited(visited, candidate) == 0:
                        d = _f16_distance(query, bits, candidate)
                        _heap_push(priorities, heap, d, candidate)
                        n_seeds = _seed_push(seed_keys, seed_ids, n_seeds, d, candidate)
                        n_initial += 1
        for _ in range(min(k, n_neighbors) - n_initial):  # random seeds when the tree gave too few
            candidate = np.int32(np.abs(_rand_int(rng_state)) % bits.shape[0])
            if _check_and_mark_visited(visited, candidate) == 0:
                d = _f16_distance(query, bits, candidate)
                _heap_push(priorities, heap, d, candidate)
                n_seeds = _seed_push(seed_keys, seed_ids, n_seeds, d, candidate)
        if n_seeds == 0:
            continue
        distance_bound = priorities[0] + epsilon * (priorities[0] - min_distance)
        d_vertex, vertex, n_seeds = _seed_pop(seed_keys, seed_ids, n_seeds)
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
                                n_seeds = _seed_push(seed_keys, seed_ids, n_seeds, d, pending[r])
                                distance_bound = priorities[0] + epsilon * (priorities[0] - min_distance)
                        n_pending = 0
            for r in range(n_pending):
                d = _f16_distance(query, bits, pending[r])
                if d < distance_bound:
                    _heap_push(priorities, heap, d, pending[r])
                    n_seeds = _seed_push(seed_keys, seed_ids, n_seeds, d, pending[r])
                    distance_bound = priorities[0] + epsilon * (priorities[0] - min_distance)
            if n_seeds == 0:
                break
            d_vertex, vertex, n_seeds = _seed_pop(seed_keys, seed_ids, n_seeds)
    return out
