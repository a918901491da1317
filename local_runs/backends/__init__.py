"""The three places the same user script runs, one module each, chosen by the backend flag.

| flag        | class              | module                                               |
|-------------|--------------------|------------------------------------------------------|
| `sim`       | `SimBackend`       | `sim.py`: SageMaker local mode without Docker        |
| `docker`    | `DockerBackend`    | `docker.py`: the SDK's own local mode                |
| `sagemaker` | `SageMakerBackend` | `sagemaker.py`: the real service                     |
|             | `DryRunBackend`    | `dry_run.py` (+ `dry_run_state.py`): sagemaker, printed, not sent |

`base.py` says what every backend answers. Backends are imported only when chosen: each pulls in
its own part of the SDK.
"""
from __future__ import annotations

from importlib import import_module

from local_runs.backends.base import DATA_PREFIX, DUMMY_ROLE, LOCAL_BUCKET, Backend, state_dir
from local_runs.backends.sagemaker import PLACEHOLDER_BUCKET, PLACEHOLDER_ROLE, delete_endpoint_and_resources
from local_runs.config import ConfigError, Settings

__all__ = ["DATA_PREFIX", "DUMMY_ROLE", "LOCAL_BUCKET", "PLACEHOLDER_BUCKET", "PLACEHOLDER_ROLE", "Backend",
           "backend_class", "delete_endpoint_and_resources", "open_backend", "state_dir"]

_CLASSES = {
    "sim": ("local_runs.backends.sim", "SimBackend"),
    "docker": ("local_runs.backends.docker", "DockerBackend"),
    "sagemaker": ("local_runs.backends.sagemaker", "SageMakerBackend"),
    "sagemaker-dry-run": ("local_runs.backends.dry_run", "DryRunBackend"),
}


def backend_class(settings: Settings) -> type[Backend]:
    """The Backend subclass the settings name (the sagemaker flag with dry_run: the dry run)."""
    if settings.dry_run and settings.backend != "sagemaker":
        raise ConfigError(f"dry_run (from {settings.sources.get('dry_run', '?')}) applies to the sagemaker backend only; "
                          f"{settings.backend} sends nothing to AWS anyway")
    key = "sagemaker-dry-run" if settings.dry_run else settings.backend
    module, name = _CLASSES[key]
    return getattr(import_module(module), name)


def open_backend(settings: Settings, persistent: bool = False) -> Backend:
    """Open the backend named by `settings.backend`; `persistent` keeps sim services for later commands."""
    return backend_class(settings).open(settings, persistent)
