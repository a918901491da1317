"""The inference toolkit inside a sim endpoint: a handler service driven like TorchServe does.

``Worker`` imports the handler service (``LOCAL_RUNS_SIM_HANDLER_SERVICE``, default
``sagemaker_pytorch_serving_container.handler_service:HandlerService``: the real
``sagemaker_inference`` ``Transformer`` with the PyTorch default handlers), checks
``code/requirements.txt`` against the host, and calls ``initialize`` once -- so the user's
``model_fn`` runs once per worker. Each request then goes through ``handle([{"body":
bytearray}], context)`` with a ``Context`` offering the TorchServe methods the toolkit and
user handlers use (system_properties, request headers, set_response_status, ...).
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import threading
import traceback
from pathlib import Path
from typing import Any

DEFAULT_HANDLER_SERVICE = "sagemaker_pytorch_serving_container.handler_service:HandlerService"
HANDLER_SERVICE_ENV = "LOCAL_RUNS_SIM_HANDLER_SERVICE"

logger = logging.getLogger("local_runs.sim.endpoint")


# --- the TorchServe-like context the toolkit's Transformer expects ----------------------

class RequestProcessor:
    """Request metadata for one request of a batch (TorchServe's RequestProcessor)."""

    def __init__(self, headers: dict[str, str]):
        self._headers = headers

    def get_request_properties(self) -> dict[str, str]:
        return self._headers

    def get_request_property(self, key: str) -> str | None:
        return self._headers.get(key)


class Context:
    """The subset of TorchServe's ``Context`` that the inference toolkits and handlers use."""

    def __init__(self, model_dir: str, headers: dict[str, str] | None = None, model_name: str = "model"):
        self.model_name = model_name
        self.manifest = {"model": {"modelName": model_name}}
        self.system_properties = {
            "model_dir": model_dir,
            "gpu_id": None,
            "batch_size": 1,
            "server_name": "local-runs-sim",
            "server_version": "1",
            "limit_max_image_pixels": True,
        }
        self.request_processor = [RequestProcessor(headers or {})]
        self.metrics = None
        self.status_code: int | None = None
        self.phrase: str | None = None
        self.content_type: str | None = None
        self.response_headers: dict[str, str] = {}

    def get_request_header(self, idx: int, key: str) -> str | None:
        headers = self.request_processor[idx].get_request_properties()
        return headers.get(key) or headers.get(key.lower())

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return self.request_processor[idx].get_request_properties()

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_type = value

    def get_response_content_type(self, idx: int) -> str | None:
        return self.content_type

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status_code = int(code)
        self.phrase = phrase

    def get_response_status(self, idx: int = 0) -> tuple[int, str]:
        return self.status_code or 200, self.phrase or ""

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.response_headers[key] = value

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return self.response_headers


# --- one worker: a handler service with its model loaded --------------------------------

def _to_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    try:
        return json.dumps(value).encode("utf-8")
    except (TypeError, ValueError):
        return str(value).encode("utf-8")


class Worker:
    """Loads the handler service once (``initialize`` -> ``model_fn``) and runs requests."""

    def __init__(self, model_dir: str, handler_spec: str, threads: int = 1):
        self.model_dir = model_dir
        self.handler_spec = handler_spec
        self._slots = threading.BoundedSemaphore(max(1, threads))
        self.service = None
        # Told when a request starts and ends running (begin() -> token, end(token)): the endpoint's
        # supervisor uses it to find a worker whose request runs past the model timeout.
        self.tracker = None

    def initialize(self) -> None:
        requirements = Path(self.model_dir, "code", "requirements.txt")
        if requirements.exists():
            from local_runs.sim.requirements import ensure_satisfied

            ensure_satisfied(requirements)
        module_name, _, class_name = self.handler_spec.partition(":")
        service_class = getattr(importlib.import_module(module_name), class_name or "HandlerService")
        service = service_class()
        service.initialize(Context(self.model_dir))
        self.service = service
        logger.info("worker %d: model loaded (%s)", os.getpid(), self.handler_spec)

    def invoke(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes, dict[str, str]]:
        """Run one request: (status, content type, body, extra headers)."""
        with self._slots:
            context = Context(self.model_dir, headers)
            token = self.tracker.begin() if self.tracker is not None else None
            try:
                result = self.service.handle([{"body": bytearray(body)}], context)
            except Exception as exc:  # noqa: BLE001 - the container answers 500
                logger.error("handler failed: %s", traceback.format_exc())
                return 500, "text/plain", f"{exc}\n{traceback.format_exc()}".encode(), {}
            finally:
                if token is not None:
                    self.tracker.end(token)
        status = context.status_code or 200
        payload = result[0] if isinstance(result, list) and result else result
        content_type = context.content_type or ("text/plain" if status >= 400 else "application/json")
        return status, content_type, _to_bytes(payload), dict(context.response_headers)
