"""The search page's logic without HTTP: a form's fields -> one endpoint request -> cards or a readable error.

Queries go to the endpoint exactly the way users send them: the backend session's
`sagemaker_runtime_client.invoke_endpoint` (sim: the runtime gateway, so endpoints deployed by other
processes are found by name; docker: the SDK's local runtime client; sagemaker: the real SageMaker
Runtime). The endpoint validates the request; the page's controls only take their bounds from the same
table (`knn.query_request`), and its errors (a ModelError whose OriginalMessage is
`{"error": {"code", "message"}}`) come back as readable messages.
"""
from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Callable

from knn import query_request
from local_runs.ui.cards import present

log = logging.getLogger("local_runs.ui")

JSON_TYPE = "application/json"
# The endpoint's own bounds, for the page's controls; the endpoint still decides.
LIMITS = {
    "n_items": [1, query_request.MAX_N_ITEMS],
    "min_star_rating": [query_request.MIN_STAR_RATING, query_request.MAX_STAR_RATING],
    "offset": [0, query_request.MAX_OFFSET],
    "query_chars": query_request.MAX_QUERY_CHARS,
    "query_sentences": query_request.MAX_QUERY_SENTENCES,
}
DEFAULT_N_ITEMS = 5  # the page shows a few more than the endpoint's default of 3


class PageError(Exception):
    """A request the page server itself refuses or cannot complete; `code` is the HTTP status it answers."""

    def __init__(self, code: int, message: str, source: str = "page"):
        super().__init__(message)
        self.code = code
        self.message = message
        self.source = source

    def as_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "source": self.source}}


def _whole_number(payload: dict, name: str) -> int | None:
    """A form number as an int; None when absent or blank. Bounds are the endpoint's to check."""
    value = payload.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise PageError(400, f"{name} must be a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,9}\s*", value):
        return int(value)
    raise PageError(400, f"{name} must be a whole number, got {value!r}")


def endpoint_request(payload: Any) -> dict:
    """The endpoint request for the page's form: query as typed; filters only when set, so the page
    also works with endpoints that do not know them."""
    if not isinstance(payload, dict):
        raise PageError(400, "the page must send a JSON object")
    query = payload.get("query", "")
    if not isinstance(query, (str, list)):
        raise PageError(400, "query must be text")
    request: dict[str, Any] = {"query": query}
    n_items = _whole_number(payload, "n_items")
    request["n_items"] = DEFAULT_N_ITEMS if n_items is None else n_items
    min_star_rating = _whole_number(payload, "min_star_rating")
    if min_star_rating is not None:
        request["min_star_rating"] = min_star_rating
    offset = _whole_number(payload, "offset")
    if offset:  # 0 is the endpoint's default: leave it out
        request["offset"] = offset
    return request


def _endpoint_message(text: str) -> str:
    """The message inside an endpoint's `{"error": {"code", "message"}}` body, else the text itself."""
    try:
        body = json.loads(text)
    except (ValueError, TypeError):
        return (text or "").strip()
    if isinstance(body, dict) and isinstance(body.get("error"), dict) and body["error"].get("message"):
        return str(body["error"]["message"])
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return (text or "").strip()


def describe_failure(exc: BaseException, endpoint_name: str) -> PageError:
    """A readable PageError for whatever invoke_endpoint raised."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    if isinstance(exc, ClientError):
        response = exc.response
        error = response.get("Error", {})
        code = error.get("Code", "")
        if "OriginalMessage" in response or code == "ModelError":
            status = int(response.get("OriginalStatusCode") or 0)
            message = _endpoint_message(response.get("OriginalMessage") or error.get("Message", ""))
            if not status:  # the model did not answer at all
                return PageError(502, f"endpoint {endpoint_name} did not answer: {message}", "endpoint")
            return PageError(400 if 400 <= status < 500 else 502, message or f"the endpoint answered {status}", "endpoint")
        message = error.get("Message") or str(exc)
        if code in ("ValidationError", "ValidationException") and "not found" in message.lower():
            message += f" Deploy it first (local-runs deploy --name {endpoint_name}) or pick another with --endpoint."
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 502)
        return PageError(status if 400 <= status < 500 else 502, f"{code or 'error'}: {message}", "endpoint")
    if isinstance(exc, EndpointConnectionError):
        return PageError(502, f"cannot reach the SageMaker runtime for endpoint {endpoint_name}: {exc}", "endpoint")
    if isinstance(exc, BotoCoreError):
        return PageError(502, f"AWS client: {exc}", "endpoint")
    return PageError(500, f"{type(exc).__name__}: {exc}", "page")


class SearchPage:
    """The page's logic, without HTTP: one endpoint, reached through a SageMaker runtime client."""

    def __init__(self, runtime_client, endpoint_name: str, backend_name: str = "",
                 clock: Callable[[], float] = time.perf_counter):
        self.runtime = runtime_client
        self.endpoint_name = endpoint_name
        self.backend_name = backend_name
        self.clock = clock

    def info(self) -> dict:
        return {"endpoint": self.endpoint_name, "backend": self.backend_name, "limits": LIMITS,
                "default_n_items": DEFAULT_N_ITEMS}

    def search(self, payload: Any) -> dict:
        """Run one query from the page; raises PageError with a readable message."""
        request = endpoint_request(payload)
        start = self.clock()
        try:
            answer = self.runtime.invoke_endpoint(EndpointName=self.endpoint_name, Body=json.dumps(request),
                                                  ContentType=JSON_TYPE, Accept=JSON_TYPE)
            raw = answer["Body"].read()
        except Exception as exc:  # every failure becomes a message on the page
            error = describe_failure(exc, self.endpoint_name)
            log.info("query failed: %s", error.message)
            raise error from None
        elapsed_ms = (self.clock() - start) * 1000.0
        text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
        try:
            response = json.loads(text)
        except ValueError:
            raise PageError(502, f"the endpoint answered something that is not JSON: {text[:300]!r}", "endpoint") from None
        if isinstance(response, dict) and isinstance(response.get("error"), dict):
            # docker's local runtime client hands a container's 4xx back as if it were an answer
            error = response["error"]
            status = error.get("code") if isinstance(error.get("code"), int) else 400
            raise PageError(400 if 400 <= status < 500 else 502, str(error.get("message") or text), "endpoint")
        if not isinstance(response, dict):
            raise PageError(502, f"the endpoint answered {type(response).__name__}, not a JSON object of products",
                            "endpoint")
        return {"endpoint": self.endpoint_name, "request": request, "elapsed_ms": round(elapsed_ms, 1),
                "products": present(response, offset=request.get("offset", 0)), "raw": response}
