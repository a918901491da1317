"""The graph walk's compiled numba kernels, carried in a model dir from the fit to serving.

A serving process on a fresh machine has an empty numba cache: a new SageMaker instance (and, before
knn.numba_cache.share_knn_cache, every sim endpoint: numba kept a cache folder per code dir).
Compiling the walk is then most of the time to a first answer (~6 s of ~11 s on 2 cores).
The fit compiles the same kernels, so it stores numba's own cache files for them in the model dir's
`kernels/`, listed in the manifest like every other file. Before the walk is first compiled in a
serving process, `install` copies them into that process's numba cache, next to where numba looks
for knn/float16_graph.py's functions.

numba decides whether they apply, as it does for any cache entry: the index records the sha256 of the
source file, and each entry is keyed by the function's signature and the CPU (name and features) it
was compiled for. On another CPU, with another knn or numba version, or with another Python, numba
finds no matching entry and compiles as before: slower, never different (tests/test_shipped_kernels.py).

Why numba's cache files and no ahead-of-time compiler: numba's AOT compiler (numba.pycc) is
deprecated and builds an extension module per platform outside numba's dispatch, and numba has no
other way to persist compiled code. The files hold pickles and machine code, which numba loads: they
are copied only after their sha256 matched the manifest, the same trust as the entry point that the
model archive carries in code/.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path

log = logging.getLogger(__name__)

KERNELS_DIR = "kernels"
KERNEL_NAMES = ("_f16_walk", "_f16_dots")  # knn.float16_graph's cached kernels (the inlined helpers live in them)


def _numba_cache_dir() -> Path:
    """Where numba keeps this process's cache files for knn/float16_graph.py's kernels (as its locator
    for them says: knn.numba_cache), once they are jitted (not yet compiled)."""
    from knn.float16_graph import float16_kernels

    return Path(float16_kernels()[0].stats.cache_path)


def _file_bases() -> dict[str, object]:
    """numba's file-name stem for each kernel (module.function-first line.pyXY: the index is stem.nbi,
    the compiled entries stem.N.nbc), and the kernel (a numba dispatcher once jitted)."""
    from knn import float16_graph

    python = f"py{sys.version_info[0]}{sys.version_info[1]}{getattr(sys, 'abiflags', '')}"
    bases = {}
    for name in KERNEL_NAMES:
        kernel = getattr(float16_graph, name)
        function = getattr(kernel, "py_func", kernel)
        bases[f"float16_graph.{name}-{function.__code__.co_firstlineno}.{python}"] = kernel
    return bases


def _kernel_files(folder: Path, base: str, dispatcher) -> list[Path]:
    """A kernel's compiled entries, then its index (written last when installed, read first by numba).
    The entries are those its index lists (numba leaves stale ones of older sources beside them)."""
    index = folder / f"{base}.nbi"
    if not index.is_file():
        return []
    try:
        listed = set(dispatcher._cache._cache_file._load_index().values())  # numba's own reader of the index
    except Exception:  # another numba's internals: every entry of this kernel
        listed = None
    entries = sorted(p for p in folder.glob(f"{base}.*.nbc") if p.name[len(base) + 1:-4].isdigit()
                     and (listed is None or p.name in listed))
    return [*entries, index]


def store(directory: str | Path, rows: str) -> list[str]:
    """Compile the walk's kernels for a model whose rows are `rows` ("int8" codes or "float16" bits), or
    read them from numba's cache, and copy numba's cache files for them into `directory`/kernels/.
    Returns the files written, relative to `directory` (none when numba keeps no cache here)."""
    from knn.float16_graph import compile_for_read_only_rows

    directory = Path(directory)
    compile_for_read_only_rows(rows)
    source = _numba_cache_dir()
    target = directory / KERNELS_DIR
    shutil.rmtree(target, ignore_errors=True)  # a dir fitted again: no kernels of an earlier source left over
    written = []
    for base, kernel in _file_bases().items():
        files = _kernel_files(source, base, kernel)
        if not files:
            log.info("numba kept no cache files for %s in %s; serving will compile the walk", base, source)
            shutil.rmtree(target, ignore_errors=True)  # both kernels or neither
            return []
        target.mkdir(parents=True, exist_ok=True)
        for path in files:
            (target / path.name).write_bytes(path.read_bytes())
            written.append(f"{KERNELS_DIR}/{path.name}")
    return written


def install(directory: str | Path, listed: dict) -> list[str]:
    """Copy a model dir's shipped kernels (`listed`: its manifest's files) into this process's numba
    cache, before the walk is first compiled. A kernel whose index is already there is left as it is
    (numba compiles what that index lacks). A file that does not match its sha256 stops the copy
    (knn.model_dir's check then reports it). Returns the file names installed."""
    directory = Path(directory)
    shipped = sorted(name for name in listed if name.startswith(KERNELS_DIR + "/"))
    if not shipped:
        return []
    try:
        target = _numba_cache_dir()
        target.mkdir(parents=True, exist_ok=True)
        installed = []
        for base in _file_bases():
            names = [n for n in shipped if Path(n).name.startswith(base + ".")]
            if not names or (target / f"{base}.nbi").exists():
                continue
            contents = {}
            for name in names:
                data = (directory / name).read_bytes()
                if hashlib.sha256(data).hexdigest() != (listed[name] or {}).get("sha256"):
                    log.warning("%s: %s does not match its sha256; not installed", directory, name)
                    return installed
                contents[Path(name).name] = data
            for name in sorted(contents, key=lambda n: n.endswith(".nbi")):  # the index last
                temporary = target / f"{name}.tmp.{os.getpid()}"
                temporary.write_bytes(contents[name])
                os.replace(temporary, target / name)
                installed.append(name)
    except OSError as exc:  # an unwritable cache: numba compiles, as without shipped kernels
        log.warning("%s: shipped kernels not installed (%s); the walk compiles instead", directory, exc)
        return []
    if installed:
        log.info("%s: the graph walk's compiled kernels installed in numba's cache (%s)", directory, target)
    return installed
