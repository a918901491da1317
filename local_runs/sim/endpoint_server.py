"""A SageMaker serving container as a host process: ``GET /ping``, ``POST /invocations``.

Started by ``container.py`` (``python -m local_runs.sim.endpoint_server``). It binds
127.0.0.1 on a free port (or ``--port``), records pid/port/status in the endpoint registry
and answers through ``inference.Worker`` -- the real inference toolkit, no TorchServe/MMS
(no Java). Request bodies over 6 MiB get 413. SIGTERM stops it cleanly (record removed,
temp dirs deleted); with ``LOCAL_RUNS_OWNER_PID`` set it also stops when its owner dies.

Knobs (environment of the server process):

* ``SAGEMAKER_MODEL_SERVER_WORKERS`` -- worker processes (default 1), forked after binding
  so they share the socket; each loads the model. ``LOCAL_RUNS_SIM_WORKERS`` on the
  deploying host overrides it.
* ``LOCAL_RUNS_SIM_THREADS`` -- requests one worker runs at once (default 1, like one
  TorchServe worker); /ping is always answered.
* ``LOCAL_RUNS_SIM_HANDLER_SERVICE`` -- ``module:Class`` of the handler service.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import select
import shutil
import signal
import socket
import sys
import threading
import time
import traceback

from local_runs import daemon
from local_runs.sim import procs, registry
from local_runs.sim.http_base import Handler, Server
from local_runs.sim.inference import DEFAULT_HANDLER_SERVICE, HANDLER_SERVICE_ENV, Worker

MAX_REQUEST_BYTES = 6 * 1024 * 1024
_DRAIN_CAP_BYTES = 64 * 1024 * 1024
THREADS_ENV = "LOCAL_RUNS_SIM_THREADS"
WORKERS_ENV = "SAGEMAKER_MODEL_SERVER_WORKERS"

logger = logging.getLogger("local_runs.sim.endpoint")


# --- HTTP ----------------------------------------------------------------------------------

class PayloadTooLarge(Exception):
    pass


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
            body = self._read_body(MAX_REQUEST_BYTES)
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

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked(limit)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError(f"Content-Length {length} is negative")
        if length > limit:
            if length <= _DRAIN_CAP_BYTES:
                self._drain(length)
            else:
                self.close_connection = True
            raise PayloadTooLarge(f"request body of {length} bytes exceeds {limit} bytes")
        return self.rfile.read(length) if length else b""

    def _read_chunked(self, limit: int) -> bytes:
        parts, total = [], 0
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size < 0:
                raise ValueError(f"chunk size {size} is negative")
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                break
            total += size
            if total > _DRAIN_CAP_BYTES:
                self.close_connection = True
                raise PayloadTooLarge(f"chunked request body exceeds {limit} bytes")
            chunk = self.rfile.read(size)
            self.rfile.readline()
            if total <= limit:
                parts.append(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body of {total} bytes exceeds {limit} bytes")
        return b"".join(parts)

    def _drain(self, length: int) -> None:
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)

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


def _run_single(args, sock, stop: threading.Event) -> int:
    worker = Worker(args.model_dir, args.handler_service, args.threads)
    try:
        worker.initialize()
    except BaseException as exc:  # noqa: BLE001 - reported as the endpoint's FailureReason
        reason = _failure_text(exc)
        logger.error("model load failed:\n%s", reason)
        registry.update(args.state_dir, args.name, status=registry.FAILED, failure_reason=reason[:4000])
        return 1
    server = make_http_server(sock, worker)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    registry.update(args.state_dir, args.name, status=registry.IN_SERVICE)
    logger.info("endpoint %s in service on http://%s:%d (1 worker)", args.name, *sock.getsockname()[:2])
    while not stop.wait(0.2):
        pass
    server.shutdown()
    server.server_close()
    return 0


def _exit_when_orphaned(parent: int) -> None:
    def _loop():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=_loop, daemon=True).start()


def _worker_child(args, sock, report_fd: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    _exit_when_orphaned(os.getppid())  # never outlive the supervisor (e.g. if it is SIGKILLed)
    worker = Worker(args.model_dir, args.handler_service, args.threads)
    try:
        worker.initialize()
    except BaseException as exc:  # noqa: BLE001
        message = json.dumps({"pid": os.getpid(), "ok": False, "reason": _failure_text(exc)[:2000]})
        os.write(report_fd, (message + "\n").encode())
        os._exit(1)
    os.write(report_fd, (json.dumps({"pid": os.getpid(), "ok": True}) + "\n").encode())
    os.close(report_fd)
    server = make_http_server(sock, worker)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        os._exit(0)


def _run_forked(args, sock, stop: threading.Event) -> int:
    sock.setblocking(False)  # workers race for accept(); losers must not block
    read_fd, write_fd = os.pipe()
    children: dict[int, bool] = {}
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _worker_child(args, sock, write_fd)
        children[pid] = False
    os.close(write_fd)
    procs.watch_owner(stop.set)  # threads only after the last fork
    failure, buffer = None, b""
    with os.fdopen(read_fd, "rb", buffering=0) as reports:
        while not all(children.values()) and failure is None and not stop.is_set():
            ready, _, _ = select.select([reports], [], [], 0.2)
            if ready:
                chunk = reports.read(65536)
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    message = json.loads(line)
                    if message["ok"]:
                        children[message["pid"]] = True
                    else:
                        failure = message["reason"]
                if not chunk and not all(children.values()) and failure is None:
                    failure = "a worker exited before loading the model"
            for pid in list(children):
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done, status = pid, -1
                if done:
                    if failure is None:
                        failure = f"worker {pid} exited (status {status}) before loading the model"
                    children.pop(pid)
    if failure is None and not stop.is_set():
        registry.update(args.state_dir, args.name, status=registry.IN_SERVICE)
        logger.info("endpoint %s in service on http://%s:%d (%d workers)", args.name,
                    *sock.getsockname()[:2], args.workers)
        while not stop.wait(0.2):
            alive = []
            for pid in list(children):
                try:
                    done, _status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    logger.error("worker %d exited", pid)
                    children.pop(pid)
                else:
                    alive.append(pid)
            if not alive:
                failure = "all workers exited"
                break
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    for pid in children:
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if failure is not None:
        logger.error("endpoint failed:\n%s", failure)
        registry.update(args.state_dir, args.name, status=registry.FAILED, failure_reason=failure[:4000])
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
    parser.add_argument("--cleanup", action="append", default=[], help="directory to delete at exit")
    args = parser.parse_args(argv)
    registry.validate_name(args.name)
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
        workers=args.workers, cleanup_dirs=args.cleanup, status=registry.CREATING,
    )
    if args.workers <= 1:
        procs.watch_owner(stop.set)
        code = _run_single(args, sock, stop)
    else:
        code = _run_forked(args, sock, stop)  # forks before any thread starts
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
