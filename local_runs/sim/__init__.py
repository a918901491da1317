"""The Docker-free SageMaker local mode ("sim").

``SimSession`` (``session.py``) is the entry point; the other modules are its parts:
``container`` (the SDK container with host processes), ``entities`` (job/endpoint
states), ``train_framework`` (runs inside the training toolkit), ``endpoint_server`` (the
serving process), ``endpoints`` + ``registry`` (endpoint lifecycle and on-disk registry),
``gateway`` + ``runtime`` (InvokeEndpoint by name), ``procs`` (process groups, cleanup),
``requirements`` (requirements.txt check), ``netguard`` (loopback-only), ``sdk_config``
(telemetry opt-out). Importing this package is cheap; ``SimSession`` loads the SDK lazily.
"""
from __future__ import annotations

__all__ = ["SimSession"]


def __getattr__(name: str):
    if name == "SimSession":
        from local_runs.sim.session import SimSession

        return SimSession
    raise AttributeError(name)
