"""A SageMaker serving container as a host process: ``GET /ping``, ``POST /invocations``.

Started by ``container.py`` (``python -m local_runs.sim.endpoint_server``). It binds
127.0.0.1 on a free port (or ``--port``), records pid/port/status in the endpoint registry
and answers through ``inference.Worker`` -- the real inference toolkit, no TorchServe/MMS
(no Java). Request bodies over 6 MiB get 413. SIGTERM stops it cleanly (record removed,
temp dirs deleted); with ``LOCAL_RUNS_OWNER_PID`` set it also stops when its owner dies.

Knobs (environment of the server process):

* ``SAGEMAKER_MODEL_SERVER_WORKERS`` -- worker processes (default 1), started after binding
  (``--worker``, the listening socket inherited) so they share the socket; each loads the
  model. ``LOCAL_RUNS_SIM_WORKERS`` on the deploying host overrides it.
* ``SAGEMAKER_MODEL_SERVER_TIMEOUT`` -- seconds one request may run in a worker (default:
  ``LOCAL_RUNS_SIM_INVOKE_TIMEOUT``, else 60). A worker still inside a request 1 s past it is
  killed and replaced (the gateway has answered the client "timed out" by then).

The server process is a supervisor, like TorchServe in the real container: a worker that dies
(crash, ``kill -9``, out of memory) is started again and loads the model again; the log says
so, and the registry record counts ``restarts`` (with ``last_restart``: time, pid, reason).
The endpoint stays InService while a worker is serving or starting. A replacement that fails
to load the model 5 times in a row is not restarted; with none left the endpoint is Failed.
* ``LOCAL_RUNS_SIM_THREADS`` -- requests one worker runs at once (default 1, like one
  TorchServe worker); /ping is always answered.
* ``LOCAL_RUNS_SIM_HANDLER_SERVICE`` -- ``module:Class`` of the handler service.
"""
from __future__ import annotations

import argparse
import json
import logging
import mmap
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback

from local_runs import daemon
from local_runs.sim import procs, registry
from local_runs.http_base import Handler, PayloadTooLarge, Server
from local_runs.sim.inference import DEFAULT_HANDLER_SERVICE, HANDLER_SERVICE_ENV, Worker

MAX_REQUEST_BYTES = 6 * 1024 * 1024
THREADS_ENV = "LOCAL_RUNS_SIM_THREADS"
WORKERS_ENV = "SAGEMAKER_MODEL_SERVER_WORKERS"
MODEL_TIMEOUT_ENV = "SAGEMAKER_MODEL_SERVER_TIMEOUT"  # the PyTorch container's setting (TorchServe's response timeout)
INVOKE_TIMEOUT_ENV = "LOCAL_RUNS_SIM_INVOKE_TIMEOUT"  # the runtime gateway's timeout; the default for the above
DEFAULT_MODEL_TIMEOUT = 60.0
HANG_GRACE_S = 1.0  # past the timeout before a worker is killed: the gateway answers "timed out" first
MAX_LOAD_FAILURES = 5  # a replacement worker that fails to load this often in a row is not restarted again
RESTART_BACKOFF_ENV = "LOCAL_RUNS_SIM_RESTART_BACKOFF"  # seconds before the 1st retry of a failed load (doubling, <= 30)
_MAX_SLOTS = 256
_SLOT_BYTES = 8

logger = logging.getLogger("local_runs.sim.endpoint")


# --- HTTP ----------------------------------------------------------------------------------

class _Handler(Handler):
    server_version = "local-runs-sim"

    def do_GET(self):  # noqa: N802
        if self.path.split("?")[0] == "/ping":
            self._send(200, "application/json", b'{"status": "Healthy"}\n')
        else:
            self._send_error(404, f"no such path {self.path.split('?')[0]!r}; use GET /ping or POST /invocations")

    def do_POST(self):  # noqa: N802
        path = self.path.split("?")[0]
        try:
            body = self.read_body(MAX_REQUEST_BYTES)
        except PayloadTooLarge as exc:
            self._send_error(413, str(exc), close=True)
            return
        except ValueError as exc:  # a Content-Length or chunk size that is not a number
            self._send_error(400, f"malformed request framing: {exc}", close=True)
            return
        if path != "/invocations":
            self._send_error(404, f"no such path {path!r}; use GET /ping or POST /invocations")
            return
        started = time.monotonic()
        headers = {k: v for k, v in self.headers.items()}
        for key in ("Content-Type", "Accept"):
            value = self.headers.get(key)
            if value is not None:
                headers.setdefault(key, value)
                headers.setdefault(key.lower(), value)
        status, content_type, payload, extra = self.server.worker.invoke(body, headers)
        self._send(status, content_type, payload, extra)
        elapsed = (time.monotonic() - started) * 1000
        if status >= 400:
            logger.warning("POST /invocations %s %.1f ms: %s", status, elapsed,
                           payload[:2000].decode("utf-8", "replace"))
        else:
            logger.info("POST /invocations %s %d bytes %.1f ms", status, len(payload), elapsed)

    def _send_error(self, status: int, message: str, close: bool = False) -> None:
        """An error the server answers itself, shaped like the handler's: {"error": {"code", "message"}}."""
        body = json.dumps({"error": {"code": status, "message": message}}).encode()
        self._send(status, "application/json", body, close=close)


class _Server(Server):
    worker: Worker


def make_http_server(sock: socket.socket, worker: Worker) -> _Server:
    """An HTTP server on an already listening socket (shared by forked workers)."""
    server = _Server(sock.getsockname()[:2], _Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.server_address = sock.getsockname()[:2]
    server.worker = worker
    return server


# --- supervisor ----------------------------------------------------------------------------

def _failure_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc))
    return f"{type(exc).__name__}: {exc}\n{text[-3000:]}"


def _cleanup(dirs: list[str]) -> None:
    for directory in dirs:
        shutil.rmtree(directory, ignore_errors=True)


def model_timeout_from_env(environ=None) -> float:
    """Seconds one request may run in a worker: SAGEMAKER_MODEL_SERVER_TIMEOUT (the container's own
    setting), else LOCAL_RUNS_SIM_INVOKE_TIMEOUT (the gateway's), else 60."""
    environ = os.environ if environ is None else environ
    for key in (MODEL_TIMEOUT_ENV, INVOKE_TIMEOUT_ENV):
        try:
            value = float(environ.get(key) or 0)
        except ValueError:
            continue
        if value > 0:
            return value
    return DEFAULT_MODEL_TIMEOUT


class _BusyBoard:
    """One float per worker slot in shared memory: when the oldest request still running in that
    worker started (CLOCK_MONOTONIC, the same clock in every process), 0.0 when idle.

    A worker writes its own slot around each request; the supervisor reads every slot. A worker
    stopped or wedged inside a request cannot clear its slot, so the supervisor sees it age.
    """

    def __init__(self, fd: int, slot: int | None = None):
        self.fd = fd
        self._map = mmap.mmap(fd, _SLOT_BYTES * _MAX_SLOTS)
        self._slot = slot
        self._lock = threading.Lock()
        self._running: dict[int, float] = {}
        self._next = 0

    @classmethod
    def create(cls) -> "_BusyBoard":
        fd = os.memfd_create("local-runs-busy", 0)  # freed with the last process holding it
        os.ftruncate(fd, _SLOT_BYTES * _MAX_SLOTS)
        return cls(fd)

    def since(self, slot: int) -> float:
        return struct.unpack_from("d", self._map, slot * _SLOT_BYTES)[0]

    def clear(self, slot: int) -> None:
        struct.pack_into("d", self._map, slot * _SLOT_BYTES, 0.0)

    # worker side
    def begin(self) -> int:
        with self._lock:
            token = self._next
            self._next += 1
            self._running[token] = time.monotonic()
            struct.pack_into("d", self._map, self._slot * _SLOT_BYTES, min(self._running.values()))
            return token

    def end(self, token: int) -> None:
        with self._lock:
            self._running.pop(token, None)
            oldest = min(self._running.values()) if self._running else 0.0
            struct.pack_into("d", self._map, self._slot * _SLOT_BYTES, oldest)


def _exit_when_orphaned(parent: int) -> None:
    def _loop():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=_loop, daemon=True).start()


def _report(fd: int, message: dict) -> None:
    line = json.dumps(message)
    if len(line) > 3500:  # one write below PIPE_BUF stays whole when several workers report at once
        message = {**message, "reason": message.get("reason", "")[:1000]}
        line = json.dumps(message)[:3500]
    os.write(fd, (line + "\n").encode())


def _worker_main(args) -> int:
    """One worker process (exec'd by the supervisor): load the model, serve the shared socket."""
    for sig in (signal.SIGINT, signal.SIGHUP):  # Ctrl-C reaches the supervisor, which stops the workers
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"%(asctime)s {args.name} %(levelname)s %(message)s")
    _exit_when_orphaned(os.getppid())  # never outlive the supervisor (e.g. if it is SIGKILLed)
    sock = socket.socket(fileno=args.listen_fd)
    sock.setblocking(False)  # workers race for accept(); losers must not block
    board = _BusyBoard(args.busy_fd, args.slot)
    worker = Worker(args.model_dir, args.handler_service, args.threads)
    worker.tracker = board
    try:
        worker.initialize()
    except BaseException as exc:  # noqa: BLE001 - reported to the supervisor
        _report(args.report_fd, {"slot": args.slot, "pid": os.getpid(), "ok": False,
                                 "reason": _failure_text(exc)[:2000]})
        return 1
    _report(args.report_fd, {"slot": args.slot, "pid": os.getpid(), "ok": True})
    os.close(args.report_fd)
    server = make_http_server(sock, worker)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server.serve_forever(poll_interval=0.2)
    return 0


class _Slot:
    def __init__(self, index: int):
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.serving = False
        self.load_failures = 0  # loads in a row that failed
        self.last_failure: str | None = None
        self.not_before = 0.0  # restart back-off
        self.kill_reason: str | None = None
        self.given_up = False


class _Supervisor:
    """Starts the workers, replaces one that dies or hangs, and keeps the registry record current.

    Like TorchServe under the SageMaker PyTorch container: a worker that exits is started again
    (its model loaded again), and one whose request runs past the model timeout is killed and
    replaced. The endpoint stays InService while at least one worker is serving or starting.
    """

    def __init__(self, args, sock: socket.socket, stop: threading.Event):
        self.args = args
        self.sock = sock
        self.stop = stop
        self.board = _BusyBoard.create()
        self.report_r, self.report_w = os.pipe()
        os.set_blocking(self.report_r, False)
        self.slots = [_Slot(i) for i in range(args.workers)]
        self.restarts = 0
        self.in_service = False
        self.timeout = float(args.model_timeout)
        try:
            self.backoff = max(0.0, float(os.environ.get(RESTART_BACKOFF_ENV) or 1.0))
        except ValueError:
            self.backoff = 1.0
        self._buffer = b""

    # --- workers ---
    def _spawn(self, slot: _Slot) -> None:
        self.board.clear(slot.index)
        argv = [sys.executable, "-m", "local_runs.sim.endpoint_server", "--worker",
                "--name", self.args.name, "--model-dir", self.args.model_dir, "--state-dir", self.args.state_dir,
                "--threads", str(self.args.threads), "--handler-service", self.args.handler_service,
                "--slot", str(slot.index), "--listen-fd", str(self.sock.fileno()),
                "--report-fd", str(self.report_w), "--busy-fd", str(self.board.fd)]
        slot.proc = subprocess.Popen(argv, pass_fds=(self.sock.fileno(), self.report_w, self.board.fd),
                                     stdin=subprocess.DEVNULL)
        slot.serving = False
        slot.kill_reason = None

    def _alive_pids(self) -> list[int]:
        return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.poll() is None]

    def _record(self, **fields) -> None:
        registry.update(self.args.state_dir, self.args.name, restarts=self.restarts,
                        worker_pids=self._alive_pids(),
                        workers_serving=sum(1 for s in self.slots if s.serving), **fields)

    def _read_reports(self) -> list[dict]:
        try:
            while True:
                chunk = os.read(self.report_r, 65536)
                if not chunk:
                    break
                self._buffer += chunk
        except BlockingIOError:
            pass
        out = []
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def _handle_reports(self) -> str | None:
        """Apply workers' load reports; a failure reason if the endpoint cannot come up."""
        for message in self._read_reports():
            slot = self.slots[int(message["slot"])]
            if slot.proc is None or slot.proc.pid != message.get("pid"):
                continue
            if message["ok"]:
                slot.serving, slot.load_failures = True, 0
                if self.in_service:
                    logger.info("worker %d (slot %d): model loaded again; serving", slot.proc.pid, slot.index)
                    self._record()
            else:
                if not self.in_service:
                    return message.get("reason") or "a worker failed to load the model"
                slot.load_failures += 1
                slot.last_failure = message.get("reason")
                logger.error("worker %d (slot %d) could not load the model (%d time(s) in a row):\n%s",
                             slot.proc.pid, slot.index, slot.load_failures, message.get("reason"))
        return None

    def _check_slot(self, slot: _Slot, now: float) -> None:
        if self.stop.is_set():  # stopping: workers exit on the same SIGTERM; none is replaced
            return
        proc = slot.proc
        if proc is not None and proc.poll() is None:
            since = self.board.since(slot.index) if slot.serving else 0.0
            if since and now - since > self.timeout + HANG_GRACE_S:
                slot.kill_reason = (f"a request ran {now - since:.1f} s, past the model timeout of {self.timeout:g} s "
                                    f"({MODEL_TIMEOUT_ENV})")
                logger.error("worker %d (slot %d): %s; killing it", proc.pid, slot.index, slot.kill_reason)
                proc.kill()
                proc.wait()
            else:
                return
        if proc is not None:  # it exited: say why, then replace it
            code = proc.returncode
            how = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            reason = slot.kill_reason or f"exited ({how})"
            was_serving = slot.serving
            slot.proc, slot.serving = None, False
            self.board.clear(slot.index)
            if not was_serving and slot.load_failures >= MAX_LOAD_FAILURES:
                slot.given_up = True
                logger.error("worker slot %d: the model failed to load %d times in a row; not restarting it",
                             slot.index, slot.load_failures)
                self._record()
                return
            self.restarts += 1
            slot.not_before = now + (min(30.0, self.backoff * 2.0 ** (slot.load_failures - 1))
                                     if slot.load_failures else 0.0)
            logger.error("worker %d (slot %d) %s; starting a replacement (restart %d of this endpoint)",
                         proc.pid, slot.index, reason, self.restarts)
            self._record(last_restart={"time": time.time(), "pid": proc.pid, "reason": reason})
        if slot.proc is None and not slot.given_up and now >= slot.not_before:
            self._spawn(slot)
            logger.info("worker %d (slot %d) started; loading the model", slot.proc.pid, slot.index)
            self._record()

    def _stop_workers(self) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                try:
                    slot.proc.send_signal(signal.SIGTERM)
                    os.kill(slot.proc.pid, signal.SIGCONT)  # a stopped worker must see its SIGTERM
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                slot.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                slot.proc.kill()
                slot.proc.wait()

    # --- the endpoint's life ---
    def run(self) -> int:
        for slot in self.slots:
            self._spawn(slot)
        failure = None
        while failure is None and not self.stop.is_set():  # startup: every worker loads the model
            select.select([self.report_r], [], [], 0.2)
            failure = self._handle_reports()
            if failure is None and all(s.serving for s in self.slots):
                break
            for slot in self.slots:
                if failure is None and slot.proc.poll() is not None and not slot.serving:
                    failure = self._handle_reports() or (
                        f"worker {slot.proc.pid} exited (status {slot.proc.returncode}) before loading the model")
        if failure is None and not self.stop.is_set():
            self.in_service = True
            self._record(status=registry.IN_SERVICE, model_timeout=self.timeout)
            logger.info("endpoint %s in service on http://%s:%d (%d worker%s)", self.args.name,
                        *self.sock.getsockname()[:2], self.args.workers, "" if self.args.workers == 1 else "s")
            while not self.stop.is_set():
                select.select([self.report_r], [], [], 0.2)
                self._handle_reports()
                now = time.monotonic()
                for slot in self.slots:
                    self._check_slot(slot, now)
                if all(s.given_up for s in self.slots):
                    last = next((s.last_failure for s in self.slots if s.last_failure), "") or ""
                    failure = (f"every worker failed to load the model {MAX_LOAD_FAILURES} times in a row after a "
                               f"restart; see the endpoint log. The last failure:\n{last}")
                    break
        self._stop_workers()
        if failure is not None:
            logger.error("endpoint failed:\n%s", failure)
            registry.update(self.args.state_dir, self.args.name, status=registry.FAILED,
                            failure_reason=failure[:4000], restarts=self.restarts)
            return 1
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_runs.sim.endpoint_server")
    parser.add_argument("--name", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=int(os.environ.get(WORKERS_ENV) or 1))
    parser.add_argument("--threads", type=int, default=int(os.environ.get(THREADS_ENV) or 1))
    parser.add_argument("--handler-service", default=os.environ.get(HANDLER_SERVICE_ENV) or DEFAULT_HANDLER_SERVICE)
    parser.add_argument("--model-timeout", type=float, default=model_timeout_from_env(),
                        help="seconds a request may run before its worker is replaced")
    parser.add_argument("--cleanup", action="append", default=[], help="directory to delete at exit")
    # a worker process (started by the supervisor)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--slot", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--report-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--busy-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    registry.validate_name(args.name)
    if args.worker:
        return _worker_main(args)
    args.workers = max(1, min(args.workers, _MAX_SLOTS))
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"%(asctime)s {args.name} %(levelname)s %(message)s")

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())

    sock = socket.create_server((daemon.LOOPBACK, args.port), backlog=128)
    host, port = sock.getsockname()[:2]
    registry.update(
        args.state_dir, args.name, pid=os.getpid(), create_time=daemon.process_create_time(os.getpid()),
        host=host, port=port, url=f"http://{host}:{port}", model_dir=args.model_dir,
        workers=args.workers, cleanup_dirs=args.cleanup, status=registry.CREATING, restarts=0,
    )
    procs.watch_owner(stop.set)
    code = _Supervisor(args, sock, stop).run()
    sock.close()
    if code == 0:
        registry.remove(args.state_dir, args.name, pid=os.getpid())
        _cleanup(args.cleanup)
        logger.info("endpoint %s stopped", args.name)
    return code


if __name__ == "__main__":
    exit_code = main()
    logging.shutdown()
    sys.stdout.flush()
    os._exit(exit_code)  # skip interpreter teardown (torch makes it slow); cleanup is done
