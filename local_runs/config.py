"""Settings of a run, above all the backend flag: `sim` (default), `docker` or `sagemaker`.

Where each setting comes from, highest precedence first:
1. the command line (`--backend`, ...),
2. environment variables (`LOCAL_RUNS_BACKEND`, `LOCAL_RUNS_ROLE`, `LOCAL_RUNS_BUCKET`, ...),
3. the config file (`local_runs.toml` in the working directory, or the file named by `--config` /
   `LOCAL_RUNS_CONFIG`),
4. the defaults below.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

BACKENDS = ("sim", "docker", "sagemaker")
DEFAULT_CONFIG_FILE = "local_runs.toml"
ENV_PREFIX = "LOCAL_RUNS_"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message says which and how to set it."""


@dataclass(frozen=True)
class Settings:
    backend: str = "sim"
    region: str = "us-east-1"
    role: str = ""  # IAM role ARN (sagemaker backend); sim/docker use a dummy
    bucket: str = ""  # S3 bucket (sagemaker backend); sim/docker use a local one
    instance_type: str = ""  # empty: "local" for sim/docker, ml.m4.xlarge for sagemaker
    framework_version: str = "2.5"
    py_version: str = "py311"
    state_dir: str = ".local_runs"  # endpoint registry and S3 daemon state (sim)
    docker_s3_url: str = "http://127.0.0.1:4566"  # the compose file's S3 (docker backend)
    dry_run: bool = False
    sources: dict = field(default_factory=dict, compare=False)  # setting -> where it came from

    @property
    def resolved_instance_type(self) -> str:
        if self.instance_type:
            return self.instance_type
        return "ml.m4.xlarge" if self.backend == "sagemaker" else "local"


_NAMES = [f.name for f in fields(Settings) if f.name != "sources"]


def _coerce(name: str, value, origin: str):
    if name == "dry_run":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{origin}: dry_run must be true or false, got {value!r}")
    if not isinstance(value, str):
        raise ConfigError(f"{origin}: {name} must be a string, got {value!r}")
    return value.strip()


def load_settings(cli: dict | None = None, environ: dict | None = None, config_path: str | Path | None = None) -> Settings:
    """Merge defaults, the config file, the environment and the command line; validate."""
    environ = os.environ if environ is None else environ
    values: dict = {}
    sources = {name: "default" for name in _NAMES}

    explicit = config_path or environ.get(ENV_PREFIX + "CONFIG")
    path = Path(explicit) if explicit else Path(DEFAULT_CONFIG_FILE)
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        flat = {**{k: v for k, v in data.items() if not isinstance(v, dict)},
                **{k: v for section in data.values() if isinstance(section, dict) for k, v in section.items()}}
        for key, value in flat.items():
            if key not in _NAMES:
                raise ConfigError(f"{path}: unknown setting {key!r}; known: {', '.join(_NAMES)}")
            values[key] = _coerce(key, value, str(path))
            sources[key] = str(path)
    elif explicit:
        raise ConfigError(f"config file {path} does not exist")

    for name in _NAMES:
        env_name = ENV_PREFIX + name.upper()
        if environ.get(env_name) not in (None, ""):
            values[name] = _coerce(name, environ[env_name], env_name)
            sources[name] = env_name

    for name, value in (cli or {}).items():
        if value is not None:
            values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
            sources[name] = "command line"

    settings = replace(Settings(), **values, sources=sources)
    if settings.backend not in BACKENDS:
        raise ConfigError(
            f"backend {settings.backend!r} (from {sources['backend']}) is not one of {', '.join(BACKENDS)}"
        )
    return settings
