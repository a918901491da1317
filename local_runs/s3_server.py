"""A local S3 (moto ``ThreadedMotoServer``) on 127.0.0.1, in-process or as a shared daemon.

In-process (tests, one-shot runs)::

    with LocalS3(bucket="local-runs") as s3:
        s3.url            # http://127.0.0.1:<port>  (port 0 -> a free port, read back)
        s3.boto_session() # boto3 session with dummy credentials
        ...               # AWS_ENDPOINT_URL_S3 is set in os.environ while inside

Shared by several processes (the CLI)::

    python -m local_runs.s3_server --port-file .local_runs/s3.json [--bucket B] [--region R]

The daemon writes the port file (pid, port, url, bucket, region; no credentials) once it
listens and removes it when it stops (SIGTERM/SIGINT/SIGHUP). ``ensure_daemon()`` starts
one if none is alive, ``discover_daemon()`` finds it, ``stop_daemon()`` ends it. State
lives in the daemon's memory: stopping it forgets every object.

Credentials are fixed dummies (moto accepts anything); they are never written to disk or
logged. They only exist in memory and in the environment handed to child processes.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from local_runs import daemon

DEFAULT_BUCKET = "local-runs"
DEFAULT_REGION = "us-east-1"
DUMMY_ACCESS_KEY_ID = "localrunsdummykey"
DUMMY_SECRET_ACCESS_KEY = "localrunsdummysecret"  # not a secret: moto accepts anything
ENDPOINT_ENV = "AWS_ENDPOINT_URL_S3"
TIMEOUT_ENV = "LOCAL_RUNS_S3_TIMEOUT"  # seconds a local S3 call may wait for an answer (default 30)
DEFAULT_TIMEOUT = 30.0


def dummy_credentials() -> dict[str, str]:
    """The dummy credentials as AWS environment variables."""
    return {"AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY}


def boto_session(region: str = DEFAULT_REGION, s3_url: str | None = None):
    """A boto3 session with the dummy credentials (never the user's real ones).

    With ``s3_url``, every S3 client or resource made from it defaults to that endpoint
    (the SDK creates some, e.g. when repacking a model, without an endpoint_url), with
    ``client_config()`` timeouts.
    """
    import boto3

    def _local(service_name, args, kwargs):
        if service_name == "s3" and s3_url and not args[4:5] and kwargs.get("endpoint_url") is None:
            kwargs["endpoint_url"] = s3_url
        if service_name == "s3" and not args[8:9]:  # a dead or hung local S3 must fail, not hang
            kwargs["config"] = client_config().merge(kwargs["config"]) if kwargs.get("config") else client_config()
        return kwargs

    class _Session(boto3.Session):
        def client(self, service_name, *args, **kwargs):
            return super().client(service_name, *args, **_local(service_name, args, kwargs))

        def resource(self, service_name, *args, **kwargs):
            return super().resource(service_name, *args, **_local(service_name, args, kwargs))

    return _Session(
        aws_access_key_id=DUMMY_ACCESS_KEY_ID,
        aws_secret_access_key=DUMMY_SECRET_ACCESS_KEY,
        region_name=region,
    )


def client_config():
    """botocore settings for local S3 clients: short timeouts and two tries.

    The S3 is on this machine: it answers in milliseconds or it is gone/hung. Without these a hung
    server stalls each call for 3 x 60 s (botocore's defaults). ``LOCAL_RUNS_S3_TIMEOUT`` sets the
    read timeout (seconds, default 30); connecting gets at most 5 s.
    """
    from botocore.config import Config

    try:
        timeout = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)
    except ValueError:
        timeout = DEFAULT_TIMEOUT
    timeout = max(timeout, 0.1)
    return Config(connect_timeout=min(5.0, timeout), read_timeout=timeout,
                  retries={"max_attempts": 2, "mode": "standard"})


def create_bucket(url: str, bucket: str, region: str = DEFAULT_REGION) -> None:
    """Create ``bucket`` on the S3 at ``url`` (no error if it already exists)."""
    client = boto_session(region, s3_url=url).client("s3")
    try:
        if region == "us-east-1":
            client.create_bucket(Bucket=bucket)
        else:
            client.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region}
            )
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass


class LocalS3:
    """A moto S3 server on 127.0.0.1 in a thread of this process, with one explicit bucket."""

    def __init__(
        self, bucket: str = DEFAULT_BUCKET, region: str = DEFAULT_REGION, port: int = 0,
        set_environ: bool = True, quiet: bool = True,
    ) -> None:
        self.bucket = bucket
        self.region = region
        self._port = port
        self._set_environ = set_environ
        self._quiet = quiet
        self._server = None
        self._saved_env: str | None = None
        self.host = daemon.LOOPBACK
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("LocalS3 is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> "LocalS3":
        from moto.server import ThreadedMotoServer

        from local_runs.netguard import require_local_environment

        if self._set_environ:  # about to take over AWS_ENDPOINT_URL_S3: refuse a remote one, never ignore it
            require_local_environment()

        if self._quiet:
            werkzeug_logger = logging.getLogger("werkzeug")
            if werkzeug_logger.level == logging.NOTSET:
                werkzeug_logger.setLevel(logging.WARNING)
        if self._port and daemon.port_accepts(self.host, self._port):
            raise OSError(f"port {self._port} on {self.host} is already in use")
        self._server = ThreadedMotoServer(ip_address=self.host, port=self._port, verbose=False)
        self._server.start()
        self.port = int(self._server.get_host_and_port()[1])
        create_bucket(self.url, self.bucket, self.region)
        if self._set_environ:
            self._saved_env = os.environ.get(ENDPOINT_ENV)
            os.environ[ENDPOINT_ENV] = self.url
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._set_environ:
            if self._saved_env is None:
                os.environ.pop(ENDPOINT_ENV, None)
            else:
                os.environ[ENDPOINT_ENV] = self._saved_env
            self._set_environ = False

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def boto_session(self):
        """Dummy-credential boto3 session whose S3 clients default to this server."""
        return boto_session(self.region, s3_url=self.url)

    def client(self):
        """A boto3 S3 client for this server."""
        return self.boto_session().client("s3", endpoint_url=self.url)

    def child_env(self) -> dict[str, str]:
        """Variables a child process needs to use this S3 (endpoint, region, dummy credentials)."""
        return {
            ENDPOINT_ENV: self.url,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            **dummy_credentials(),
        }


# --- the shared daemon -------------------------------------------------------------------

def discover_daemon(port_file: str | os.PathLike) -> dict[str, Any] | None:
    """Info of the live S3 daemon behind ``port_file`` (url, port, pid, bucket, region) or None."""
    return daemon.discover(port_file)


def ensure_daemon(
    port_file: str | os.PathLike, bucket: str = DEFAULT_BUCKET, region: str = DEFAULT_REGION,
    port: int = 0, log_path: str | os.PathLike | None = None, timeout: float = 60.0,
) -> dict[str, Any]:
    """The live S3 daemon's info, starting a detached one if none is running.

    An existing daemon is reused as is (its bucket is created if missing).
    """
    from local_runs.netguard import require_local_environment

    require_local_environment()  # the sim backend's first step: refuse remote AWS endpoints up front
    port_file = Path(port_file)
    argv = [
        daemon.python(), "-m", "local_runs.s3_server", "--port-file", str(port_file),
        "--bucket", bucket, "--region", region, "--port", str(port),
    ]
    info = daemon.ensure(port_file, argv, log_path or port_file.with_suffix(".log"), timeout=timeout)
    if bucket != info.get("bucket"):
        create_bucket(info["url"], bucket, info.get("region", region))
    return info


def stop_daemon(port_file: str | os.PathLike, timeout: float = 10.0) -> bool:
    """Stop the S3 daemon behind ``port_file``; True when one was running."""
    return daemon.stop_daemon(port_file, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_runs.s3_server", description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", required=True, help="where to announce pid/port (JSON)")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (default)")
    parser.add_argument("--bucket", default=DEFAULT_BUCKET)
    parser.add_argument("--region", default=DEFAULT_REGION)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s s3_server %(message)s")
    with LocalS3(bucket=args.bucket, region=args.region, port=args.port, set_environ=False) as s3:
        daemon.write_port_file(args.port_file, s3.host, s3.port, bucket=args.bucket, region=args.region)
        logging.info("S3 on %s (bucket %s); port file %s", s3.url, args.bucket, args.port_file)
        try:
            signum = daemon.wait_for_stop_signal()
            logging.info("signal %s: stopping", signum)
        finally:
            daemon.remove_port_file(args.port_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
