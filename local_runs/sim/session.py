"""``SimSession``: the SDK's ``LocalSession`` with host processes instead of Docker.

Only the container runtime is swapped. The session keeps the SDK's S3 handling, volume
preparation, config files and artifact packing; its ``sagemaker_client`` is a
``LocalSagemakerClient`` whose training jobs and endpoints use ``SimContainer``
(``container.py``), and its ``sagemaker_runtime_client`` is a real botocore client aimed at
the local runtime gateway (``runtime.py``). Unchanged user code runs::

    session = SimSession(s3_endpoint_url=s3.url, default_bucket=s3.bucket)
    est = PyTorch(..., instance_type="local", sagemaker_session=session)
    est.fit({"train": uri}); predictor = est.deploy(1, "local"); predictor.predict(...)

Differences from ``LocalSession`` a user may notice: training failures surface from
``fit()`` as ``UnexpectedStatusException`` with the job's FailureReason; ``deploy`` returns as
soon as ``/ping`` answers (no 30 s polls); endpoints get free ports, so several live side by
side; a container 4xx/5xx raises ``ModelError``; processing jobs run (``processing.py``), also
with ``wait=False`` and on several instances with ShardedByS3Key inputs. Batch transform
jobs run on the sim's serving processes (``transform.py``). The session refuses non-local S3/runtime endpoints and blocks any request its
boto3 session would send off this machine (``netguard.py``).
"""
from __future__ import annotations

import copy
import datetime
import os
from pathlib import Path

from local_runs.netguard import no_instance_metadata  # noqa: E402

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")  # must precede `import sagemaker`

# Importing the SDK builds a default (JumpStart) session, whose credential lookup would try the EC2
# metadata service at 169.254.169.254: off this machine, so not while sim imports it.
with no_instance_metadata():
    from botocore.exceptions import ClientError  # noqa: E402
    from sagemaker.config import load_sagemaker_config  # noqa: E402
    from sagemaker.local import LocalSession  # noqa: E402
    from sagemaker.local.local_session import LocalSagemakerClient  # noqa: E402
    from sagemaker.session import _check_job_status  # noqa: E402
    from sagemaker.utils import format_tags  # noqa: E402

from local_runs import s3_server  # noqa: E402
from local_runs.sim import endpoints, gateway, registry  # noqa: E402
from local_runs.sim.container import SimContainer  # noqa: E402
from local_runs.sim.entities import SimEndpoint, SimTrainingJob  # noqa: E402
from local_runs.netguard import install_request_guard, require_local_environment, require_loopback_url  # noqa: E402
from local_runs.sim.runtime import SimRuntimeClient  # noqa: E402
from local_runs.sdk_config import (  # noqa: E402
    memoize_config_validation, quiet_sdk_environment, store_sdk_archives_uncompressed, with_telemetry_opt_out)

ENDPOINT_POLL_SECONDS = 0.05


def _not_found(operation: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": "ValidationException", "Message": message}}, operation)


class SimSagemakerClient(LocalSagemakerClient):
    """``LocalSagemakerClient`` whose jobs and endpoints run as host processes."""

    @property
    def _state_dir(self) -> Path:
        return self.sagemaker_session.state_dir

    def create_training_job(self, TrainingJobName, AlgorithmSpecification, OutputDataConfig,  # noqa: N803
                            ResourceConfig, InputDataConfig=None, Environment=None, **kwargs):
        container = SimContainer(
            ResourceConfig["InstanceType"], ResourceConfig["InstanceCount"],
            AlgorithmSpecification["TrainingImage"], sagemaker_session=self.sagemaker_session,
            container_entrypoint=AlgorithmSpecification.get("ContainerEntrypoint"),
            container_arguments=AlgorithmSpecification.get("ContainerArguments"),
        )
        container.max_runtime = (kwargs.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
        job = SimTrainingJob(container)
        LocalSagemakerClient._training_jobs[TrainingJobName] = job
        job.start(InputDataConfig or [], OutputDataConfig, kwargs.get("HyperParameters") or {},
                  Environment or {}, TrainingJobName)

    def create_endpoint(self, EndpointName, EndpointConfigName, Tags=None):  # noqa: N803
        _validate(EndpointName, "CreateEndpoint")
        if registry.live_record(self._state_dir, EndpointName) is not None:
            raise ClientError({"Error": {"Code": "ValidationException", "Message":
                               f'Cannot create already existing endpoint "{EndpointName}".'}}, "CreateEndpoint")
        endpoint = SimEndpoint(EndpointName, EndpointConfigName, format_tags(Tags), self.sagemaker_session,
                               state_dir=self._state_dir, detach=self.sagemaker_session.detach_endpoints)
        LocalSagemakerClient._endpoints[EndpointName] = endpoint
        try:
            endpoint.serve()
        except registry.EndpointExistsError as exc:
            LocalSagemakerClient._endpoints.pop(EndpointName, None)
            raise ClientError({"Error": {"Code": "ValidationException", "Message": str(exc)}}, "CreateEndpoint")

    def describe_endpoint(self, EndpointName):  # noqa: N803
        endpoint = LocalSagemakerClient._endpoints.get(EndpointName)
        if isinstance(endpoint, SimEndpoint):
            stopped_elsewhere = registry.live_record(self._state_dir, EndpointName) is None
            if endpoint.state == SimEndpoint._IN_SERVICE and stopped_elsewhere:
                LocalSagemakerClient._endpoints.pop(EndpointName, None)  # e.g. deleted by the CLI
                raise _not_found("describe_endpoint", "Could not find local endpoint")
            return endpoint.describe()
        if endpoint is None:
            record = registry.read(self._state_dir, EndpointName) if _valid(EndpointName) else None
            if record is not None:
                if not registry.is_live(record):  # its process is gone: Failed until deleted
                    record = {**record, "status": registry.FAILED, "failure_reason": registry.gone_reason(record)}
                return _describe_record(record)
        return super().describe_endpoint(EndpointName)

    def delete_endpoint(self, EndpointName):  # noqa: N803
        endpoint = LocalSagemakerClient._endpoints.pop(EndpointName, None)
        if endpoint is not None:
            endpoint.stop()
            return
        _validate(EndpointName, "DeleteEndpoint")
        if registry.read(self._state_dir, EndpointName) is None:
            raise _not_found("delete_endpoint", f'Could not find endpoint "{EndpointName}".')
        endpoints.stop_endpoint(self._state_dir, EndpointName)  # a Failed one (process gone) too

    # The SDK wraps these in a telemetry decorator; call the plain methods (no telemetry at all).
    def create_model(self, *args, **kwargs):
        return LocalSagemakerClient.create_model.__wrapped__(self, *args, **kwargs)

    def create_endpoint_config(self, *args, **kwargs):
        return LocalSagemakerClient.create_endpoint_config.__wrapped__(self, *args, **kwargs)

    def create_processing_job(self, ProcessingJobName, AppSpecification, ProcessingResources,  # noqa: N803
                              Environment=None, ProcessingInputs=None, ProcessingOutputConfig=None, **kwargs):
        """Start a processing job (host processes, see ``processing.py``); returns at once, like SageMaker."""
        from local_runs.sim.processing import SimProcessingJob

        cluster = ProcessingResources["ClusterConfig"]
        container = SimContainer(cluster["InstanceType"], cluster["InstanceCount"], AppSpecification["ImageUri"],
                                 sagemaker_session=self.sagemaker_session,
                                 container_entrypoint=AppSpecification.get("ContainerEntrypoint"),
                                 container_arguments=AppSpecification.get("ContainerArguments"))
        job = SimProcessingJob(container, max_runtime=(kwargs.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds"))
        job.start(ProcessingInputs or [], ProcessingOutputConfig or {}, Environment or {}, ProcessingJobName)
        LocalSagemakerClient._processing_jobs[ProcessingJobName] = job

    def stop_processing_job(self, ProcessingJobName):  # noqa: N803
        job = LocalSagemakerClient._processing_jobs.get(ProcessingJobName)
        if job is None:
            raise _not_found("stop_processing_job", "Could not find local processing job")
        job.stop()

    def wait_processing_job(self, name: str) -> None:
        """Block until the processing job ends (Ctrl-C stops it)."""
        job = LocalSagemakerClient._processing_jobs.get(name)
        if job is not None and hasattr(job, "wait"):
            job.wait()

    def create_transform_job(self, TransformJobName, ModelName, TransformInput, TransformOutput,  # noqa: N803
                             TransformResources, **kwargs):
        """Start a batch transform job on sim serving processes (``transform.py``); returns at once."""
        from local_runs.sim.transform import SimTransformJob, TransformValidationError

        if TransformJobName in LocalSagemakerClient._transform_jobs:
            raise ClientError({"Error": {"Code": "ValidationException", "Message":
                               f"Job name must be unique within an AWS account and region, and a job with this "
                               f"name already exists ({TransformJobName})"}}, "CreateTransformJob")
        primary = self.describe_model(ModelName)["PrimaryContainer"]
        request = {"TransformJobName": TransformJobName, "ModelName": ModelName, "TransformInput": TransformInput,
                   "TransformOutput": TransformOutput, "TransformResources": TransformResources, **kwargs}
        try:
            job = SimTransformJob(request, primary, self.sagemaker_session)
        except TransformValidationError as exc:
            raise ClientError({"Error": {"Code": "ValidationException", "Message": str(exc)}},
                              "CreateTransformJob") from None
        LocalSagemakerClient._transform_jobs[TransformJobName] = job
        job.start()

    def stop_transform_job(self, TransformJobName):  # noqa: N803
        job = LocalSagemakerClient._transform_jobs.get(TransformJobName)
        if job is None:
            raise _not_found("stop_transform_job", "Could not find local transform job")
        job.stop()

    def wait_transform_job(self, name: str) -> None:
        """Block until the transform job ends (Ctrl-C stops it)."""
        job = LocalSagemakerClient._transform_jobs.get(name)
        if job is not None and hasattr(job, "wait"):
            job.wait()


def _validate(name: str, operation: str) -> None:
    try:
        registry.validate_name(name)
    except ValueError as exc:
        raise ClientError({"Error": {"Code": "ValidationException", "Message": str(exc)}}, operation) from None


def _valid(name: str) -> bool:
    try:
        registry.validate_name(name)
    except ValueError:
        return False
    return True


def _describe_record(record: dict) -> dict:
    return {
        "EndpointName": record["name"],
        "EndpointArn": "local:arn-does-not-matter",
        "EndpointConfigName": record.get("config_name") or record["name"],
        "EndpointStatus": record.get("status"),
        "CreationTime": datetime.datetime.fromtimestamp(record.get("created") or 0),
        "ProductionVariants": [{"VariantName": record.get("variant_name") or "AllTraffic"}],
        "FailureReason": record.get("failure_reason"),
        "WorkerRestarts": registry.restarts(record),  # sim only: workers replaced since it started
    }


class SimSession(LocalSession):
    """A ``LocalSession`` that runs training and serving as host processes (no Docker).

    Args:
        s3_endpoint_url: the local S3 (moto) URL; must be a loopback address.
        default_bucket: an explicit bucket (the SDK would otherwise ask STS for the account).
        region: AWS region name used for image URIs and clients (default us-east-1).
        state_dir: endpoint registry, logs and temp work dir (default ``$LOCAL_RUNS_STATE_DIR``
            or ``./.local_runs``).
        detach_endpoints: endpoints outlive this process (for the CLI); otherwise they are
            stopped when it exits.
        runtime_endpoint_url: an existing runtime gateway (e.g. the shared daemon); default
            is a gateway thread in this process, started on the first ``invoke_endpoint``.
        boto_session: default: dummy credentials (never the user's real ones).
    """

    def __init__(self, s3_endpoint_url: str, default_bucket: str, *, region: str = s3_server.DEFAULT_REGION,
                 state_dir: str | os.PathLike | None = None, detach_endpoints: bool = False,
                 runtime_endpoint_url: str | None = None, boto_session=None,
                 sagemaker_config: dict | None = None, default_bucket_prefix: str | None = None):
        require_loopback_url(s3_endpoint_url, "S3")
        require_local_environment()
        if runtime_endpoint_url is not None:
            require_loopback_url(runtime_endpoint_url, "SageMaker runtime")
        if not default_bucket:
            raise ValueError("sim needs an explicit default_bucket (the SDK would ask STS for one)")
        self.state_dir = Path(state_dir or registry.default_state_dir()).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.detach_endpoints = detach_endpoints
        self._runtime_endpoint_url = runtime_endpoint_url
        quiet_sdk_environment(self.state_dir)
        memoize_config_validation()
        store_sdk_archives_uncompressed()  # the deploy's repack: ~8 s at the SDK's level 9
        boto_session = boto_session or s3_server.boto_session(region, s3_url=s3_endpoint_url)
        install_request_guard(boto_session)
        if sagemaker_config is None:
            sagemaker_config = load_sagemaker_config(
                s3_resource=boto_session.resource("s3", endpoint_url=s3_endpoint_url))
        super().__init__(
            boto_session=boto_session, default_bucket=default_bucket, s3_endpoint_url=s3_endpoint_url,
            sagemaker_config=with_telemetry_opt_out(sagemaker_config), default_bucket_prefix=default_bucket_prefix,
        )
        require_loopback_url(self.s3_client.meta.endpoint_url, "S3")
        require_loopback_url(self.s3_resource.meta.client.meta.endpoint_url, "S3")

    def _initialize(self, boto_session, sagemaker_client, sagemaker_runtime_client, **kwargs):
        super()._initialize(boto_session, sagemaker_client, sagemaker_runtime_client, **kwargs)
        self.sagemaker_client = SimSagemakerClient(self)
        self.sagemaker_runtime_client = SimRuntimeClient(self.boto_session, self._gateway_url, self.config)
        config = copy.deepcopy(self.config) if self.config else {}
        local = config.setdefault("local", {})
        if not local.get("container_root"):
            local["container_root"] = str(self.state_dir / "work")
        Path(local["container_root"]).mkdir(parents=True, exist_ok=True)
        self.config = config

    def _gateway_url(self) -> str:
        if self._runtime_endpoint_url:
            return self._runtime_endpoint_url
        return gateway.process_gateway(self.state_dir, self.boto_region_name).url

    @property
    def runtime_url(self) -> str:
        """URL of the runtime gateway this session invokes endpoints through."""
        return self._gateway_url()

    def endpoint_record(self, endpoint_name: str) -> dict | None:
        """The live registry record (pid, port, url, model_dir, status, ...) of an endpoint."""
        return registry.live_record(self.state_dir, endpoint_name)

    # --- the SDK's waits, without the 5-30 s sleeps of a remote service ----------------------

    def wait_for_endpoint(self, endpoint, poll=ENDPOINT_POLL_SECONDS, live_logging=False):
        return super().wait_for_endpoint(endpoint, poll=min(poll, ENDPOINT_POLL_SECONDS), live_logging=False)

    def wait_for_job(self, job, poll=5):
        desc = self.sagemaker_client.describe_training_job(job)
        _check_job_status(job, desc, "TrainingJobStatus")
        return desc

    def wait_for_processing_job(self, job, poll=5):
        self.sagemaker_client.wait_processing_job(job)
        desc = self.sagemaker_client.describe_processing_job(ProcessingJobName=job)
        _check_job_status(job, desc, "ProcessingJobStatus")
        return desc

    def logs_for_processing_job(self, job_name, wait=False, poll=10):
        # The hosts' output is streamed while they run; waiting is all that remains.
        if wait:
            self.wait_for_processing_job(job_name)

    def wait_for_transform_job(self, job, poll=5):
        self.sagemaker_client.wait_transform_job(job)
        desc = self.sagemaker_client.describe_transform_job(TransformJobName=job)
        _check_job_status(job, desc, "TransformJobStatus")
        return desc

    def logs_for_transform_job(self, job_name, wait=False, poll=10):
        # Progress is printed while the job runs; waiting is all that remains.
        if wait:
            self.wait_for_transform_job(job_name)

    def logs_for_job(self, job_name, wait=False, poll=5, log_type="All"):
        # The output was streamed while the job ran; only the final status remains to check.
        if wait:
            self.wait_for_job(job_name)
