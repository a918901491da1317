"""knn's numba functions share one cache folder wherever knn runs from (knn.numba_cache.share_knn_cache).

Each process is fresh, with knn copied to a folder of its own, as each SageMaker-style job and endpoint
runs knn from a new code dir.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WALK = r"""
import json, sys
import knn
assert knn.__file__.startswith(sys.argv[1]), knn.__file__
from knn import float16_graph
float16_graph.compile_for_read_only_rows("int8")
stats = float16_graph._f16_walk.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                  "cache_path": stats.cache_path}))
"""


def _walk_in_a_copy_of_knn(folder: Path, cache: Path) -> dict:
    shutil.copytree(ROOT / "knn", folder / "knn", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_") and k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", WALK, str(folder)], capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": str(folder), "NUMBA_CACHE_DIR": str(cache)}, cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_copy_of_knn_in_another_folder_reads_what_the_first_compiled(tmp_path):
    cache = tmp_path / "numba-cache"
    first = _walk_in_a_copy_of_knn(tmp_path / "job-1", cache)
    second = _walk_in_a_copy_of_knn(tmp_path / "job-2", cache)
    assert first["misses"] >= 1 and first["hits"] == 0  # an empty cache: compiled
    assert second["misses"] == 0 and second["hits"] >= 1  # another folder, same source: read from the cache
    assert first["cache_path"] == second["cache_path"] == str(cache / "knn")


def test_functions_outside_knn_keep_numbas_own_folders(tmp_path):
    module = tmp_path / "elsewhere.py"
    module.write_text("from knn.numba_cache import share_knn_cache\nshare_knn_cache()\nimport numba\n\n\n"
                      "@numba.njit(cache=True)\ndef plus_one(x):\n    return x + 1\n\n\n"
                      "plus_one(1)\nprint(plus_one.stats.cache_path)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    done = subprocess.run([sys.executable, str(module)], capture_output=True, text=True, timeout=300,
                          env={**env, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.parent == tmp_path / "numba-cache" and path.name != "knn"
