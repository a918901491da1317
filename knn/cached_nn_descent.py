"""pynndescent's graph construction for cosine vectors, compiled once per machine instead of once per
process.

pynndescent builds a kNN graph with `nn_descent`, a numba function that takes the distance function
as an argument and is not disk-cached: numba cannot cache it, because lowering a jitted function
passed as a value embeds that function object's address (a "dynamic global"), and
`numba.get_num_threads()` embeds a ctypes pointer the same way. So every process that builds a graph
compiled ~50 s of numba code first (measured: a 6,000-vector build took 56.7 s in a fresh process,
of which nn_descent's compile was 50.8 s; the same build again in that process took 1.9 s).

`_nn_descent_cosine` is one disk-cached numba function that calls pynndescent's own `nn_descent`
with its cosine distance (`alternative_dot`, what pynndescent picks for metric="cosine"). While it
is compiled, under numba's compiler lock, two constants are lowered without addresses:
- a jitted function used as a value becomes numba's dummy value (what numba lowers any `Dummy`
  type to): pynndescent only ever calls `dist`, and those calls are bound when the code is typed,
  so the value is never read;
- numba's `get_num_threads` C function is called by its symbol, as numba's own
  `_iget_num_threads` intrinsic does, instead of through a ctypes pointer.
Nothing else about the compile changes, and the graph is the same to the bit (tests/test_index.py
compares it with pynndescent's own).

No library does this: pynndescent has no cached build path, and numba offers no switch for it.
`route_cosine_builds()` puts the router in place of pynndescent's module-level `nn_descent` (what
`NNDescent` calls); any call it does not cover (another metric, an initial graph, another
pynndescent version than the one this was checked with) goes to pynndescent's own function, as does
every call if the cached compile fails.
"""
from __future__ import annotations

import logging
import threading

from knn.numba_cache import share_knn_cache

log = logging.getLogger(__name__)

CHECKED_PYNNDESCENT = "0.7.0"  # the pynndescent whose nn_descent this was checked against (pinned)

_lock = threading.Lock()
_state: dict = {}


def route_cosine_builds() -> bool:
    """Route pynndescent's cosine graph builds through the cached compile (idempotent). Returns
    whether the route is in place (False with another pynndescent version than the checked one)."""
    with _lock:
        if "routed" in _state:
            return _state["routed"]
        share_knn_cache()  # one cache for every copy of knn (each SageMaker-style job runs from a new code dir)
        import pynndescent
        import pynndescent.pynndescent_ as pynnd

        if pynndescent.__version__ != CHECKED_PYNNDESCENT:
            log.info("pynndescent %s is not the checked %s: graph builds compile pynndescent's own code",
                     pynndescent.__version__, CHECKED_PYNNDESCENT)
            _state["routed"] = False
            return False
        _state["original"] = original = pynnd.nn_descent
        _state["cached"] = _compile_target(original)
        pynnd.nn_descent = _router
        _state["routed"] = True
        return True


def cache_counts() -> tuple[int, int]:
    """(numba cache hits, compiles) of the cached build in this process: (1, 0) once a machine has compiled it."""
    cached = _state.get("cached")
    if cached is None:
        return 0, 0
    return sum(cached.stats.cache_hits.values()), sum(cached.stats.cache_misses.values())


def _router(data, n_neighbors, rng_state, max_candidates=50, dist=None, n_iters=10, delta=0.001,
            init_graph=None, rp_tree_init=True, leaf_array=None, low_memory=True, verbose=False, kernel=0):
    """pynndescent's `nn_descent` signature: cosine builds from scratch go through the cached compile."""
    import numba
    import pynndescent.pynndescent_ as pynnd
    from pynndescent.distances import alternative_dot

    original = _state["original"]
    if init_graph is None:
        init_graph = pynnd.EMPTY_GRAPH
    arguments = (data, n_neighbors, rng_state, max_candidates, dist, n_iters, delta, init_graph, rp_tree_init,
                 leaf_array, low_memory, verbose, kernel)
    covered = (dist is alternative_dot and rp_tree_init and leaf_array is not None
               and init_graph[0].shape[0] == 1 and not _state.get("failed"))
    if not covered:
        return original(*arguments)
    numba.get_num_threads()  # starts numba's thread pool, which also registers the get_num_threads symbol
    cached = _state["cached"]
    tail = (n_neighbors, rng_state, max_candidates, n_iters, delta, init_graph, leaf_array, low_memory, verbose,
            kernel)
    try:
        with _addressless_constants():  # read from numba's cache when there; compiled and saved otherwise
            cached.compile(tuple(numba.typeof(value) for value in (data, *tail)))
    except Exception as exc:  # a numba whose internals differ: pynndescent's own (uncached) compile
        log.warning("the cached graph-build compile failed (%s: %s); compiling pynndescent's own code instead",
                    type(exc).__name__, exc)
        _state["failed"] = True
        return original(*arguments)
    return cached(data, *tail)


def _nn_descent_cosine(data, n_neighbors, rng_state, max_candidates, n_iters, delta, init_graph, leaf_array,
                       low_memory, verbose, kernel):
    """pynndescent's nn_descent from scratch with its cosine distance (jitted by `_compile_target`)."""
    return _pynnd_nn_descent(data, n_neighbors, rng_state, max_candidates, _alternative_dot, n_iters, delta,
                             init_graph, True, leaf_array, low_memory, verbose, kernel)


_pynnd_nn_descent = _alternative_dot = None


def _compile_target(original):
    """`_nn_descent_cosine` jitted with numba's disk cache. It is plain module-level Python until now (numba
    must not be imported before knn.numba_cache has set its cache directory); as a module global, not a
    closure, numba can cache it on disk."""
    global _nn_descent_cosine, _pynnd_nn_descent, _alternative_dot
    import numba
    from pynndescent.distances import alternative_dot

    _pynnd_nn_descent, _alternative_dot = original, alternative_dot
    _nn_descent_cosine = numba.njit(cache=True)(_nn_descent_cosine)
    return _nn_descent_cosine


class _addressless_constants:
    """While compiling (under numba's compiler lock): a jitted function used as a value lowers to
    numba's dummy value, and the `get_num_threads` ctypes pointer to a call by symbol (see the module
    docstring). Restored on exit."""

    def __enter__(self):
        from llvmlite import ir
        from numba.core import base, cgutils, types
        from numba.core.compiler_lock import global_compiler_lock
        from numba.np.ufunc import parallel

        self._lock = global_compiler_lock
        self._base = base
        self._original = original = base.BaseContext.get_constant_generic
        get_num_threads = parallel._get_num_threads

        def get_constant_generic(context, builder, ty, value):
            if isinstance(ty, types.Dispatcher):
                return context.get_dummy_value()
            if isinstance(ty, types.ExternalFunctionPointer) and value is get_num_threads:
                function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                                          "get_num_threads")
                return builder.bitcast(function, context.get_function_pointer_type(ty))
            return original(context, builder, ty, value)

        self._lock.acquire()
        base.BaseContext.get_constant_generic = get_constant_generic
        return self

    def __exit__(self, *exc):
        self._base.BaseContext.get_constant_generic = self._original
        self._lock.release()
        return False
