"""Keep the simulator local: every AWS endpoint it calls must be a loopback address.

Loopback means 127.0.0.0/8, ::1 or the name ``localhost``. ``require_loopback_url`` refuses a
configuration up front; ``install_request_guard`` also blocks, at send time, any request a
boto3 session would make to a non-loopback host (e.g. STS, a real SageMaker endpoint).
"""
from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


class NonLocalEndpointError(RuntimeError):
    """An AWS endpoint the simulator would call is not on this machine."""


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str | None) -> bool:
    if not url:
        return False
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.scheme in ("http", "https") and is_loopback_host(parts.hostname)


def require_loopback_url(url: str | None, what: str) -> str:
    """Return ``url`` when it is a loopback http(s) URL, else raise NonLocalEndpointError."""
    if not is_loopback_url(url):
        raise NonLocalEndpointError(
            f"sim refuses to start: the {what} endpoint {url!r} is not local "
            "(allowed: 127.0.0.0/8, ::1, localhost)"
        )
    return url


def install_request_guard(boto_session) -> None:
    """Make every client of ``boto_session`` refuse to send a request to a non-loopback host."""

    def _guard(request, **_kwargs):
        if not is_loopback_url(request.url):
            host = urlsplit(request.url).hostname
            raise NonLocalEndpointError(
                f"sim blocked a request to {host!r}: only local endpoints may be called"
            )

    boto_session.events.register_first("before-send", _guard, unique_id="local-runs-sim-guard")
