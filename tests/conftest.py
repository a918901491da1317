"""Shared fixtures: paths, the real encoder (loaded once), and small model dirs built from fixtures."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# bench/ modules shared with tests (the load client) import as top-level modules, as the benchmarks do.
if str(ROOT / "bench") not in sys.path:
    sys.path.append(str(ROOT / "bench"))
FIXTURES = ROOT / "fixtures"
TOYS_10K = ROOT.parent / "shared" / "data" / "toys-10k" / "reviews.csv"

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")


@pytest.fixture(scope="session")
def encoder():
    from knn.encoder_export import load_bundled_encoder

    return load_bundled_encoder(threads=1)


@pytest.fixture(scope="session")
def fixture_model_dir(tmp_path_factory):
    """A model dir built from fixtures/reviews.csv with exact search (what small corpora use)."""
    from knn.build import build_model_dir

    directory = tmp_path_factory.mktemp("fixture-model")
    build_model_dir(FIXTURES / "reviews.csv", directory, index_kind="auto")
    return directory


@pytest.fixture(scope="session")
def graph_model_dir(tmp_path_factory):
    """A graph model of the fixture reviews (what big catalogues get: int8 codes beside the float16 rows,
    stored texts, the walk's compiled kernels)."""
    from knn.build import build_model_dir

    directory = tmp_path_factory.mktemp("graph-model")
    build_model_dir(FIXTURES / "reviews.csv", directory, index_kind="graph")
    return directory


@pytest.fixture(scope="session")
def fixture_search(fixture_model_dir):
    from knn.model_dir import load_model_dir

    return load_model_dir(fixture_model_dir)


def require_toys_10k():
    if not TOYS_10K.is_file():
        pytest.skip(f"{TOYS_10K} is not here (it lives in ../shared beside the checkout)")
    return TOYS_10K


def _build_toys_model(directory: Path) -> None:
    from knn.build import build_model_dir

    figures = build_model_dir(require_toys_10k(), directory, index_kind="graph", threads=2)
    assert figures["index_kind"] == "graph" and figures["sentences"] > 20_000 and figures["headlines"] > 1000


@pytest.fixture(scope="session")
def toys_model_dir(tmp_path_factory):
    """One graph model of all of toys-10k, built once per test run (about 2 minutes).

    Under pytest-xdist (the integration command runs two workers) the first worker to ask builds it
    in the run's shared temporary folder while holding a file lock; the others wait for it and reuse it.
    REVIEW_SEARCH_TOYS_MODEL=DIR uses a model dir built beforehand by the current code instead (a
    developer's shortcut: `build_model_dir(toys-10k, DIR, index_kind="graph")`; CI always builds).
    """
    prebuilt = os.environ.get("REVIEW_SEARCH_TOYS_MODEL")
    if prebuilt:
        require_toys_10k()
        if not (Path(prebuilt) / "manifest.json").is_file():
            pytest.fail(f"REVIEW_SEARCH_TOYS_MODEL={prebuilt} is not a model dir; build one or unset it")
        return Path(prebuilt)
    if "PYTEST_XDIST_WORKER" not in os.environ:
        directory = tmp_path_factory.mktemp("toys-model")
        _build_toys_model(directory)
        return directory
    from filelock import FileLock

    require_toys_10k()
    shared = tmp_path_factory.getbasetemp().parent
    directory, built = shared / "toys-model", shared / "toys-model.built"
    with FileLock(str(shared / "toys-model.lock")):
        if not built.is_file():  # not built yet, or a failed build left part of it
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            _build_toys_model(directory)
            built.touch()
    return directory


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """A sim backend (own state dir, S3 and gateway) shared by the tests of one module."""
    from local_runs.backends import open_backend
    from local_runs.config import load_settings

    settings = load_settings(cli={"backend": "sim", "state_dir": str(tmp_path_factory.mktemp("state"))}, environ={})
    with open_backend(settings) as opened:
        yield opened


# The modules whose tests take `toys_model_dir` as an argument (a unit test in test_architecture.py
# keeps this list true). test_reliability_load.py asks for it lazily and waits on the lock if need be.
TOYS_MODEL_MODULES = ("tests/test_evaluate.py", "tests/test_search_quality.py", "tests/test_toys_10k.py")


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


# The slowest integration modules (seconds on 2 workers, 2026-12-01), started next so that the run
# does not end on one of them alone. Only an order: a module missing here runs after them.
SLOW_MODULES = ("tests/test_reliability_faults.py", "tests/test_cycle_real.py", "tests/test_transform_sim.py",
                "tests/test_two_step_fit.py", "tests/test_bench_harness.py", "tests/test_reliability_endpoint.py",
                "tests/test_sim_cycle.py", "tests/test_reliability_load.py", "tests/test_ui_browser.py")


def _start_order(item) -> int:
    module = _module(item.nodeid)
    if module in TOYS_MODEL_MODULES:
        return 0
    return 1 + SLOW_MODULES.index(module) if module in SLOW_MODULES else 1 + len(SLOW_MODULES)


def pytest_collection_modifyitems(config, items):
    """The toys-10k model's users first, then the slowest modules (see `pytest_xdist_make_scheduler`)."""
    items.sort(key=_start_order)


def pytest_xdist_make_scheduler(config, log):
    """How pytest-xdist shares the tests out (`-n 2` with pyproject's `--dist loadscope
    --no-loadscope-reorder`): a module at a time, so each module fixture (a sim backend, a deployed
    endpoint) is set up once, and the toys-10k model's users together as one unit, first in line, so
    that the model's ~2-minute build runs beside the other worker's tests instead of making one
    worker wait for the other. (xdist's own `xdist_group` does not work with pytest 9: it renames a
    node id through an attribute pytest 9 no longer reads.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndTheToysModel(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = _module(nodeid)
            return "toys-10k model" if module in TOYS_MODEL_MODULES else module

    return ModulesAndTheToysModel(config, log)
