"""Host processes that stand in for containers: clean environments, process groups, cleanup.

* ``child_env`` builds a container-like environment: the host's variables minus every
  ``AWS_*``, ``SM_*`` and ``SAGEMAKER_*`` one (so no real credentials, profile or endpoint
  leaks in), plus what the job needs (dummy credentials, local endpoints, ...).
* ``spawn`` starts a child in its own session (process group), so one signal stops the
  whole tree (toolkit, user script, workers); output is streamed to our stdout and/or a log.
* Attached children are stopped at interpreter exit (atexit, plus SIGTERM/SIGHUP turned
  into SystemExit when no other handler is installed). Children also watch their owner
  (``LOCAL_RUNS_OWNER_PID``) and stop themselves if it dies without cleaning up (SIGKILL).
"""
from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Callable

from local_runs import daemon

OWNER_PID_ENV = "LOCAL_RUNS_OWNER_PID"
OWNER_CREATE_TIME_ENV = "LOCAL_RUNS_OWNER_CREATE_TIME"
_SCRUBBED_PREFIXES = ("AWS_", "SM_", "SAGEMAKER_")
_INTERNAL = {OWNER_PID_ENV, OWNER_CREATE_TIME_ENV, "LOCAL_RUNS_SIM_CODE_ROOT"}



class Interrupted(KeyboardInterrupt, Exception):
    """Ctrl-C while sim ran a job: its processes are stopped.

    Also an ``Exception`` so that it gets through the SDK v2 telemetry wrapper around
    ``Estimator.fit``, which swallows a plain KeyboardInterrupt (its ``finally: return``).
    """


_attached: dict[int, float | None] = {}
_lock = threading.Lock()
_hooks_installed = False


def child_env(extra: dict[str, str], base: dict[str, str] | None = None) -> dict[str, str]:
    """A scrubbed copy of ``base`` (default os.environ) updated with ``extra``."""
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items()
           if not k.upper().startswith(_SCRUBBED_PREFIXES) and k not in _INTERNAL}
    env.update(
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in extra.items() if v is not None})
    return env


def owner_env() -> dict[str, str]:
    """Variables telling a child which process owns it (see ``watch_owner``)."""
    return {
        OWNER_PID_ENV: str(os.getpid()),
        OWNER_CREATE_TIME_ENV: repr(daemon.process_create_time(os.getpid())),
    }


class OutputPump(threading.Thread):
    """Copies a child's output line by line to a stream and/or a log file; keeps a tail."""

    def __init__(self, pipe: IO[bytes], echo: bool, log_file: IO[bytes] | None, tail_lines: int = 200):
        super().__init__(daemon=True, name="local-runs-output")
        self._pipe = pipe
        self._echo = echo
        self._log = log_file
        self.tail: deque[str] = deque(maxlen=tail_lines)

    def run(self) -> None:
        for raw in iter(self._pipe.readline, b""):
            line = raw.decode("utf-8", "replace")
            self.tail.append(line)
            if self._log is not None:
                try:
                    self._log.write(raw)
                    self._log.flush()
                except (OSError, ValueError):
                    pass
            if self._echo:
                try:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                except (OSError, ValueError):
                    pass
        for handle in (self._pipe, self._log):
            try:
                if handle is not None:
                    handle.close()
            except OSError:
                pass


def spawn(
    argv: list[str], env: dict[str, str], cwd: str | os.PathLike, *,
    echo: bool = True, log_path: str | os.PathLike | None = None, attached: bool = True,
) -> tuple[subprocess.Popen, OutputPump | None]:
    """Start ``argv`` in a new session. Attached: output piped (echo/log), stopped at exit.

    Detached: output goes straight to ``log_path`` and nothing stops it at exit.
    """
    log_file = None
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "ab")
    if not attached:
        try:
            proc = subprocess.Popen(
                argv, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL,
                stdout=log_file or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )
        finally:
            if log_file is not None:
                log_file.close()
        return proc, None
    proc = subprocess.Popen(
        argv, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
    )
    register(proc.pid)
    pump = OutputPump(proc.stdout, echo=echo, log_file=log_file)
    pump.start()
    return proc, pump


def stop(pid: int, create_time: float | None = None, timeout: float = 10.0) -> bool:
    """Stop the process group led by ``pid`` (SIGTERM, then SIGKILL); forget it."""
    try:
        return daemon.stop_pid(pid, create_time, timeout=timeout)
    finally:
        unregister(pid)


def kill_group(pgid: int, grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL, whatever is left in process group ``pgid`` (its leader has exited).

    Only for groups this process created and whose leader it has just reaped.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)


def register(pid: int) -> None:
    """Stop ``pid``'s process group when this interpreter exits."""
    _install_exit_hooks()
    with _lock:
        _attached[pid] = daemon.process_create_time(pid)


def unregister(pid: int) -> None:
    with _lock:
        _attached.pop(pid, None)


def stop_all_attached(timeout: float = 5.0) -> None:
    """Stop every attached child still running (atexit hook)."""
    with _lock:
        items = list(_attached.items())
        _attached.clear()
    for pid, create_time in items:
        try:
            daemon.stop_pid(pid, create_time, timeout=timeout)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _install_exit_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(stop_all_attached)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _exit_on_signal)
        except (ValueError, OSError):
            pass


def _exit_on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def watch_owner(on_gone: Callable[[], None], interval: float = 0.5) -> threading.Thread | None:
    """Call ``on_gone`` once the owner named by LOCAL_RUNS_OWNER_PID exits (daemon thread)."""
    pid = os.environ.get(OWNER_PID_ENV)
    if not pid:
        return None
    raw_time = os.environ.get(OWNER_CREATE_TIME_ENV)
    try:
        create_time = float(raw_time) if raw_time not in (None, "", "None") else None
    except ValueError:
        create_time = None

    def _loop():
        while daemon.is_same_process(int(pid), create_time):
            time.sleep(interval)
        on_gone()

    thread = threading.Thread(target=_loop, daemon=True, name="local-runs-owner-watch")
    thread.start()
    return thread


def terminate_own_group() -> None:
    """SIGTERM this process's group (used when the owner is gone)."""
    try:
        os.killpg(os.getpgrp(), signal.SIGTERM)
    except OSError:
        os.kill(os.getpid(), signal.SIGTERM)
