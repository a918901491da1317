"""The three places the same user script runs, behind one small interface chosen by the backend flag.

    with open_backend(settings) as backend:
        backend.session        # a SageMaker session (SDK v2) for this backend
        backend.role           # IAM role ARN (a dummy one locally)
        backend.instance_type  # "local" for sim/docker, ml.m4.xlarge (configurable) on SageMaker
        backend.upload(path)   # -> s3:// URI of the training data, via the SDK's own upload_data

- sim: S3 is a moto server on 127.0.0.1 (in this process for `cycle`, a shared daemon for the
  step-by-step commands), the session is `SimSession`: training and serving run as host processes.
- docker: the SDK's own `LocalSession`, containers in Docker, S3 from docker-compose.yml.
- sagemaker: `sagemaker.Session()` against the real service.

This module keeps the SDK behind the project's interface (SDK v2 reaches end of support 2027-07-06).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from local_runs.config import ConfigError, Settings

DUMMY_ROLE = "arn:aws:iam::111111111111:role/SageMakerRole"
LOCAL_BUCKET = "review-search-local"
DATA_PREFIX = "review-search/data"


@dataclass
class Backend:
    settings: Settings
    session: object
    role: str
    bucket: str
    closers: list[Callable[[], None]] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.settings.backend

    @property
    def instance_type(self) -> str:
        return self.settings.resolved_instance_type

    def upload(self, path: str | Path, prefix: str = DATA_PREFIX) -> str:
        """Upload a reviews file and return the s3:// URI of the folder holding it (the channel)."""
        path = Path(path)
        uri = self.session.upload_data(str(path), bucket=self.bucket, key_prefix=f"{prefix}/{path.stem.split('.')[0]}")
        return uri.rsplit("/", 1)[0]

    def close(self) -> None:
        while self.closers:
            self.closers.pop()()

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def state_dir(settings: Settings) -> Path:
    path = Path(settings.state_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _open_sim(settings: Settings, persistent: bool) -> Backend:
    from local_runs import s3_server
    from local_runs.sim import gateway
    from local_runs.sim.session import SimSession

    directory = state_dir(settings)
    if persistent:
        info = s3_server.ensure_daemon(directory / "s3.json", bucket=LOCAL_BUCKET, region=settings.region)
        os.environ[s3_server.ENDPOINT_ENV] = info["url"]
        runtime = gateway.ensure_daemon(directory / "gateway.json", directory)
        session = SimSession(info["url"], LOCAL_BUCKET, region=settings.region, state_dir=directory,
                             detach_endpoints=True, runtime_endpoint_url=runtime["url"])
        return Backend(settings, session, DUMMY_ROLE, LOCAL_BUCKET, extra={"s3_url": info["url"], "runtime_url": runtime["url"]})
    s3 = s3_server.LocalS3(bucket=LOCAL_BUCKET, region=settings.region).start()
    try:
        session = SimSession(s3.url, LOCAL_BUCKET, region=settings.region, state_dir=directory)
    except BaseException:
        s3.stop()
        raise
    return Backend(settings, session, DUMMY_ROLE, LOCAL_BUCKET, closers=[s3.stop], extra={"s3_url": s3.url})


def _open_docker(settings: Settings, persistent: bool) -> Backend:
    import boto3
    from sagemaker.local import LocalSession

    from local_runs import s3_server

    boto_session = boto3.Session(region_name=settings.region, **{
        k.lower(): v for k, v in s3_server.dummy_credentials().items() if k != "AWS_SESSION_TOKEN"})
    session = LocalSession(boto_session=boto_session, s3_endpoint_url=settings.docker_s3_url,
                           default_bucket=LOCAL_BUCKET)
    session.config = {"local": {"local_code": True}}
    return Backend(settings, session, DUMMY_ROLE, LOCAL_BUCKET, extra={"s3_url": settings.docker_s3_url})


def _open_sagemaker(settings: Settings, persistent: bool) -> Backend:
    if not settings.role:
        raise ConfigError("the sagemaker backend needs an IAM role: set LOCAL_RUNS_ROLE or 'role' in local_runs.toml")
    if not settings.bucket:
        raise ConfigError("the sagemaker backend needs an S3 bucket: set LOCAL_RUNS_BUCKET or 'bucket' in local_runs.toml")
    import boto3
    import sagemaker

    session = sagemaker.Session(boto_session=boto3.Session(region_name=settings.region), default_bucket=settings.bucket)
    return Backend(settings, session, settings.role, settings.bucket)


_OPENERS = {"sim": _open_sim, "docker": _open_docker, "sagemaker": _open_sagemaker}


def open_backend(settings: Settings, persistent: bool = False) -> Backend:
    """Open the backend named by `settings.backend`; `persistent` keeps sim services for later commands."""
    return _OPENERS[settings.backend](settings, persistent)
