"""A search page for a running endpoint: `local-runs ui`, `deploy --ui`, `cycle --ui`.

A small HTTP server on 127.0.0.1 serves plain HTML/CSS/JS (`local_runs/ui_static/`, no build step,
nothing fetched from the internet) and one JSON API the page calls:

    GET  /api/info     -> {"endpoint", "backend", "limits": {...}}
    POST /api/search   {"query": str, "n_items": int, "min_star_rating": int|null, "offset": int}
                       -> {"products": [...], "elapsed_ms", "endpoint", "request"}
                       or {"error": {"code", "message", "source"}} with a 4xx/5xx status

Queries go to the endpoint exactly the way users send them: the backend session's
`sagemaker_runtime_client.invoke_endpoint` (sim: the runtime gateway, so endpoints deployed by
other processes are found by name; docker: the SDK's local runtime client; sagemaker: the real
SageMaker Runtime). The endpoint validates the request; its errors (a ModelError whose
OriginalMessage is `{"error": {"code", "message"}}`) come back as readable messages.

Review text is never trusted: the page builds its DOM with textContent only, and every answer
carries a Content-Security-Policy that allows scripts and styles from this server alone.
"""
from __future__ import annotations

import html
import json
import logging
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("local_runs.ui")

STATIC_DIR = Path(__file__).resolve().parent / "ui_static"
STATIC_FILES = {  # URL path -> (file, content type); nothing else is served from disk
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
JSON_TYPE = "application/json"
MAX_API_BODY = 64 * 1024  # the page sends one query and a few numbers
# The endpoint's own bounds (knn/query_request.py), for the page's controls; the endpoint still decides.
LIMITS = {"n_items": [1, 100], "min_star_rating": [1, 5], "offset": [0, 1000], "query_chars": 2000}
DEFAULT_N_ITEMS = 5
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class PageError(Exception):
    """A request the page server itself refuses or cannot complete; `code` is the HTTP status it answers."""

    def __init__(self, code: int, message: str, source: str = "page"):
        super().__init__(message)
        self.code = code
        self.message = message
        self.source = source

    def as_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "source": self.source}}


# --- presenting results ----------------------------------------------------------------------------
def _paragraphs(text: str) -> list[str]:
    """Review text as the search saw it: HTML breaks end paragraphs, entities decoded, tags dropped."""
    from knn.sentences import clean_text

    return clean_text(text or "")


def _sentence_pattern(sentence: str) -> re.Pattern | None:
    """Matches the sentence in its paragraph, whatever the spacing (the splitter adds a space after
    "great.My", and collapses runs of spaces)."""
    words = sentence.split()
    if not words:
        return None
    return re.compile(r"\s*".join(re.escape(word) for word in words), re.IGNORECASE)


def highlight(review_body: str, sentence: str) -> tuple[list[list[dict]], bool]:
    """Split a review into paragraphs of `{"text", "match"}` segments, marking the matched sentence.

    Returns (paragraphs, found). When the sentence is not in the body (e.g. a headline matched), the
    paragraphs come back unmarked and `found` is False.
    """
    paragraphs = _paragraphs(review_body)
    pattern = _sentence_pattern(html.unescape(sentence or ""))
    out, found = [], False
    for paragraph in paragraphs:
        match = pattern.search(paragraph) if pattern is not None and not found else None
        if match is None:
            out.append([{"text": paragraph, "match": False}])
            continue
        found = True
        parts = [(paragraph[:match.start()], False), (match.group(0), True), (paragraph[match.end():], False)]
        out.append([{"text": text, "match": marked} for text, marked in parts if text])
    return out, found


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def present(response: dict, offset: int = 0) -> list[dict]:
    """The endpoint's `{"pred0": {...}, ...}` as a list of cards, best first (all text unescaped,
    still plain text: the page inserts it with textContent)."""
    def rank_of(key: str) -> int:
        digits = key[4:] if key.startswith("pred") else ""
        return int(digits) if digits.isdigit() else sys.maxsize

    products = []
    for position, key in enumerate(sorted(response, key=rank_of)):
        item = response[key]
        if not isinstance(item, dict):
            continue
        sentence = html.unescape(str(item.get("matched_sentence") or ""))
        review, found = highlight(str(item.get("review_body") or ""), sentence)
        stars = _number(item.get("star_rating"))
        score = _number(item.get("product_search_score"))
        products.append({
            "rank": offset + position + 1,
            "product_id": str(item.get("product_id", "")),
            "product_title": html.unescape(str(item.get("product_title") or "(no title)")),
            "star_rating": stars,
            "review_id": str(item.get("review_id", "")),
            "review_headline": " ".join(_paragraphs(str(item.get("review_headline") or ""))),
            "review": review,
            "matched_sentence": sentence,
            "matched_in_review": found,
            "score": score,
        })
    return products


# --- talking to the endpoint -----------------------------------------------------------------------
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


# --- HTTP ------------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server_version = "review-search-ui"
    page: SearchPage  # set on the subclass made by make_server

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, body: dict) -> None:
        self._send(status, json.dumps(body, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _host_ok(self) -> bool:
        """Only this machine's names: a page elsewhere that rebinds its DNS name to 127.0.0.1 gets nothing."""
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in ("127.0.0.1", "localhost", "[::1]")

    def do_GET(self):  # noqa: N802 - http.server's naming
        if not self._host_ok():
            return self._json(403, PageError(403, "this page answers to 127.0.0.1 and localhost only").as_json())
        path = self.path.split("?", 1)[0]
        if path == "/api/info":
            return self._json(200, self.page.info())
        if path in STATIC_FILES:
            name, content_type = STATIC_FILES[path]
            return self._send(200, (STATIC_DIR / name).read_bytes(), content_type)
        if path == "/favicon.ico":
            return self._send(204, b"", "image/x-icon")
        self._json(404, PageError(404, f"no page at {path}").as_json())

    do_HEAD = do_GET

    def do_POST(self):  # noqa: N802
        if not self._host_ok():
            return self._json(403, PageError(403, "this page answers to 127.0.0.1 and localhost only").as_json())
        if self.path.split("?", 1)[0] != "/api/search":
            return self._json(404, PageError(404, f"no API at {self.path}").as_json())
        # JSON only: a cross-site form cannot send it without a CORS preflight, which this server refuses.
        if (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower() != JSON_TYPE:
            return self._json(415, PageError(415, f"send {JSON_TYPE}").as_json())
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_API_BODY:
            return self._json(413, PageError(413, f"the request must have a body of at most {MAX_API_BODY} bytes").as_json())
        try:
            payload = json.loads(self.rfile.read(length).decode("utf-8") or "{}")
        except (ValueError, UnicodeDecodeError):
            return self._json(400, PageError(400, "the page sent a body that is not JSON").as_json())
        try:
            return self._json(200, self.page.search(payload))
        except PageError as error:
            return self._json(error.code, error.as_json())
        except Exception as exc:  # never a blank page
            log.exception("search failed")
            error = PageError(500, f"{type(exc).__name__}: {exc}")
            return self._json(500, error.as_json())


def make_server(page: SearchPage, port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for the page on 127.0.0.1 (`port` 0: a free one); call serve_forever()."""
    handler = type("SearchPageHandler", (_Handler,), {"page": page})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    return server


def server_url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"


class RunningPage:
    """The page served from a background thread (tests, and callers that keep their main thread)."""

    def __init__(self, page: SearchPage, port: int = 0):
        self.server = make_server(page, port)
        self.url = server_url(self.server)
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="search-page", daemon=True)

    def __enter__(self) -> "RunningPage":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


def page_for(backend, endpoint_name: str) -> SearchPage:
    """A SearchPage that queries `endpoint_name` through `backend`'s session, like users do."""
    return SearchPage(backend.session.sagemaker_runtime_client, endpoint_name, backend_name=backend.name)


def serve_until_interrupted(backend, endpoint_name: str, port: int = 0, open_browser: bool = False,
                            after: str = "stop the page") -> None:
    """Serve the page for `endpoint_name` until Ctrl-C, then return (the caller goes on)."""
    try:
        server = make_server(page_for(backend, endpoint_name), port)
    except OSError as exc:
        raise OSError(f"cannot serve the search page on 127.0.0.1:{port}: {exc.strerror or exc}") from None
    url = server_url(server)
    print(f"search page for endpoint {endpoint_name}: {url}\npress Ctrl-C to {after}", flush=True)
    if open_browser:
        import webbrowser

        threading.Timer(0.2, webbrowser.open, args=(url,)).start()
    try:
        with _sigterm_as_ctrl_c():
            server.serve_forever()
    except KeyboardInterrupt:
        print("\nsearch page stopped", flush=True)
    finally:
        server.server_close()


@contextmanager
def _sigterm_as_ctrl_c():
    """While the page is up, `kill PID` stops it like Ctrl-C does, so `cycle --ui` still deletes its endpoint."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
