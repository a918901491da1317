"""The search page's HTTP server on 127.0.0.1: the static page and one JSON API.

    GET  /api/info     -> {"endpoint", "backend", "limits": {...}}
    POST /api/search   {"query": str, "n_items": int, "min_star_rating": int|null, "offset": int}
                       -> {"products": [...], "elapsed_ms", "endpoint", "request"}
                       or {"error": {"code", "message", "source"}} with a 4xx/5xx status

The page is plain HTML/CSS/JS (`local_runs/ui_static/`, no build step, nothing fetched from the
internet). Review text is never trusted: the page builds its DOM with textContent only, and every
answer carries a Content-Security-Policy that allows scripts and styles from this server alone.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from local_runs.http_base import Handler, PayloadTooLarge, Server
from local_runs.ui.search_page import JSON_TYPE, PageError, SearchPage

log = logging.getLogger("local_runs.ui")

STATIC_DIR = Path(__file__).resolve().parents[1] / "ui_static"
STATIC_FILES = {  # URL path -> (file, content type); nothing else is served from disk
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
MAX_API_BODY = 64 * 1024  # the page sends one query and a few numbers
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class _Handler(Handler):
    server_version = "review-search-ui"
    # One request per connection: when the page server stops, a browser's next query fails at once
    # instead of reaching a kept-alive connection thread of a server that is gone.
    protocol_version = "HTTP/1.0"
    page: SearchPage  # set on the subclass made by make_server

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        log.debug("%s " + format, self.address_string(), *args)

    def _static(self, status: int, body: bytes, content_type: str) -> None:
        self._send(status, content_type, body, SECURITY_HEADERS)

    def _json(self, status: int, body: dict) -> None:
        self._static(status, json.dumps(body, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

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
            return self._static(200, (STATIC_DIR / name).read_bytes(), content_type)
        if path == "/favicon.ico":
            return self._static(204, b"", "image/x-icon")
        self._json(404, PageError(404, f"no page at {path}").as_json())

    do_HEAD = do_GET

    def do_POST(self):  # noqa: N802
        try:
            body = self.read_body(MAX_API_BODY)
        except PayloadTooLarge:
            return self._json(413, PageError(413, f"the request must have a body of at most {MAX_API_BODY} bytes").as_json())
        except ValueError as exc:
            self.close_connection = True
            return self._json(400, PageError(400, f"malformed request framing: {exc}").as_json())
        if not self._host_ok():
            return self._json(403, PageError(403, "this page answers to 127.0.0.1 and localhost only").as_json())
        if self.path.split("?", 1)[0] != "/api/search":
            return self._json(404, PageError(404, f"no API at {self.path}").as_json())
        # JSON only: a cross-site form cannot send it without a CORS preflight, which this server refuses.
        if (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower() != JSON_TYPE:
            return self._json(415, PageError(415, f"send {JSON_TYPE}").as_json())
        try:
            payload = json.loads(body.decode("utf-8") or "{}")
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


def make_server(page: SearchPage, port: int = 0) -> Server:
    """An HTTP server for the page on 127.0.0.1 (`port` 0: a free one); call serve_forever()."""
    handler = type("SearchPageHandler", (_Handler,), {"page": page})
    return Server(("127.0.0.1", port), handler)


def server_url(server: Server) -> str:
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
