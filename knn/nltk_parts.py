"""nltk's Punkt sentence tokenizer and Porter stemmer, imported without running nltk's package __init__.

Any `from nltk.x import y` first runs `nltk/__init__.py`, which imports nearly all of nltk (scipy.stats
among it): ~3 s of CPU in every process that splits or stems text (each fit, each endpoint worker
before its first answer, each batch job) for two modules that need only a handful of nltk's own small
modules. Here those two are imported under bare stand-ins for the `nltk`, `nltk.tokenize` and
`nltk.stem` packages (their directories, without their __init__), and then every nltk module leaves
`sys.modules` again: code that imports nltk later gets the whole real package, and the classes used
here are nltk's own, unchanged. When nltk is already imported, its modules are used as they are.
No library offers this: importlib's LazyLoader still runs a package's __init__ at its first use.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from functools import lru_cache

_BARE_PACKAGES = ("nltk", "nltk.tokenize", "nltk.stem")
_MODULES = ("nltk.tokenize.punkt", "nltk.stem.porter")
_lock = threading.Lock()


def punkt_module() -> types.ModuleType:
    """`nltk.tokenize.punkt`."""
    return _modules()[0]


def porter_module() -> types.ModuleType:
    """`nltk.stem.porter`."""
    return _modules()[1]


@lru_cache(maxsize=1)
def _modules() -> tuple[types.ModuleType, ...]:
    if "nltk" in sys.modules:
        return tuple(importlib.import_module(name) for name in _MODULES)
    with _lock:
        before = set(sys.modules)
        try:
            for name in _BARE_PACKAGES:
                sys.modules[name] = _bare_package(name)
            return tuple(importlib.import_module(name) for name in _MODULES)
        finally:
            for name in set(sys.modules) - before | set(_BARE_PACKAGES):
                if name == "nltk" or name.startswith("nltk."):
                    sys.modules.pop(name, None)


def _bare_package(name: str) -> types.ModuleType:
    """A package module for `name` that finds its submodules in the real directory, without running
    its __init__ (the parent's stand-in must already be in sys.modules)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{name} is not an installed package; install the project's requirements (nltk)")
    package = types.ModuleType(name)
    package.__spec__ = spec
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__package__ = name
    return package
