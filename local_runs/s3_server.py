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
one if none is alive, ``discover_daemon()`` finds it, ``stop_daemon()`` ends it.

The daemon keeps its objects on disk (``--store``, default ``<state dir>/s3``): every write is
on disk, atomically (temp file + fsync + rename), before the client gets its answer, and a new
daemon loads them back. So ``local-runs shutdown``, a killed daemon or a reboot loses nothing
and ``deploy`` of an earlier fit still works; ``purge(state_dir)`` deletes them. Why our own:
moto 5.2 (the S3 here) keeps objects in memory only -- its server has no persistence option
(getmoto/moto#1069 suggests pickling its backends, which this project does not load; #9755
proposes file-backed S3 but nothing shipped), and its recorder replays requests rather than
storing objects. MinIO or LocalStack would mean a Go binary or Docker. So a thin WSGI layer
around moto mirrors each bucket to files after every request that may change it (``DiskStore``).
The in-process ``LocalS3`` (``cycle``, tests) stays in memory unless given ``store_dir``: a
``cycle`` uploads, trains, serves and deletes in one process, so nothing it writes is wanted
after it.

Credentials are fixed dummies (moto accepts anything); they are never written to disk or
logged. They only exist in memory and in the environment handed to child processes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
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
        set_environ: bool = True, quiet: bool = True, store_dir: str | os.PathLike | None = None,
    ) -> None:
        self.store_dir = Path(store_dir) if store_dir else None
        self.loaded = 0  # objects loaded back from store_dir
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
        if self.store_dir is not None:
            wsgi_server = getattr(self._server, "_server", None)
            if wsgi_server is None or not hasattr(wsgi_server, "app"):
                self._server.stop()
                raise RuntimeError("cannot keep S3 objects on disk: moto's ThreadedMotoServer no longer "
                                   "exposes its WSGI server (_server.app); pin moto 5.2")
            persisting = _PersistingApp(wsgi_server.app, DiskStore(self.store_dir), self.region)
            persisting.url = self.url
            wsgi_server.app = persisting
            self.loaded = persisting.load()
            persisting.enabled = True
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


# --- keeping objects on disk (the daemon) --------------------------------------------------

STORE_DIRNAME = "s3"  # under the state dir: <state_dir>/s3/<bucket>/...
_BUCKET_FILE = ".bucket.json"
_OBJECT_SUFFIX = ".obj"
_MUTATING = ("PUT", "POST", "DELETE")

logger = logging.getLogger("local_runs.s3_server")


def store_dir(state_dir: str | os.PathLike) -> Path:
    """Where the S3 daemon of ``state_dir`` keeps its objects."""
    return Path(state_dir) / STORE_DIRNAME


def purge(state_dir: str | os.PathLike) -> bool:
    """Delete every object the local S3 of ``state_dir`` keeps on disk; True if there was a store.

    Stop the daemon first (``stop_daemon``): a live one still holds the objects in memory and
    would write them back with the next upload to their bucket.
    """
    root = store_dir(state_dir)
    if not root.exists():
        return False
    shutil.rmtree(root)
    return True


class DiskStore:
    """The objects of a local S3 as files: ``<root>/<bucket>/.bucket.json`` and one file per object,
    ``<root>/<bucket>/<sha256 of the key>.obj``: a JSON header line (key, size, ETag, content type,
    metadata), then the bytes.

    Every file is written to a temp file, fsynced and renamed into place, so a killed daemon never
    leaves a truncated object visible: a reader sees the old object or the new one. Temp files left
    by a kill are removed on the next load.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _bucket_dir(self, bucket: str) -> Path:
        if not bucket or "/" in bucket or bucket in (".", ".."):
            raise ValueError(f"bad bucket name {bucket!r}")
        return self.root / bucket

    def _object_path(self, bucket: str, key: str) -> Path:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return self._bucket_dir(bucket) / f"{digest}{_OBJECT_SUFFIX}"

    @staticmethod
    def _write_atomic(path: Path, parts: list[bytes]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                for part in parts:
                    handle.write(part)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)

    def put_bucket(self, bucket: str, region: str) -> None:
        path = self._bucket_dir(bucket) / _BUCKET_FILE
        if not path.exists():
            self._write_atomic(path, [json.dumps({"bucket": bucket, "region": region}).encode()])

    def delete_bucket(self, bucket: str) -> None:
        shutil.rmtree(self._bucket_dir(bucket), ignore_errors=True)

    def put_object(self, bucket: str, key: str, body: bytes, content_type: str | None,
                   metadata: dict[str, str], etag: str) -> None:
        header = {"key": key, "size": len(body), "etag": etag, "content_type": content_type, "metadata": metadata}
        line = json.dumps(header, ensure_ascii=True).encode() + b"\n"
        self._write_atomic(self._object_path(bucket, key), [line, body])

    def delete_object(self, bucket: str, key: str) -> None:
        self._object_path(bucket, key).unlink(missing_ok=True)

    def buckets(self) -> list[tuple[str, str]]:
        """(bucket, region) of every stored bucket."""
        out = []
        if not self.root.is_dir():
            return out
        for directory in sorted(self.root.iterdir()):
            info = daemon.read_json(directory / _BUCKET_FILE) if directory.is_dir() else None
            if info and info.get("bucket") == directory.name:
                out.append((directory.name, info.get("region") or DEFAULT_REGION))
        return out

    def objects(self, bucket: str):
        """(header, body) of every complete object of ``bucket``; removes leftover temp files."""
        directory = self._bucket_dir(bucket)
        for path in sorted(directory.iterdir()):
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write a kill interrupted: never renamed into place
                continue
            if not path.name.endswith(_OBJECT_SUFFIX):
                continue
            with open(path, "rb") as handle:
                try:
                    header = json.loads(handle.readline())
                except ValueError:
                    logger.error("skipping %s: no header", path)
                    continue
                body = handle.read()
            if len(body) != header.get("size") or path != self._object_path(bucket, header.get("key", "")):
                logger.error("skipping %s: it has %d bytes, its header says %s", path, len(body), header.get("size"))
                continue
            yield header, body


class _PersistingApp:
    """WSGI middleware around moto: after a request that may have changed a bucket succeeds, and
    before its answer is sent, the bucket's changed objects are written to the DiskStore (and the
    deleted ones removed). The diff (list, then fetch what changed) goes through moto's own S3 API,
    so it holds for every operation that writes (put, copy, multipart, batch delete) and does not
    depend on moto's internals.
    """

    def __init__(self, app, store: DiskStore, region: str):
        self.app = app
        self.store = store
        self.region = region
        self.url: str | None = None
        self.enabled = False
        self._lock = threading.Lock()
        self._known: dict[str, dict[str, tuple]] = {}  # bucket -> key -> (etag, size, last modified)
        self._client = None

    def __call__(self, environ, start_response):
        status: list[int] = []

        def _start_response(code, headers, exc_info=None):
            status.append(int(str(code).split()[0]))
            return start_response(code, headers, exc_info)

        result = self.app(environ, _start_response)
        path = environ.get("PATH_INFO") or "/"
        if (self.enabled and environ.get("REQUEST_METHOD") in _MUTATING and status and status[0] < 300
                and not path.startswith("/moto-api")):
            bucket = path.lstrip("/").split("/", 1)[0]
            try:
                self.sync(bucket or None)
            except Exception:  # noqa: BLE001 - the caller must not get a success we did not keep
                logger.exception("could not write bucket %r to %s", bucket, self.store.root)
                if hasattr(result, "close"):
                    result.close()
                raise
        return result

    def client(self):
        if self._client is None:
            self._client = boto_session(self.region, s3_url=self.url).client("s3")
        return self._client

    def _listing(self, bucket: str) -> dict[str, tuple] | None:
        client = self.client()
        out: dict[str, tuple] = {}
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    out[item["Key"]] = (item["ETag"], item["Size"], item["LastModified"].isoformat())
        except client.exceptions.NoSuchBucket:
            return None
        return out

    def sync(self, bucket: str | None = None) -> None:
        """Bring the store in line with the server for ``bucket`` (all buckets when None)."""
        with self._lock:
            client = self.client()
            if bucket is None:
                names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
                for gone in set(self._known) - names:
                    self._sync_bucket(gone)
                for name in names:
                    self._sync_bucket(name)
            else:
                self._sync_bucket(bucket)

    def _sync_bucket(self, bucket: str) -> None:
        listing = self._listing(bucket)
        if listing is None:
            if bucket in self._known:
                self.store.delete_bucket(bucket)
                self._known.pop(bucket)
            return
        known = self._known.setdefault(bucket, {})
        self.store.put_bucket(bucket, self.region)
        client = self.client()
        for key, stamp in listing.items():
            if known.get(key) == stamp:
                continue
            try:
                response = client.get_object(Bucket=bucket, Key=key)
            except client.exceptions.NoSuchKey:  # deleted in the meantime: the next sync removes it
                continue
            body = response["Body"].read()
            self.store.put_object(bucket, key, body, response.get("ContentType"), response.get("Metadata") or {},
                                  response.get("ETag") or "")
            known[key] = (response.get("ETag"), len(body), response["LastModified"].isoformat())
        for key in set(known) - set(listing):
            self.store.delete_object(bucket, key)
            known.pop(key)

    def load(self) -> int:
        """Put every stored object back into the (empty) server; returns how many."""
        client = self.client()
        count = 0
        for bucket, _region in self.store.buckets():
            create_bucket(self.url, bucket, self.region)
            for header, body in self.store.objects(bucket):
                extra = {"ContentType": header["content_type"]} if header.get("content_type") else {}
                client.put_object(Bucket=bucket, Key=header["key"], Body=body,
                                  Metadata=header.get("metadata") or {}, **extra)
                count += 1
        with self._lock:  # what is on disk now matches the server: remember the server's stamps
            self._known = {bucket: self._listing(bucket) or {} for bucket, _region in self.store.buckets()}
        return count


# --- the shared daemon -------------------------------------------------------------------

def discover_daemon(port_file: str | os.PathLike) -> dict[str, Any] | None:
    """Info of the live S3 daemon behind ``port_file`` (url, port, pid, bucket, region) or None."""
    return daemon.discover(port_file)


def ensure_daemon(
    port_file: str | os.PathLike, bucket: str = DEFAULT_BUCKET, region: str = DEFAULT_REGION,
    port: int = 0, log_path: str | os.PathLike | None = None, timeout: float = 300.0,
    store: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The live S3 daemon's info, starting a detached one if none is running.

    An existing daemon is reused as is (its bucket is created if missing). A new one keeps its
    objects in ``store`` (default: ``s3`` beside the port file, i.e. ``store_dir(state_dir)``) and
    starts with what is there (it announces itself once they are loaded, hence the long
    ``timeout``; a daemon that fails exits and is reported at once).
    """
    from local_runs.netguard import require_local_environment

    require_local_environment()  # the sim backend's first step: refuse remote AWS endpoints up front
    port_file = Path(port_file)
    argv = [
        daemon.python(), "-m", "local_runs.s3_server", "--port-file", str(port_file),
        "--bucket", bucket, "--region", region, "--port", str(port),
        "--store", str(Path(store) if store else port_file.parent / STORE_DIRNAME),
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
    parser.add_argument("--store", default=None, help="keep objects in this directory (default: in memory only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s s3_server %(message)s")
    with LocalS3(bucket=args.bucket, region=args.region, port=args.port, set_environ=False,
                 store_dir=args.store) as s3:
        daemon.write_port_file(args.port_file, s3.host, s3.port, bucket=args.bucket, region=args.region,
                               store=args.store)
        logging.info("S3 on %s (bucket %s); port file %s; objects %s", s3.url, args.bucket, args.port_file,
                     f"kept in {args.store} ({s3.loaded} loaded)" if args.store else "in memory only")
        try:
            signum = daemon.wait_for_stop_signal()
            logging.info("signal %s: stopping", signum)
        finally:
            daemon.remove_port_file(args.port_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
