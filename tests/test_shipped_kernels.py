"""The graph walk's kernels compiled by the fit and shipped in the model dir (knn.shipped_kernels).

Each serving process here is a fresh Python with an empty numba cache and its own copy of knn in a new
folder, as a sim endpoint's worker or a new SageMaker instance is. It reports whether numba compiled
the walk or read it from the cache, and its answers, which must equal this process's.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from knn.errors import ModelDirError

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ["a toy for the bath that floats", "my kids loved it", "it broke after a week"]

SERVE = r"""
import json, sys
import knn
assert knn.__file__.startswith(sys.argv[2]), knn.__file__
from knn import float16_graph
from knn.model_dir import load_model_dir
search = load_model_dir(sys.argv[1])
answers = [[[r["product_id"], r["product_search_score"]] for r in search.search(q, 5)] for q in json.loads(sys.argv[3])]
stats = float16_graph._f16_walk.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                  "answers": answers}))
"""


def _serve(model_dir: Path, tmp_path: Path, env: dict | None = None, edit_source: bool = False) -> dict:
    """Load the model and answer QUERIES in a fresh process with an empty numba cache and knn copied to a
    new folder (its source edited by a comment when `edit_source`)."""
    code = tmp_path / "code"
    shutil.copytree(ROOT / "knn", code / "knn", ignore=shutil.ignore_patterns("__pycache__"))
    if edit_source:
        with open(code / "knn" / "float16_graph.py", "a") as source:
            source.write("# another version of this file\n")
    cache = tmp_path / "numba-cache"
    done = subprocess.run(
        [sys.executable, "-c", SERVE, str(model_dir), str(code), json.dumps(QUERIES)],
        env={**_clean_env(), "PYTHONPATH": str(code), "NUMBA_CACHE_DIR": str(cache), **(env or {})},
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "cache": cache}


def _clean_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_") and k != "PYTHONPATH"}


def _answers_here(model_dir: Path) -> list:
    from knn.model_dir import load_model_dir

    search = load_model_dir(model_dir)
    return [[[r["product_id"], r["product_search_score"]] for r in search.search(q, 5)] for q in QUERIES]


def _assert_same_answers(answers: list, expected: list) -> None:
    for got, want in zip(answers, expected, strict=True):
        assert [p for p, _ in got] == [p for p, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4)


def test_a_graph_fit_ships_the_walks_kernels_and_an_exact_one_ships_none(graph_model_dir, fixture_model_dir):
    files = json.loads((graph_model_dir / "manifest.json").read_text())["files"]
    for kernel in ("_f16_walk", "_f16_dots"):
        shipped = [n for n in files if n.startswith(f"kernels/float16_graph.{kernel}-")]
        assert any(n.endswith(".nbi") for n in shipped) and any(n.endswith(".nbc") for n in shipped), shipped
    exact = json.loads((fixture_model_dir / "manifest.json").read_text())
    assert exact["index_kind"] == "exact" and not any(n.startswith("kernels/") for n in exact["files"])


def test_a_fresh_serving_process_reads_the_shipped_kernels_and_compiles_nothing(graph_model_dir, tmp_path):
    served = _serve(graph_model_dir, tmp_path)
    assert served["misses"] == 0 and served["hits"] >= 1
    installed = sorted(p.name for p in served["cache"].rglob("float16_graph.*"))
    shipped = sorted(Path(n).name for n in json.loads((graph_model_dir / "manifest.json").read_text())["files"]
                     if n.startswith("kernels/"))
    assert installed == shipped
    _assert_same_answers(served["answers"], _answers_here(graph_model_dir))


def test_on_another_cpu_the_shipped_kernels_do_not_apply_and_the_walk_compiles_to_the_same_answers(
        graph_model_dir, tmp_path):
    served = _serve(graph_model_dir, tmp_path, env={"NUMBA_CPU_NAME": "generic"})
    assert served["misses"] >= 1 and served["hits"] == 0
    _assert_same_answers(served["answers"], _answers_here(graph_model_dir))


def test_with_another_version_of_the_walks_source_the_kernels_compile_again(graph_model_dir, tmp_path):
    served = _serve(graph_model_dir, tmp_path, edit_source=True)
    assert served["misses"] >= 1 and served["hits"] == 0
    _assert_same_answers(served["answers"], _answers_here(graph_model_dir))


def test_a_tampered_kernel_is_not_installed_and_the_load_names_it(graph_model_dir, tmp_path):
    from knn import shipped_kernels
    from knn.model_dir import load_model_dir

    copy = tmp_path / "model"
    shutil.copytree(graph_model_dir, copy)
    files = json.loads((copy / "manifest.json").read_text())["files"]
    entry = next(n for n in files if n.startswith("kernels/") and n.endswith(".nbc"))
    data = bytearray((copy / entry).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / entry).write_bytes(bytes(data))
    assert entry.split("/")[1] not in shipped_kernels.install(copy, files)
    with pytest.raises(ModelDirError, match=entry.replace(".", r"\.")):
        load_model_dir(copy)
