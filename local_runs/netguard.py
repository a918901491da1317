"""Keep the simulator local: every AWS endpoint it calls must be a loopback address.

Loopback means 127.0.0.0/8, ::1 or the name ``localhost``. ``require_loopback_url`` refuses a
configuration up front; ``require_local_environment`` refuses AWS endpoint variables
(``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``, ...) that point off this machine;
``install_request_guard`` also blocks, at send time, any request a boto3 session would make to
a non-loopback host (e.g. STS, a real SageMaker endpoint).
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
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


# The endpoint variables botocore honours for the services sim touches (the global one included).
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SAGEMAKER",
                      "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", "AWS_ENDPOINT_URL_STS")


def require_local_environment(environ=None) -> None:
    """Raise NonLocalEndpointError when an AWS endpoint variable sim would honour is not local."""
    environ = os.environ if environ is None else environ
    for name in ENDPOINT_VARIABLES:
        value = environ.get(name)
        if value and not is_loopback_url(value):
            raise NonLocalEndpointError(
                f"sim refuses to start: {name}={value} is not on this machine, and sim only calls services "
                "on 127.0.0.1 (it starts its own S3 and runtime there); unset the variable, or use "
                "--backend docker or sagemaker"
            )


@contextlib.contextmanager
def no_instance_metadata():
    """Within: botocore does not ask the EC2 instance metadata service (169.254.169.254) for anything."""
    saved = os.environ.get("AWS_EC2_METADATA_DISABLED")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("AWS_EC2_METADATA_DISABLED", None)
        else:
            os.environ["AWS_EC2_METADATA_DISABLED"] = saved


def install_request_guard(boto_session) -> None:
    """Make every client of ``boto_session`` refuse to send a request to a non-loopback host."""

    def _guard(request, **_kwargs):
        if not is_loopback_url(request.url):
            host = urlsplit(request.url).hostname
            raise NonLocalEndpointError(
                f"sim blocked a request to {host!r}: only local endpoints may be called"
            )

    boto_session.events.register_first("before-send", _guard, unique_id="local-runs-sim-guard")
