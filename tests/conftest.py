"""Shared fixtures: paths, the real encoder (loaded once), and small model dirs built from fixtures."""
from __future__ import annotations

import os
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
def fixture_search(fixture_model_dir):
    from knn.model_dir import load_model_dir

    return load_model_dir(fixture_model_dir)


def require_toys_10k():
    if not TOYS_10K.is_file():
        pytest.skip(f"{TOYS_10K} is not here (it lives in ../shared beside the checkout)")
    return TOYS_10K


@pytest.fixture(scope="session")
def toys_model_dir(tmp_path_factory):
    """One graph model of all of toys-10k, built once per test session (about 2 minutes)."""
    from knn.build import build_model_dir

    directory = tmp_path_factory.mktemp("toys-model")
    figures = build_model_dir(require_toys_10k(), directory, index_kind="graph", threads=2)
    assert figures["index_kind"] == "graph" and figures["sentences"] > 20_000 and figures["headlines"] > 1000
    return directory


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """A sim backend (own state dir, S3 and gateway) shared by the tests of one module."""
    from local_runs.backends import open_backend
    from local_runs.config import load_settings

    settings = load_settings(cli={"backend": "sim", "state_dir": str(tmp_path_factory.mktemp("state"))}, environ={})
    with open_backend(settings) as opened:
        yield opened
