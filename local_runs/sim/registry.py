"""The on-disk endpoint registry: one JSON record per endpoint, shared by processes.

Layout: ``<state_dir>/endpoints/<name>.json`` (the record) and ``<name>.log`` (the endpoint's
output). The state dir is ``$LOCAL_RUNS_STATE_DIR`` or ``./.local_runs``. A record holds
``name, status (Creating|InService|Failed), pid, create_time, port, host, url, model_dir,
config_name, variant_name, owner_pid, owner_create_time, detached, log_path, cleanup_dirs,
failure_reason, created``, and from the server's supervisor: ``workers`` (configured),
``workers_serving`` (loaded and serving now), ``worker_pids``, ``restarts`` (workers replaced
since the endpoint started: died or hung), ``last_restart`` (``{time, pid, reason}``) and
``model_timeout`` (seconds a request may run before its worker is replaced).

Writers: the deploying process claims a name (exclusive create, status Creating); the
endpoint server fills in pid/port and status; whoever stops the endpoint removes the record.
Readers treat a record whose process is gone as stale (``live_record`` returns None).
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from local_runs import daemon

STATE_DIR_ENV = "LOCAL_RUNS_STATE_DIR"
ENDPOINT_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
CREATING, IN_SERVICE, FAILED = "Creating", "InService", "Failed"


def restarts(record: dict[str, Any] | None) -> int:
    """How many workers of the endpoint were replaced (died or hung) since it started."""
    return int((record or {}).get("restarts") or 0)


class EndpointExistsError(RuntimeError):
    """A live endpoint with this name is already registered."""


def default_state_dir() -> Path:
    """``$LOCAL_RUNS_STATE_DIR`` or ``./.local_runs``, as an absolute path."""
    return Path(os.environ.get(STATE_DIR_ENV) or ".local_runs").resolve()


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid SageMaker endpoint name, else raise ValueError."""
    if not isinstance(name, str) or not ENDPOINT_NAME_RE.match(name):
        raise ValueError(
            f"invalid endpoint name {name!r}: 1-63 characters, letters, digits and '-' "
            "(not at either end)"
        )
    return name


def endpoints_dir(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / "endpoints"


def record_path(state_dir: str | os.PathLike, name: str) -> Path:
    return endpoints_dir(state_dir) / f"{validate_name(name)}.json"


def log_path(state_dir: str | os.PathLike, name: str) -> Path:
    return endpoints_dir(state_dir) / f"{validate_name(name)}.log"


def read(state_dir: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """The record as written (possibly stale), or None."""
    return daemon.read_json(record_path(state_dir, name))


def write(state_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    daemon.write_json_atomic(record_path(state_dir, record["name"]), record)


def update(state_dir: str | os.PathLike, name: str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the record (creating it if needed) and write it back."""
    record = read(state_dir, name) or {"name": name}
    record.update(fields)
    write(state_dir, record)
    return record


def is_live(record: dict[str, Any] | None) -> bool:
    """True when the record's server process (or, before it exists, its owner) is alive."""
    if not record:
        return False
    if record.get("pid"):
        return daemon.is_same_process(record["pid"], record.get("create_time"))
    return daemon.is_same_process(record.get("owner_pid"), record.get("owner_create_time"))


def gone_reason(record: dict[str, Any]) -> str:
    """Why an endpoint whose serving process is gone is Failed (its own reason, if it wrote one)."""
    if record.get("failure_reason"):
        return record["failure_reason"]
    who = f"its serving process (pid {record['pid']})" if record.get("pid") else "the process deploying it"
    return (f"{who} is no longer running (killed or crashed); see the endpoint log "
            f"{record.get('log_path') or '(none)'}; delete the endpoint and deploy it again")


def live_record(state_dir: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """The record if its process is alive, else None."""
    try:
        record = read(state_dir, name)
    except ValueError:
        return None
    return record if is_live(record) else None


def list_records(state_dir: str | os.PathLike, include_stale: bool = False) -> list[dict[str, Any]]:
    """All records (only live ones unless ``include_stale``), sorted by name."""
    out = []
    directory = endpoints_dir(state_dir)
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.json")):
        record = daemon.read_json(path)
        if record and (include_stale or is_live(record)):
            out.append(record)
    return out


def claim(state_dir: str | os.PathLike, name: str, **fields: Any) -> dict[str, Any]:
    """Register ``name`` as Creating for this process; EndpointExistsError if a live one exists.

    Exclusive file creation makes two concurrent deploys of one name fail cleanly.
    """
    path = record_path(state_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "status": CREATING,
        "pid": None,
        "create_time": None,
        "owner_pid": os.getpid(),
        "owner_create_time": daemon.process_create_time(os.getpid()),
        "created": time.time(),
        "log_path": str(log_path(state_dir, name)),
        **fields,
    }
    for _attempt in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            existing = daemon.read_json(path)
            if is_live(existing):
                raise EndpointExistsError(
                    f"Cannot create already existing endpoint {name!r} "
                    f"(pid {existing.get('pid') or existing.get('owner_pid')})"
                ) from None
            remove(state_dir, name)
            continue
        os.close(fd)
        write(state_dir, record)
        return record
    raise EndpointExistsError(f"could not claim endpoint name {name!r}")


def remove(state_dir: str | os.PathLike, name: str, pid: int | None = None) -> None:
    """Delete the record (only if it still belongs to ``pid`` when given)."""
    path = record_path(state_dir, name)
    if pid is not None:
        record = daemon.read_json(path)
        if record and record.get("pid") not in (None, pid):
            return
    try:
        path.unlink()
    except FileNotFoundError:
        pass
