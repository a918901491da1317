"""Files the launcher ships and finds the same way from a checkout, an editable install or a wheel.

`importlib.resources` locates them inside the installed packages: the user's script code
(`entry/`, with its `requirements.txt`, and `knn/`, uploaded as `source_dir` and `dependencies`),
and `local_runs/package_data/`: the fixture reviews the main job fits by default and the compose
file of the docker backend. In the repository those two are links to `fixtures/reviews.csv` and
`docker-compose.yml`; a built sdist or wheel holds the files themselves.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def _package_dir(package: str) -> Path:
    return Path(str(resources.files(package)))


def entry_source_dir() -> Path:
    """The SageMaker `source_dir`: `entry_point.py` and `requirements.txt`."""
    return _package_dir("entry")


def knn_dir() -> Path:
    """The search library, shipped with the job as a dependency."""
    return _package_dir("knn")


def _data(name: str) -> Path:
    return _package_dir("local_runs") / "package_data" / name


def fixture_reviews() -> Path:
    """111 invented toy reviews (fixtures/reviews.csv): what `local-runs cycle` fits by default."""
    return _data("reviews.csv")


def compose_file() -> Path:
    """docker-compose.yml: the S3 the docker backend's containers use."""
    return _data("docker-compose.yml")
