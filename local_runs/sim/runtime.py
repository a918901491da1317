"""The session's SageMaker Runtime client: a real botocore client aimed at the local gateway.

The SDK's ``LocalSagemakerRuntimeClient`` posts to one fixed port and hands a container's
500 back as if it were a success. ``SimRuntimeClient`` instead sends ``invoke_endpoint`` to
the runtime gateway (``gateway.py``), which routes by endpoint name to that endpoint's
port. Because a genuine botocore ``sagemaker-runtime`` client parses the answer, callers
see exactly what real SageMaker gives them: a ``StreamingBody``, and for a container
4xx/5xx a ``ModelError`` (``ClientError``, HTTP 424) carrying ``OriginalStatusCode`` and
``OriginalMessage``.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from local_runs.netguard import require_loopback_url


class SimRuntimeClient:
    """Drop-in for ``LocalSagemakerRuntimeClient`` (``config`` attribute included)."""

    def __init__(self, boto_session, gateway_url: Callable[[], str], config: dict | None = None):
        self._boto_session = boto_session
        self._gateway_url = gateway_url
        self._client = None
        self._lock = threading.Lock()
        self.config = config

    @property
    def client(self):
        """The underlying botocore client (created, and the gateway started, on first use)."""
        with self._lock:
            if self._client is None:
                url = require_loopback_url(self._gateway_url(), "SageMaker runtime")
                self._client = self._boto_session.client("sagemaker-runtime", endpoint_url=url)
            return self._client

    @property
    def endpoint_url(self) -> str:
        return self.client.meta.endpoint_url

    @property
    def exceptions(self):
        return self.client.exceptions

    def invoke_endpoint(self, **kwargs: Any) -> dict[str, Any]:
        return self.client.invoke_endpoint(**kwargs)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.client, name)
