"""Quiet, offline SDK settings: no telemetry calls, no v2 deprecation banner.

* ``SAGEMAKER_SUPPRESS_V2_WARNING=1`` (set by ``quiet_sdk_environment``; it must be in
  ``os.environ`` before ``import sagemaker`` to silence the banner).
* Telemetry opt-out through an SDK defaults YAML (``SageMaker.PythonSDK.Modules.
  TelemetryOptOut: true``) named by ``SAGEMAKER_USER_CONFIG_OVERRIDE`` -- written to the
  state dir unless the user already points that variable at their own file -- and, in any
  case, forced into the session's in-memory ``sagemaker_config``.

Two patches make the SDK cheaper without changing what it does: config validation memoized
(``memoize_config_validation``, every backend that runs the SDK locally), and, in sim only, the
archives ``sagemaker.utils`` writes stored uncompressed (``store_sdk_archives_uncompressed``).
"""
from __future__ import annotations

import os
from pathlib import Path

SUPPRESS_ENV = "SAGEMAKER_SUPPRESS_V2_WARNING"
USER_CONFIG_ENV = "SAGEMAKER_USER_CONFIG_OVERRIDE"
DEFAULTS_YAML = """\
# Written by local_runs.sim: SageMaker SDK defaults for offline runs.
SchemaVersion: '1.0'
SageMaker:
  PythonSDK:
    Modules:
      TelemetryOptOut: true
"""


def quiet_sdk_environment(state_dir: str | os.PathLike | None = None) -> None:
    """Set the variables above (never overriding values the user set)."""
    os.environ.setdefault(SUPPRESS_ENV, "1")
    current = os.environ.get(USER_CONFIG_ENV)
    ours_but_gone = (current is not None and Path(current).name == "sagemaker-defaults.yaml"
                     and not Path(current).exists())
    if state_dir is not None and (current is None or ours_but_gone):
        path = Path(state_dir) / "sagemaker-defaults.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != DEFAULTS_YAML:
            path.write_text(DEFAULTS_YAML)
        os.environ[USER_CONFIG_ENV] = str(path)


def with_telemetry_opt_out(config: dict | None) -> dict:
    """A copy of an SDK config dict with TelemetryOptOut forced on."""
    config = dict(config or {})
    config.setdefault("SchemaVersion", "1.0")
    sagemaker = dict(config.get("SageMaker") or {})
    python_sdk = dict(sagemaker.get("PythonSDK") or {})
    modules = dict(python_sdk.get("Modules") or {})
    modules["TelemetryOptOut"] = True
    python_sdk["Modules"] = modules
    sagemaker["PythonSDK"] = python_sdk
    config["SageMaker"] = sagemaker
    return config


def memoize_config_validation() -> None:
    """Validate each distinct SDK config once per process instead of on every config lookup.

    The SDK checks its whole config against a large JSON schema each time it reads one value
    (`sagemaker.utils.get_sagemaker_config_value`), and jsonschema re-checks the schema itself on
    every call: with any config present (the telemetry opt-out above is one) that was ~22 checks and
    ~3 s per `deploy()` on 2 cores. Same verdicts, same exceptions; a config that fails is re-checked."""
    import json

    import sagemaker.utils

    original = sagemaker.utils.validate_sagemaker_config
    if getattr(original, "_local_runs_memoized", False):
        return
    valid: set[str] = set()

    def validate_once(sagemaker_config: dict = None):
        try:
            key = json.dumps(sagemaker_config, sort_keys=True, default=repr)
        except (TypeError, ValueError):
            return original(sagemaker_config)
        if key not in valid:
            original(sagemaker_config)  # raises for an invalid config: nothing is remembered
            valid.add(key)

    validate_once._local_runs_memoized = True
    sagemaker.utils.validate_sagemaker_config = validate_once


SDK_ARCHIVE_LEVEL = 0  # gzip level of the archives sagemaker.utils writes, in sim (the SDK's own: 9)


def store_sdk_archives_uncompressed() -> None:
    """The gzip archives that ``sagemaker.utils`` writes (the deploy's ``repack_model``, code tarballs)
    are written at gzip level 0 instead of tarfile's default 9: the same members, in a gzip file that
    every reader takes.

    Every sim ``deploy()`` repacks the fitted model with the entry point (``repack_model``), and the SDK
    takes no level: level 9 over a model dir, which is almost all incompressible bytes (the encoder's
    float weights, float16 vectors, Parquet), took 8.0-8.9 s per deploy of the toys-10k model on 2 cores
    for 124 -> 108 MB; level 0 stores them as they are, as sim's own packing of the training job's
    artifacts does (``local_runs/sim/artifacts.py``). Only the module global ``tarfile`` of
    ``sagemaker.utils`` is replaced (by a copy of the module whose ``open`` passes the level for gzip
    writes), so nothing outside the SDK's utilities changes. Applied when a ``SimSession`` is made, for
    the rest of that process; the docker backend (the SDK's own local mode, as it ships) and real
    SageMaker never apply it."""
    import tarfile
    import types

    import sagemaker.utils

    if getattr(sagemaker.utils.tarfile, "_local_runs_level", None) == SDK_ARCHIVE_LEVEL:
        return

    def open_archive(name=None, mode="r", *args, **kwargs):
        if mode.startswith(("w:gz", "x:gz")):
            kwargs.setdefault("compresslevel", SDK_ARCHIVE_LEVEL)
        return tarfile.open(name, mode, *args, **kwargs)

    shim = types.ModuleType("tarfile")
    shim.__dict__.update({key: value for key, value in vars(tarfile).items() if not key.startswith("__")})
    shim.open = open_archive
    shim._local_runs_level = SDK_ARCHIVE_LEVEL
    sagemaker.utils.tarfile = shim
