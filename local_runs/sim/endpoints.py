"""Endpoint processes across processes: launch, wait until in service, find, stop.

``launch`` starts ``endpoint_server`` for a claimed registry name and waits until its
record says InService (or Failed / the process exits / the startup timeout passes).
``stop_endpoint`` works from any process: it reads the record, stops the server's process
group (SIGTERM, then SIGKILL), removes the record and deletes the endpoint's temporary
directories (only ones inside the record's ``work_root``). ``list_endpoints`` shows an
endpoint whose process died as Failed until it is deleted.

``LOCAL_RUNS_SIM_STARTUP_TIMEOUT`` (seconds, default 600 like the toolkit) bounds the wait.
"""
from __future__ import annotations

import http.client
import os
import shutil
import time
from pathlib import Path
from typing import Any

from local_runs import daemon
from local_runs.sim import procs, registry

STARTUP_TIMEOUT_ENV = "LOCAL_RUNS_SIM_STARTUP_TIMEOUT"


class EndpointStartFailed(RuntimeError):
    """The endpoint process did not come up; ``str()`` is the failure reason."""


def launch(
    state_dir: str | os.PathLike, name: str, argv: list[str], env: dict[str, str], cwd: str | os.PathLike,
    *, detach: bool, echo: bool = True, timeout: float | None = None,
):
    """Start the server for the already claimed ``name``; return (Popen, pump, record) once InService.

    Raises EndpointStartFailed (the process is stopped and the record removed).
    """
    timeout = float(timeout or os.environ.get(STARTUP_TIMEOUT_ENV) or 600)
    log_path = registry.log_path(state_dir, name)
    proc, pump = procs.spawn(argv, env, cwd, echo=echo and not detach, log_path=log_path, attached=not detach)
    deadline = time.monotonic() + timeout
    reason = None
    try:
        while True:
            record = registry.read(state_dir, name) or {}
            status = record.get("status")
            if status == registry.IN_SERVICE and record.get("pid") == proc.pid and _ping(record):
                return proc, pump, record
            if status == registry.FAILED and record.get("pid") == proc.pid:
                reason = record.get("failure_reason") or "the endpoint failed"
                break
            if proc.poll() is not None:
                reason = f"the endpoint process exited with code {proc.returncode}"
                break
            if time.monotonic() > deadline:
                reason = f"the endpoint did not become healthy within {timeout:g} s"
                break
            time.sleep(0.05)
    except BaseException:  # Ctrl-C while waiting: a detached server would otherwise run on, nameless
        procs.stop(proc.pid, timeout=5)
        raise
    procs.stop(proc.pid, timeout=5)
    if pump is not None:
        pump.join(timeout=2)
    tail = daemon.tail(log_path, 3000)
    cleanup_dirs(registry.read(state_dir, name) or {})
    registry.remove(state_dir, name)
    raise EndpointStartFailed(f"{reason}\n--- endpoint log tail ({log_path}) ---\n{tail}")


def _ping(record: dict[str, Any]) -> bool:
    conn = http.client.HTTPConnection(record.get("host", daemon.LOOPBACK), int(record["port"]), timeout=2)
    try:
        conn.request("GET", "/ping")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):  # refused, reset, or cut mid-answer: not healthy
        return False
    finally:
        conn.close()


def cleanup_dirs(record: dict[str, Any]) -> None:
    """Delete the record's ``cleanup_dirs`` that lie inside its ``work_root``."""
    root = record.get("work_root")
    if not root:
        return
    root_path = Path(root).resolve()
    if root_path == Path(root_path.anchor) or root_path == Path.home():
        return
    for directory in record.get("cleanup_dirs") or []:
        path = Path(directory).resolve()
        if path != root_path and root_path in path.parents:
            shutil.rmtree(path, ignore_errors=True)


def stop_endpoint(state_dir: str | os.PathLike, name: str, timeout: float = 10.0) -> bool:
    """Stop endpoint ``name`` (from any process). True when a live endpoint was stopped."""
    record = registry.read(state_dir, name)
    if record is None:
        return False
    live = registry.is_live(record)
    if record.get("pid"):
        procs.stop(record["pid"], record.get("create_time"), timeout=timeout)
    cleanup_dirs(record)
    registry.remove(state_dir, name)
    return live


def forget_stale(state_dir: str | os.PathLike, name: str) -> bool:
    """Drop the record of ``name`` if its process is gone, and delete its temp dirs; True if it did."""
    record = registry.read(state_dir, name)
    if record is None or registry.is_live(record):
        return False
    cleanup_dirs(record)
    registry.remove(state_dir, name)
    return True


def list_endpoints(state_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of the endpoints under ``state_dir``, by name.

    An endpoint whose serving process is gone (killed, crashed, all workers exited) stays listed
    with status Failed and a ``failure_reason`` until it is deleted, like a Failed SageMaker endpoint.
    """
    out = []
    for record in registry.list_records(state_dir, include_stale=True):
        if not registry.is_live(record):
            record = {**record, "status": registry.FAILED, "failure_reason": registry.gone_reason(record)}
        out.append(record)
    return out
