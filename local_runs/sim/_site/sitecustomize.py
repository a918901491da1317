"""Loaded at start-up by every sim job process (this directory is on their PYTHONPATH).

In a SageMaker container the only copy of the user's own code is the one shipped with the
job (``source_dir`` + ``dependencies``). On the host, the same packages may also be
installed (e.g. the project in editable mode), which would let an import succeed in sim
that fails on SageMaker -- typically ``dependencies`` at serving time, which the SDK's
repack puts in ``code/lib/`` where the inference toolkit does not look.

So, when ``LOCAL_RUNS_SIM_CODE_ROOT`` is set, every top-level module the job ships (the
entries of that directory and of its ``lib/``) is importable only from ``sys.path``
entries inside that directory; the host's copy stays hidden and the import fails as it
would in the container. Any other ``sitecustomize`` on the path is run afterwards.
"""
import os
import sys


def _install_shipped_code_finder():
    root = os.environ.get("LOCAL_RUNS_SIM_CODE_ROOT")
    if not root:
        return
    import importlib.machinery

    shown, root = root, os.path.realpath(root)

    def _shipped():
        names = set()
        for directory in (root, os.path.join(root, "lib")):
            try:
                entries = os.listdir(directory)
            except OSError:
                continue
            for entry in entries:
                name = entry[:-3] if entry.endswith(".py") else entry
                if name.isidentifier() and not name.startswith("_") and (
                        entry.endswith(".py") or os.path.isdir(os.path.join(directory, entry))):
                    names.add(name)
        names.discard("lib")
        return names

    def _inside(entry):
        real = os.path.realpath(entry or os.getcwd())
        return real == root or real.startswith(root + os.sep)

    class ShippedCodeFinder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if path is not None or "." in name or name not in _shipped():
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path if _inside(p)])
            if spec is None:
                raise ModuleNotFoundError(
                    f"No module named {name!r} (sim: {name!r} is shipped with the job under {shown} but "
                    "is not on the job's import path there; the copy installed on the host is hidden "
                    "because the SageMaker container would not have it)", name=name)
            return spec

    sys.meta_path.insert(0, ShippedCodeFinder)


def _run_next_sitecustomize():
    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    for entry in sys.path:
        if not entry or os.path.realpath(entry) == here:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            import importlib.util

            spec = importlib.util.spec_from_file_location("_local_runs_chained_sitecustomize", candidate)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


_install_shipped_code_finder()
_run_next_sitecustomize()
