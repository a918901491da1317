"""The `sagemaker` backend: `sagemaker.Session()` against the real service (`ml.m4.xlarge` by default).

A role and a bucket are required and checked before anything is sent; a missing one, a `local`
instance type or no credentials stop the run with a line that says what to set. With `dry_run` the
same requests are printed instead of sent (`local_runs/backends/dry_run.py`).
"""
from __future__ import annotations

import re

from local_runs.backends.base import PROJECT_PREFIX, Backend
from local_runs.config import ConfigError, Settings

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


def delete_endpoint_and_resources(session, endpoint_name: str) -> list[str]:
    """Delete an endpoint and the endpoint config and model(s) its deploy created.

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


class SageMakerBackend(Backend):
    name = "sagemaker"

    @classmethod
    def open(cls, settings: Settings, persistent: bool = False) -> "SageMakerBackend":
        role, bucket = sagemaker_role_and_bucket(settings)
        import boto3
        import sagemaker

        boto_session = boto3.Session(region_name=settings.region)
        if boto_session.get_credentials() is None:
            raise ConfigError("the sagemaker backend found no AWS credentials: configure a profile (aws configure, "
                              "AWS_PROFILE, aws sso login) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; "
                              "--dry-run shows the requests without any")
        session = sagemaker.Session(boto_session=boto_session, default_bucket=bucket)
        return cls(settings, session, role, bucket)

    def endpoints_to_delete_all(self) -> list[str]:
        """Only this project's endpoints (named review-search*), never every endpoint in the account."""
        return [name for name in super().endpoints_to_delete_all() if name.startswith(PROJECT_PREFIX)]

    def delete_endpoint(self, name: str) -> list[str]:
        """The endpoint, then its endpoint config and model(s): all three are left behind otherwise."""
        return [f"deleted {', '.join(delete_endpoint_and_resources(self.session, name))}"]
