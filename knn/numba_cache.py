"""A numba cache directory that survives processes, so numba's compile cost is paid once per machine.

`ensure_numba_cache_dir` must run before numba is first imported. The default lives under the user's
cache directory and can be overridden with NUMBA_CACHE_DIR (kept as is when already set) or
REVIEW_SEARCH_CACHE_DIR.

`share_knn_cache` keys the cache of knn's own numba functions (the graph build of
knn.cached_nn_descent, the walk of knn.float16_graph) by file name instead of by folder. numba's own
locator keeps one cache folder per source folder, and a SageMaker-style job runs knn from a new code
dir each time (every sim training job and endpoint): each one compiled ~50 s of graph build and ~7 s
of walk again. knn's functions now share one folder, `knn/` in the cache dir, wherever knn runs from.
numba still checks every entry: its index records the sha256 of the source file, and each entry the
signature and the CPU, so a copy of another knn version recompiles (and replaces the index) instead
of reusing. numba has no public switch for this; its locator classes are a list it looks up per
function (`CacheImpl._locator_classes`), and this puts one class in front for knn's modules only.
"""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_root() -> Path:
    root = os.environ.get("REVIEW_SEARCH_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "review-search"


KNN_CACHE_FOLDER = "knn"  # inside the numba cache dir: knn's functions, wherever knn is installed


def share_knn_cache() -> None:
    """Point the disk cache of knn's numba functions jitted from now on at one folder for every copy
    of knn (see the module docstring). Idempotent; imports numba (after setting its cache dir)."""
    ensure_numba_cache_dir()
    from numba.core import caching

    implementation = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    if implementation is None:  # a numba without the list: knn's functions keep a folder per copy
        return
    locators = implementation._locator_classes
    if not any(getattr(locator, "knn_shared", False) for locator in locators):
        locators.insert(0, _knn_locator(caching))


def _knn_locator(caching):
    import numba

    class KnnFunctionsLocator(caching.UserProvidedCacheLocator):
        """numba's locator for the user's cache dir, with one folder for all of knn's functions."""

        knn_shared = True

        def __init__(self, py_func, py_file):
            super().__init__(py_func, py_file)
            self._cache_path = os.path.join(numba.config.CACHE_DIR, KNN_CACHE_FOLDER)

        @classmethod
        def from_function(cls, py_func, py_file):
            if (getattr(py_func, "__module__", None) or "").split(".")[0] != "knn":
                return None  # everyone else's functions: numba's own locators
            return super().from_function(py_func, py_file)

    return KnnFunctionsLocator


def ensure_numba_cache_dir() -> Path:
    """Point numba at a writable, persistent cache directory (unless one is set) and return it."""
    configured = os.environ.get("NUMBA_CACHE_DIR")
    path = Path(configured) if configured else default_cache_root() / "numba"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = Path("/tmp/review-search-numba")
        path.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(path)
    return path
