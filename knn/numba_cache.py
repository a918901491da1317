"""A numba cache directory that survives processes, so pynndescent's JIT cost is paid once per machine.

Must run before numba is first imported. The default lives under the user's cache directory and can
be overridden with NUMBA_CACHE_DIR (kept as is when already set) or REVIEW_SEARCH_CACHE_DIR.
"""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_root() -> Path:
    root = os.environ.get("REVIEW_SEARCH_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "review-search"


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
