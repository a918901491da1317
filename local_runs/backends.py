"""The three places the same user script runs, behind one small interface chosen by the backend flag.

    with open_backend(settings) as backend:
        backend.session        # a SageMaker session (SDK v2) for this backend
        backend.role           # IAM role ARN (a dummy one locally)
        backend.instance_type  # "local" for sim/docker, ml.m4.xlarge (configurable) on SageMaker
        backend.upload(path)   # -> s3:// URI of the training data, via the SDK's own upload_data

- sim: S3 is a moto server on 127.0.0.1 (in this process for `cycle`, a shared daemon for the
  step-by-step commands), the session is `SimSession`: training and serving run as host processes.
- docker: the SDK's own `LocalSession`, containers in Docker, S3 from docker-compose.yml
  (`docker_mode.py`).
- sagemaker: `sagemaker.Session()` against the real service; with `dry_run` the requests are
  printed, not sent (`dry_run.py`).

This module keeps the SDK behind the project's interface (SDK v2 reaches end of support 2027-07-06).
"""
from __future__ import annotations

import os
import re
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
    """The SDK's own LocalSession; S3 from docker-compose.yml; see local_runs/docker_mode.py."""
    from local_runs import docker_mode

    session, extra = docker_mode.open_session(settings, state_dir(settings), LOCAL_BUCKET)
    return Backend(settings, session, DUMMY_ROLE, LOCAL_BUCKET, extra=extra)


# --- sagemaker -------------------------------------------------------------------------------------
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
CLOUD_INSTANCE_TYPE = re.compile(r"^ml\.[a-z0-9-]+\.[a-z0-9]+$")
# A dry run may go without a role or bucket: these stand in, plainly named, in what it prints.
PLACEHOLDER_ROLE = "arn:aws:iam::123456789012:role/SET-LOCAL_RUNS_ROLE"
PLACEHOLDER_BUCKET = "set-local-runs-bucket"


def sagemaker_role_and_bucket(settings: Settings) -> tuple[str, str]:
    """The role ARN and bucket for the sagemaker backend, checked; placeholders only in a dry run."""
    role, bucket = settings.role, settings.bucket
    if not role and not settings.dry_run:
        raise ConfigError("the sagemaker backend needs an IAM role: set LOCAL_RUNS_ROLE or 'role' in local_runs.toml "
                          "(the ARN of a role SageMaker can assume, e.g. arn:aws:iam::123456789012:role/SageMakerExecution)")
    if not bucket and not settings.dry_run:
        raise ConfigError("the sagemaker backend needs an S3 bucket: set LOCAL_RUNS_BUCKET or 'bucket' in local_runs.toml "
                          "(a bucket name in the same region, not an s3:// URI)")
    if role and not ROLE_ARN.match(role):
        raise ConfigError(f"role {role!r} (from {settings.sources.get('role', '?')}) is not an IAM role ARN; "
                          "expected arn:aws:iam::<12-digit account>:role/<name>")
    if bucket and not BUCKET_NAME.match(bucket):
        hint = " (give the name only, without s3:// or a path)" if "/" in bucket or ":" in bucket else ""
        raise ConfigError(f"bucket {bucket!r} (from {settings.sources.get('bucket', '?')}) is not an S3 bucket name{hint}")
    instance_type = settings.resolved_instance_type
    if not CLOUD_INSTANCE_TYPE.match(instance_type):
        raise ConfigError(f"instance type {instance_type!r} (from {settings.sources.get('instance_type', '?')}) "
                          "is not a SageMaker instance type such as ml.m4.xlarge; 'local' is for sim and docker")
    return role or PLACEHOLDER_ROLE, bucket or PLACEHOLDER_BUCKET


def _open_sagemaker(settings: Settings, persistent: bool) -> Backend:
    role, bucket = sagemaker_role_and_bucket(settings)
    if settings.dry_run:
        from local_runs import dry_run

        return dry_run.open_backend(settings, role, bucket)
    import boto3
    import sagemaker

    boto_session = boto3.Session(region_name=settings.region)
    if boto_session.get_credentials() is None:
        raise ConfigError("the sagemaker backend found no AWS credentials: configure a profile (aws configure, "
                          "AWS_PROFILE, aws sso login) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; "
                          "--dry-run shows the requests without any")
    session = sagemaker.Session(boto_session=boto_session, default_bucket=bucket)
    return Backend(settings, session, role, bucket)


def delete_endpoint_and_resources(session, endpoint_name: str) -> list[str]:
    """Delete an endpoint and the endpoint config and model(s) its deploy created (sagemaker).

    Returns what was deleted, as "kind name". The endpoint goes first: it is what is billed.
    """
    client = session.sagemaker_client
    config_name = client.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
    variants = client.describe_endpoint_config(EndpointConfigName=config_name).get("ProductionVariants", [])
    models = list(dict.fromkeys(v["ModelName"] for v in variants if v.get("ModelName")))
    session.delete_endpoint(endpoint_name)
    session.delete_endpoint_config(config_name)
    for model in models:
        session.delete_model(model)
    return [f"endpoint {endpoint_name}", f"endpoint config {config_name}", *(f"model {m}" for m in models)]


_OPENERS = {"sim": _open_sim, "docker": _open_docker, "sagemaker": _open_sagemaker}


def open_backend(settings: Settings, persistent: bool = False) -> Backend:
    """Open the backend named by `settings.backend`; `persistent` keeps sim services for later commands."""
    if settings.dry_run and settings.backend != "sagemaker":
        raise ConfigError(f"dry_run (from {settings.sources.get('dry_run', '?')}) applies to the sagemaker backend only; "
                          f"{settings.backend} sends nothing to AWS anyway")
    return _OPENERS[settings.backend](settings, persistent)
