"""The HTTP plumbing every local server shares (sim endpoint server, runtime gateway, search page).

One thread per connection, HTTP/1.1 keep-alive, no Nagle delay, one way to read a request body
(Content-Length or chunked, bounded, the excess drained so the connection stays usable), and quiet
about clients that go away. Python's `http.server` is used as is underneath: the servers are small
and local, and a web framework would bring a dependency and an event loop for no gain.

Without TCP_NODELAY a response written as headers then body waits for the client's delayed ACK:
~40 ms added to every request on a kept-alive connection (measured: p50 48 ms -> 6 ms).
"""
from __future__ import annotations

import logging
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger("local_runs.http")

DRAIN_CAP_BYTES = 64 * 1024 * 1024  # past this an oversized body is not read: the connection is closed


class PayloadTooLarge(Exception):
    """The request body is over the server's limit (answer 413)."""


class Handler(BaseHTTPRequestHandler):
    """Base request handler: HTTP/1.1 keep-alive, TCP_NODELAY, idle connections closed after 300 s."""

    protocol_version = "HTTP/1.1"
    timeout = 300  # idle keep-alive connections
    disable_nagle_algorithm = True

    def _send(self, status: int, content_type: str, body: bytes,
              extra: dict[str, str] | None = None, close: bool = False) -> None:
        """One complete response: status, Content-Type/Length, `extra` headers, body (none for HEAD)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def read_body(self, limit: int) -> bytes:
        """The request body, at most `limit` bytes.

        Raises PayloadTooLarge past the limit (the body is drained, or the connection marked for
        closing when it is too big to drain) and ValueError for framing that is not a number.
        """
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked(limit)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError(f"Content-Length {length} is negative")
        if length > limit:
            if length <= DRAIN_CAP_BYTES:
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
            if total > DRAIN_CAP_BYTES:
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

    def log_message(self, fmt, *args):  # the servers log requests themselves
        pass


class Server(ThreadingHTTPServer):
    """A threading HTTP server whose threads never block exit and that ignores clients hanging up."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        """Log a request that failed unexpectedly in one line; the traceback goes to the debug log.

        socketserver's default prints the traceback to stderr, which lands in the middle of a
        command line's output. Clients hanging up are not errors and are not logged.
        """
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        logger.error("server on %s:%s: request from %s:%s failed: %s: %s", *self.server_address[:2],
                     *client_address[:2], type(exc).__name__, exc)
        logger.debug("traceback of the failed request", exc_info=True)
