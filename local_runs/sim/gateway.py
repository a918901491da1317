"""The runtime gateway: the SageMaker Runtime ``InvokeEndpoint`` API over local endpoints.

``POST /endpoints/{name}/invocations`` looks ``name`` up in the endpoint registry and
forwards the body (and Content-Type, Accept, custom-attribute headers) to that endpoint's
``/invocations``. The answer is shaped like the real service's, so an unchanged
``boto3.client('sagemaker-runtime', endpoint_url=URL)`` -- or any client with
``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=URL`` set -- works, errors included:

* container 2xx -> 200 with its body, ``Content-Type`` and ``x-Amzn-Invoked-Production-Variant``;
* container 4xx/5xx -> 424 ``ModelError`` with ``OriginalStatusCode``, ``OriginalMessage``,
  ``LogStreamArn`` (botocore raises ``ModelError``, a ``ClientError``);
* container silent for ``LOCAL_RUNS_SIM_INVOKE_TIMEOUT`` s (default 60), unreachable, or gone
  before its answer was complete -> 424 ``ModelError`` with ``OriginalStatusCode`` 0;
* unknown or not-in-service endpoint -> 400 ``ValidationError`` (one whose serving process
  died says so: status Failed, the reason and the log to read);
* body over 6 MiB -> 413, as the real front end answers.

Use in-process (``with RuntimeGateway(state_dir) as gw: gw.url``) or as a shared daemon:
``python -m local_runs.sim.gateway --state-dir D --port-file F`` (``ensure_daemon`` /
``discover_daemon`` / ``stop_daemon``). It binds 127.0.0.1 only and ignores request
signatures (there is nothing to protect beyond this machine's loopback).
"""
from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import re
import socket
import sys
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from local_runs import daemon
from local_runs.sim import registry
from local_runs.http_base import Handler, PayloadTooLarge, Server
from local_runs.netguard import is_loopback_host

MAX_REQUEST_BYTES = 6 * 1024 * 1024
INVOKE_TIMEOUT_ENV = "LOCAL_RUNS_SIM_INVOKE_TIMEOUT"
ACCOUNT_ID = "000000000000"
_PATH_RE = re.compile(r"^/endpoints/(?P<name>[^/?]+)/invocations/?$")
_FORWARDED = (
    "Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes", "X-Amzn-SageMaker-Target-Model",
    "X-Amzn-SageMaker-Target-Variant", "X-Amzn-SageMaker-Inference-Id",
    "X-Amzn-SageMaker-Enable-Explanations",
)

logger = logging.getLogger("local_runs.sim.gateway")


def model_error_body(name: str, status: int, original: str, log_hint: str, region: str) -> dict[str, Any]:
    """The JSON the real service sends with a 424 ModelError."""
    kind = "client" if 400 <= status < 500 else "server"
    return {
        "ErrorCode": f"{kind.upper()}_ERROR_FROM_MODEL",
        "LogStreamArn": f"arn:aws:logs:{region}:{ACCOUNT_ID}:log-group:/aws/sagemaker/Endpoints/{name}",
        "Message": (
            f'Received {kind} error ({status}) from primary with message "{original}". '
            f"See {log_hint} for more information."
        ),
        "OriginalMessage": original,
        "OriginalStatusCode": status,
    }


class _Handler(Handler):
    server_version = "local-runs-sim-gateway"

    def _send(self, status: int, content_type: str, body: bytes,
              extra: dict[str, str] | None = None, close: bool = False) -> None:
        super()._send(status, content_type, body, {"x-amzn-RequestId": str(uuid.uuid4()), **(extra or {})}, close)

    def log_message(self, fmt, *args):
        logger.debug("gateway: " + fmt, *args)

    def do_GET(self):  # noqa: N802
        if self.path.split("?")[0] == "/ping":
            self._send(200, "application/json", b'{"status": "Healthy"}')
        else:
            self._error(404, "UnknownOperationException", "Unknown operation")

    def do_POST(self):  # noqa: N802
        try:
            body = self.read_body(MAX_REQUEST_BYTES)
        except PayloadTooLarge:
            self._send(413, "text/plain", f"HTTP content length exceeded {MAX_REQUEST_BYTES} bytes.".encode(),
                       close=True)
            return
        except ValueError as exc:  # a Content-Length or chunk size that is not a number
            self._error(400, "ValidationError", f"malformed request framing: {exc}")
            self.close_connection = True
            return
        match = _PATH_RE.match(self.path)
        if not match:
            self._error(404, "UnknownOperationException", "Unknown operation")
            return
        name = unquote(match.group("name"))
        try:
            registry.validate_name(name)
        except ValueError:
            self._error(400, "ValidationError",
                        f"1 validation error detected: Value '{name}' at 'endpointName' failed to "
                        "satisfy constraint: Member must satisfy regular expression pattern: "
                        "^[a-zA-Z0-9](-*[a-zA-Z0-9])*")
            return
        record = registry.live_record(self.server.state_dir, name)
        if record is None:
            stale = registry.read(self.server.state_dir, name)
            if stale is not None:  # registered, but its serving process is gone
                self._error(400, "ValidationError", f"Endpoint {name} of account {ACCOUNT_ID} is in status "
                            f"{registry.FAILED}: {registry.gone_reason(stale)}")
                return
            self._error(400, "ValidationError", f"Endpoint {name} of account {ACCOUNT_ID} not found.")
            return
        if record.get("status") != registry.IN_SERVICE or not record.get("port"):
            self._error(400, "ValidationError",
                        f"Endpoint {name} of account {ACCOUNT_ID} is in status {record.get('status')}.")
            return
        self._forward(name, record, body)

    def _forward(self, name: str, record: dict[str, Any], body: bytes) -> None:
        headers = {k: self.headers[k] for k in _FORWARDED if self.headers.get(k) is not None}
        log_hint = f"the endpoint log {record.get('log_path') or '(none)'}"
        host = record.get("host", daemon.LOOPBACK)
        if not is_loopback_host(host):  # never forward off this machine, whatever the record says
            self._model_error(name, 0, f"refusing to forward to non-local host {host!r}", log_hint)
            return
        conn = http.client.HTTPConnection(host, int(record["port"]), timeout=self.server.invoke_timeout)
        try:
            conn.request("POST", "/invocations", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except socket.timeout:
            self._model_error(name, 0, "Your invocation timed out while waiting for a response "
                              f"from container primary (after {self.server.invoke_timeout:g} s).", log_hint)
            return
        except OSError as exc:
            self._model_error(name, 0, f"The container could not be reached: {exc}", log_hint)
            return
        except http.client.HTTPException as exc:  # e.g. IncompleteRead: the container stopped mid-answer
            self._model_error(name, 0, "The container closed the connection before its answer was complete "
                              f"({type(exc).__name__}: {exc}).", log_hint)
            return
        finally:
            conn.close()
        if 200 <= response.status < 300:
            extra = {"x-Amzn-Invoked-Production-Variant": record.get("variant_name") or "AllTraffic"}
            custom = response.getheader("X-Amzn-SageMaker-Custom-Attributes")
            if custom is not None:
                extra["X-Amzn-SageMaker-Custom-Attributes"] = custom
            self._send(200, response.getheader("Content-Type") or "application/json", payload, extra)
            return
        self._model_error(name, response.status, payload.decode("utf-8", "replace"), log_hint)

    def _model_error(self, name: str, status: int, original: str, log_hint: str) -> None:
        body = model_error_body(name, status, original, log_hint, self.server.region)
        self._send(424, "application/json", json.dumps(body).encode(),
                   {"x-amzn-ErrorType": "ModelError:http://internal.amazon.com/coral/com.amazon.sagemaker/"})

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, "application/json", json.dumps({"message": message}).encode(),
                   {"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.coral.validate/"})


class _Server(Server):
    state_dir: Path
    invoke_timeout: float
    region: str


class RuntimeGateway:
    """The gateway in a thread of this process, on 127.0.0.1 (port 0 = a free port)."""

    def __init__(self, state_dir: str | os.PathLike | None = None, port: int = 0,
                 invoke_timeout: float | None = None, region: str = "us-east-1"):
        self.state_dir = Path(state_dir) if state_dir else registry.default_state_dir()
        self._port = port
        self.invoke_timeout = float(invoke_timeout or os.environ.get(INVOKE_TIMEOUT_ENV) or 60)
        self.region = region
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("gateway not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{daemon.LOOPBACK}:{self.port}"

    def start(self) -> "RuntimeGateway":
        server = _Server((daemon.LOOPBACK, self._port), _Handler)
        server.state_dir = self.state_dir
        server.invoke_timeout = self.invoke_timeout
        server.region = self.region
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        daemon=True, name="local-runs-gateway")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "RuntimeGateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_process_gateways: dict[Path, RuntimeGateway] = {}
_process_lock = threading.Lock()


def process_gateway(state_dir: str | os.PathLike, region: str = "us-east-1") -> RuntimeGateway:
    """This process's gateway for ``state_dir`` (started on first use, a daemon thread)."""
    key = Path(state_dir).resolve()
    with _process_lock:
        gateway = _process_gateways.get(key)
        if gateway is None:
            gateway = RuntimeGateway(key, region=region).start()
            _process_gateways[key] = gateway
        return gateway


# --- the shared daemon -------------------------------------------------------------------

def discover_daemon(port_file: str | os.PathLike) -> dict[str, Any] | None:
    """Info (url, port, pid, state_dir) of the live gateway daemon behind ``port_file``, or None."""
    return daemon.discover(port_file)


def ensure_daemon(port_file: str | os.PathLike, state_dir: str | os.PathLike, port: int = 0,
                  region: str = "us-east-1", log_path: str | os.PathLike | None = None,
                  timeout: float = 30.0) -> dict[str, Any]:
    """The live gateway daemon's info, starting a detached one if none is running."""
    port_file = Path(port_file)
    argv = [daemon.python(), "-m", "local_runs.sim.gateway", "--port-file", str(port_file),
            "--state-dir", str(Path(state_dir).resolve()), "--port", str(port), "--region", region]
    return daemon.ensure(port_file, argv, log_path or port_file.with_suffix(".log"), timeout=timeout)


def stop_daemon(port_file: str | os.PathLike, timeout: float = 10.0) -> bool:
    """Stop the gateway daemon behind ``port_file``; True when one was running."""
    return daemon.stop_daemon(port_file, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_runs.sim.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(message)s")
    with RuntimeGateway(args.state_dir, port=args.port, region=args.region) as gateway:
        daemon.write_port_file(args.port_file, daemon.LOOPBACK, gateway.port, state_dir=str(gateway.state_dir))
        logging.info("runtime gateway on %s for %s", gateway.url, gateway.state_dir)
        try:
            daemon.wait_for_stop_signal()
        finally:
            daemon.remove_port_file(args.port_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
