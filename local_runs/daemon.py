"""Port files for long-lived local helper processes (S3 server, runtime gateway).

A daemon writes one small JSON "port file" once it listens: ``{"pid", "create_time",
"host", "port", "url", ...}``. Other processes find the daemon by reading that file and
checking that the pid is still the same process (pid + start time) and that the port
accepts connections. Writes are atomic (temp file + ``os.replace``) and the file is
mode 0600. Nothing secret is ever written to it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

LOOPBACK = "127.0.0.1"


def process_create_time(pid: int) -> float | None:
    """Start time of ``pid`` (psutil), or None when no such process exists."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def is_same_process(pid: int | None, create_time: float | None) -> bool:
    """True when ``pid`` is alive and (if given) started at ``create_time``.

    Comparing the start time guards against a recycled pid.
    """
    if not pid:
        return False
    actual = process_create_time(int(pid))
    if actual is None:
        return False
    try:
        if psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.Error:
        return False
    return create_time is None or abs(actual - float(create_time)) < 0.01


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically, mode 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when missing or unreadable."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_port_file(path: str | os.PathLike, host: str, port: int, **extra: Any) -> dict[str, Any]:
    """Announce this process as a daemon listening on host:port."""
    info = {
        "pid": os.getpid(),
        "create_time": process_create_time(os.getpid()),
        "host": host,
        "port": int(port),
        "url": f"http://{host}:{int(port)}",
        **extra,
    }
    write_json_atomic(path, info)
    return info


def remove_port_file(path: str | os.PathLike, pid: int | None = None) -> None:
    """Remove the port file, but only if it still names ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    info = read_json(path)
    if info is not None and info.get("pid") == pid:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def discover(path: str | os.PathLike) -> dict[str, Any] | None:
    """The live daemon's info from its port file, or None (missing, stale or not listening)."""
    info = read_json(path)
    if not info:
        return None
    if not is_same_process(info.get("pid"), info.get("create_time")):
        return None
    if not port_accepts(info.get("host", LOOPBACK), info.get("port", 0)):
        return None
    return info


@contextlib.contextmanager
def locked(path: str | os.PathLike):
    """An exclusive lock on ``<path>.lock`` (so two processes do not start two daemons)."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure(port_file: str | os.PathLike, argv: list[str], log_path: str | os.PathLike,
           timeout: float = 60.0) -> dict[str, Any]:
    """The live daemon behind ``port_file``, or a new detached one started with ``argv``."""
    with locked(port_file):
        info = discover(port_file)
        if info is not None:
            return info
        return spawn_detached(argv, port_file, log_path, timeout=timeout)


def spawn_detached(
    argv: list[str], port_file: str | os.PathLike, log_path: str | os.PathLike,
    env: dict[str, str] | None = None, timeout: float = 60.0,
) -> dict[str, Any]:
    """Start ``argv`` in its own session (it outlives us) and wait for its port file.

    Output goes to ``log_path``. Raises RuntimeError with the log tail if the daemon
    exits or does not announce itself within ``timeout`` seconds.
    """
    port_file = Path(port_file)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True, close_fds=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_json(port_file)
        if info and info.get("pid") == proc.pid:
            return info
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        stop_pid(proc.pid)
    raise RuntimeError(
        f"{argv[2] if len(argv) > 2 else argv} did not start (exit code {proc.poll()}); "
        f"log {log_path}:\n{tail(log_path)}"
    )


def stop_pid(pid: int, create_time: float | None = None, timeout: float = 10.0) -> bool:
    """SIGTERM the process group led by ``pid`` (or the process), then SIGKILL after ``timeout``.

    Returns True when something was stopped.
    """
    if not is_same_process(pid, create_time):
        return False
    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return False
    _signal_group_or_pid(pid, signal.SIGTERM)
    alive = _wait_gone(procs, timeout)
    if alive:
        _signal_group_or_pid(pid, signal.SIGKILL)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        _wait_gone(alive, 5)
    return True


def _wait_gone(procs: list, timeout: float) -> list:
    """Wait until every process has exited; a zombie counts as exited (and is reaped if it is ours).

    psutil.wait_procs would wait the whole timeout on a zombie whose parent has not reaped it yet,
    e.g. a daemon this very process started.
    """
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while alive:
        still = []
        for p in alive:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    still.append(p)
                    continue
                try:
                    os.waitpid(p.pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            except psutil.NoSuchProcess:
                pass
        alive = still
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return alive


def _signal_group_or_pid(pid: int, sig: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
            return
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: str | os.PathLike, limit: int = 4000) -> str:
    """The last ``limit`` characters of a text file ('' when missing)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def wait_for_stop_signal() -> int:
    """Block until SIGTERM, SIGINT or SIGHUP arrives; return the signal number."""
    received: list[int] = []

    def _handler(signum, _frame):
        received.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _handler)
    while not received:
        time.sleep(0.1)
    return received[0]


def python() -> str:
    """The interpreter that runs this process (daemons use the same one)."""
    return sys.executable


def stop_daemon(port_file: str | os.PathLike, timeout: float = 10.0) -> bool:
    """Stop the daemon announced in ``port_file`` and remove the file; True when one was running."""
    info = read_json(port_file)
    if not info:
        return False
    stopped = stop_pid(info.get("pid"), info.get("create_time"), timeout=timeout)
    remove_port_file(port_file, info.get("pid"))
    return stopped
