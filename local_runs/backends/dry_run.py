"""A dry run of the sagemaker backend: the requests the unchanged user script would send, printed.

    local-runs --backend sagemaker --dry-run cycle        (or dry_run = true / LOCAL_RUNS_DRY_RUN=1)

The session is a `sagemaker.Session` -- the same SDK code path as a real run, less the real
service's polling sleeps (`session_class`) -- whose boto3 session is intercepted at botocore's `before-call` event, after the SDK has built each request
and botocore has validated it against the service model, before anything is signed or sent:

* SageMaker (`CreateTrainingJob`, `CreateModel`, `CreateEndpointConfig`, `CreateEndpoint`,
  `Delete*`) and SageMaker Runtime (`InvokeEndpoint`): printed, then answered here with a
  plausible response from a small in-memory model of what was "created" (a training or
  transform job (`CreateTransformJob`) is Completed at once, an endpoint InService, an endpoint answers `{}`). Reads (`Describe*`,
  `List*`) are answered without printing.
* CloudWatch Logs (the SDK tails training logs): answered empty.
* S3 (the training data, `sourcedir.tar.gz`, the repacked `model.tar.gz`): uploads are printed
  and land on a throwaway moto S3 on 127.0.0.1, named like the real bucket, gone when the run
  ends. A model archive the dry run never trained is stood in for by an empty one.
* Anything else (STS, IAM, ...) is refused with `DryRunError`, and a last guard at `before-send`
  blocks any request to a host that is not this machine. Credentials are fixed dummies: the
  user's real ones are never loaded, so nothing could be signed for AWS even by mistake.
SDK telemetry is switched off for the session (it would otherwise call an AWS URL itself).
"""
from __future__ import annotations

import copy
import io
import json
import os
import re
import tarfile
from collections import Counter
from urllib.parse import urlsplit

from local_runs.backends.dry_run_state import DryRunError, FakeSageMaker, ValidationFailed
from local_runs.backends.sagemaker import (PLACEHOLDER_BUCKET, PLACEHOLDER_ROLE, SageMakerBackend,
                                          sagemaker_role_and_bucket)

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

PREFIX = "[dry run]"
_PARAMS_KEY = "local_runs_dry_run_params"
_PRINTED_S3 = {"PutObject", "CreateMultipartUpload", "CreateBucket", "DeleteObject", "DeleteObjects", "CopyObject"}
_MUTATING = re.compile(r"^(Create|Delete|Update|Stop|Start|Add|Put|Invoke)")


def _empty_tar_gz() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz"):
        pass
    return buffer.getvalue()


def _size(body) -> str:
    try:
        n = len(body)
    except TypeError:
        return "size unknown"
    return f"{n} bytes" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.1f} MiB"


def _printable(params: dict, service: str, operation: str) -> dict:
    """Request parameters as they would go out, with a readable Body for InvokeEndpoint."""
    shown = copy.deepcopy(params)
    if service == "sagemaker-runtime" and "Body" in shown:
        body = shown["Body"]
        body = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else body
        try:
            shown["Body"] = json.loads(body)
        except (TypeError, ValueError):
            shown["Body"] = body
    return shown


class DryRun:
    """Intercepts a boto3 session's requests (see the module docstring) and records what it printed."""

    def __init__(self, region: str, role: str, bucket: str, s3_url: str, out=None):
        self.region, self.bucket, self.s3_url = region, bucket, s3_url
        self.out = out or (lambda text: print(text, flush=True))
        account = role.split(":")[4] if role.count(":") >= 5 and role.split(":")[4].isdigit() else "123456789012"
        self.sagemaker = FakeSageMaker(region, account)
        self.requests: list[dict] = []  # every printed request: service, operation, params
        self.uploads: list[str] = []  # s3:// URIs written
        self.answered = Counter()  # reads answered without printing, "service:Operation" -> count
        self._s3_client = None

    # --- wiring -------------------------------------------------------------------------------
    def install(self, boto_session) -> None:
        events = boto_session.events
        events.register("before-parameter-build", self._keep_params, unique_id="local-runs-dry-run-params")
        events.register_first("before-call", self._answer, unique_id="local-runs-dry-run-answer")
        events.register_first("before-send", self._guard, unique_id="local-runs-dry-run-guard")

    def _keep_params(self, params, context, **_kwargs):
        context[_PARAMS_KEY] = dict(params)

    def _guard(self, request, **_kwargs):
        host = (urlsplit(request.url).hostname or "").lower()
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise DryRunError(f"the dry run blocked a request to {host!r}: nothing may leave this machine")

    def _answer(self, model, context, **_kwargs):
        from botocore.awsrequest import AWSResponse
        from botocore.response import StreamingBody

        service, operation = model.service_model.service_name, model.name
        params = context.get(_PARAMS_KEY, {})
        if service == "s3":
            self._s3(operation, params)
            return None  # on to the local moto S3
        status, body = 200, None
        try:
            if service == "sagemaker":
                body = self.sagemaker(operation, params)
            elif service == "sagemaker-runtime" and operation == "InvokeEndpoint":
                payload = b"{}"
                body = {"Body": StreamingBody(io.BytesIO(payload), len(payload)), "ContentType": "application/json",
                        "InvokedProductionVariant": "AllTraffic"}
            elif service == "logs":
                body = {"logStreams": [], "events": [], "nextForwardToken": "f/0", "nextBackwardToken": "b/0"}
            else:
                raise DryRunError(f"the dry run does not send {service}:{operation} (it would go to AWS)")
        except ValidationFailed as exc:
            status, body = 400, {"Error": {"Code": "ValidationException", "Message": str(exc)}}
        if _MUTATING.match(operation) and service in ("sagemaker", "sagemaker-runtime"):
            self._print_request(service, operation, params)
        else:
            self.answered[f"{service}:{operation}"] += 1
        body.setdefault("ResponseMetadata", {"RequestId": "dry-run", "HTTPStatusCode": status, "HTTPHeaders": {}})
        return AWSResponse(f"dry-run://{service}", status, {}, None), body

    # --- S3 -----------------------------------------------------------------------------------
    def _local_s3(self):
        if self._s3_client is None:
            import boto3

            self._s3_client = boto3.Session(aws_access_key_id="dryrun", aws_secret_access_key="dryrun",
                                            region_name=self.region).client("s3", endpoint_url=self.s3_url)
        return self._s3_client

    def _s3(self, operation: str, params: dict) -> None:
        uri = f"s3://{params.get('Bucket', '')}/{params.get('Key', '')}".rstrip("/")
        if operation in ("PutObject", "CreateMultipartUpload"):
            self.uploads.append(uri)
            size = _size(params["Body"]) if "Body" in params else "multipart"
            self.out(f"{PREFIX} would upload {uri} ({size}); kept on a throwaway local S3 instead")
        elif operation in _PRINTED_S3:
            self.out(f"{PREFIX} would send s3 {operation} {uri}; done on the throwaway local S3 instead")
        elif operation in ("HeadObject", "GetObject") and uri.endswith(".tar.gz"):
            self._stand_in_archive(params["Bucket"], params["Key"])
        if operation not in _PRINTED_S3:
            self.answered[f"s3:{operation}"] += 1

    def _stand_in_archive(self, bucket: str, key: str) -> None:
        from botocore.exceptions import ClientError

        client = self._local_s3()
        try:
            client.head_object(Bucket=bucket, Key=key)
        except ClientError:
            client.put_object(Bucket=bucket, Key=key, Body=_empty_tar_gz())
            self.out(f"{PREFIX} s3://{bucket}/{key} does not exist (no training ran): an empty archive stands in for it")

    # --- output -------------------------------------------------------------------------------
    def _print_request(self, service: str, operation: str, params: dict) -> None:
        shown = _printable(params, service, operation)
        self.requests.append({"service": service, "operation": operation, "params": shown})
        self.out(f"{PREFIX} would send {service} {operation}:\n{json.dumps(shown, indent=2, default=str)}")

    def operations(self) -> list[str]:
        return [r["operation"] for r in self.requests]

    def request(self, operation: str) -> dict:
        """The parameters of the last printed request of that operation."""
        for r in reversed(self.requests):
            if r["operation"] == operation:
                return r["params"]
        raise KeyError(f"no {operation} request was printed; printed: {', '.join(self.operations()) or 'none'}")

    def summary(self) -> str:
        counts = Counter(self.operations())
        printed = ", ".join(f"{op}" + (f" x{n}" if n > 1 else "") for op, n in counts.items()) or "none"
        reads = ", ".join(f"{op.split(':', 1)[1]}" + (f" x{n}" if n > 1 else "")
                          for op, n in sorted(self.answered.items())) or "none"
        lines = [f"{PREFIX} nothing was sent to AWS. Printed: {printed}; S3 uploads: {len(self.uploads)}.",
                 f"{PREFIX} answered locally without printing: {reads}."]
        lines += [f"{PREFIX} note: {note}" for note in dict.fromkeys(self.sagemaker.notes)]
        return "\n".join(lines)

    def finish(self) -> None:
        self.out(self.summary())


def banner(settings, role: str, bucket: str) -> str:
    lines = [f"{PREFIX} sagemaker backend, region {settings.region}, instance type {settings.resolved_instance_type}: "
             "requests are printed and answered here, never sent; S3 writes go to a throwaway local S3."]
    if role == PLACEHOLDER_ROLE:
        lines.append(f"{PREFIX} no role set: {role} stands in (set LOCAL_RUNS_ROLE or 'role' before a real run)")
    if bucket == PLACEHOLDER_BUCKET:
        lines.append(f"{PREFIX} no bucket set: {bucket} stands in (set LOCAL_RUNS_BUCKET or 'bucket' before a real run)")
    return "\n".join(lines)


_SESSION_CLASS = None


def session_class():
    """`sagemaker.Session` without the real service's waiting: nothing runs, so nothing to wait for.

    `wait_for_endpoint` polls at once instead of sleeping 30 s first; `logs_for_job`,
    `logs_for_processing_job` and `logs_for_transform_job` (and the two waits that call them) read the
    job's status once instead of sleeping (10 s before the first look) and tailing CloudWatch.
    """
    global _SESSION_CLASS
    if _SESSION_CLASS is None:
        import sagemaker
        from sagemaker.session import _check_job_status, secondary_training_status_message

        class DryRunSession(sagemaker.Session):
            def wait_for_endpoint(self, endpoint, poll=30, live_logging=False):
                return super().wait_for_endpoint(endpoint, poll=0.001, live_logging=live_logging)

            def logs_for_job(self, job_name, wait=False, poll=10, log_type="All", timeout=None):
                description = self.sagemaker_client.describe_training_job(TrainingJobName=job_name)
                print(secondary_training_status_message(description, None), flush=True)
                if wait:
                    _check_job_status(job_name, description, "TrainingJobStatus")
                return description

            def _read_once(self, job_name, wait, describe, kind):
                """The job's description (`describe(<kind>JobName=...)`), its status checked when waiting."""
                description = describe(**{f"{kind}JobName": job_name})
                if wait:
                    _check_job_status(job_name, description, f"{kind}JobStatus")
                return description

            def logs_for_processing_job(self, job_name, wait=False, poll=10):
                return self._read_once(job_name, wait, self.sagemaker_client.describe_processing_job, "Processing")

            def wait_for_processing_job(self, job, poll=5):
                return self.logs_for_processing_job(job, wait=True)

            def logs_for_transform_job(self, job_name, wait=False, poll=10):
                return self._read_once(job_name, wait, self.sagemaker_client.describe_transform_job, "Transform")

            def wait_for_transform_job(self, job, poll=5):
                return self.logs_for_transform_job(job, wait=True)

        _SESSION_CLASS = DryRunSession
    return _SESSION_CLASS


def open_session(settings, role: str, bucket: str, out=None):
    """A `sagemaker.Session` whose requests are printed, not sent; returns (session, DryRun, the local S3)."""
    from sagemaker.config import load_sagemaker_config

    from local_runs import s3_server
    from local_runs.sdk_config import memoize_config_validation, with_telemetry_opt_out

    memoize_config_validation()  # the SDK re-validates its config on every lookup: ~8 s of a dry-run transform
    out = out or (lambda text: print(text, flush=True))
    out(banner(settings, role, bucket))
    s3 = s3_server.LocalS3(bucket=bucket, region=settings.region, set_environ=False).start()
    try:
        boto_session = s3_server.boto_session(settings.region, s3_url=s3.url)  # dummy credentials only
        dry = DryRun(settings.region, role, bucket, s3.url, out=out)
        dry.install(boto_session)
        sdk_config = with_telemetry_opt_out(load_sagemaker_config(s3_resource=boto_session.resource("s3")))
        session = session_class()(boto_session=boto_session, default_bucket=bucket, sagemaker_config=sdk_config)
    except BaseException:
        s3.stop()
        raise
    return session, dry, s3


class DryRunBackend(SageMakerBackend):
    """The sagemaker backend with every request printed and answered here; nothing is sent, nothing trained."""

    remembers_models = False
    runs_jobs = False

    @classmethod
    def open(cls, settings, persistent: bool = False, out=None) -> "DryRunBackend":
        role, bucket = sagemaker_role_and_bucket(settings)
        return open_backend(settings, role, bucket, out=out)


def open_backend(settings, role: str, bucket: str, out=None) -> DryRunBackend:
    """A dry-run backend for an already checked role and bucket (tests print into `out`)."""
    session, dry, s3 = open_session(settings, role, bucket, out=out)
    return DryRunBackend(settings, session, role, bucket, closers=[s3.stop, dry.finish],
                         extra={"dry_run": dry, "s3_url": s3.url})
