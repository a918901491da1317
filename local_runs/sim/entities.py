"""The SDK's local training job and endpoint entities, wired to ``SimContainer``.

``SimTrainingJob`` records a failed job as ``Failed`` with its ``FailureReason`` instead of
letting a bare RuntimeError escape, so ``fit()`` fails the way it does on SageMaker
(``UnexpectedStatusException: ... Reason: <first 1024 chars of output/failure>``) and
``describe_training_job`` shows the reason. ``SimEndpoint`` starts the endpoint process
(blocking until it answers /ping) and reports ``Failed`` + ``FailureReason`` when the model
does not load, which ``wait_for_endpoint`` turns into the usual exception.
"""
from __future__ import annotations

import contextlib
import datetime

from sagemaker.local.entities import _LocalEndpoint, _LocalTrainingJob

from local_runs.sim import procs, registry
from local_runs.sim.container import SimContainer, TrainingJobFailed
from local_runs.sim.endpoints import EndpointStartFailed

FAILED = "Failed"
STOPPED = "Stopped"


@contextlib.contextmanager
def _sharding_allowed(container, input_data_config):
    """Let the SDK's channel checks pass ShardedByS3Key; the container deals those channels' objects."""
    sharded = []
    for channel in input_data_config:
        source = (channel.get("DataSource") or {}).get("S3DataSource")
        if source and source.get("S3DataDistributionType") == "ShardedByS3Key":
            sharded.append(source)
            container.sharded_channels.add(channel["ChannelName"])
            source["S3DataDistributionType"] = "FullyReplicated"
    try:
        yield
    finally:
        for source in sharded:
            source["S3DataDistributionType"] = "ShardedByS3Key"


class SimTrainingJob(_LocalTrainingJob):
    """A local training job whose failure is a job status, not a crash."""

    def __init__(self, container: SimContainer):
        super().__init__(container)
        self.failure_reason: str | None = None

    def start(self, input_data_config, output_data_config, hyperparameters, environment, job_name):
        self.training_job_name = job_name
        self.output_data_config = output_data_config
        try:
            with _sharding_allowed(self.container, input_data_config):  # the SDK refuses ShardedByS3Key; sim deals it
                super().start(input_data_config, output_data_config, hyperparameters, environment, job_name)
        except TrainingJobFailed as exc:
            self.state = FAILED
            self.failure_reason = exc.reason
            self.end_time = datetime.datetime.now()
        except KeyboardInterrupt:
            self.state = STOPPED
            self.failure_reason = "interrupted (Ctrl-C): the job's processes were stopped, nothing was uploaded"
            self.end_time = datetime.datetime.now()
            raise procs.Interrupted(f"training job {job_name}: {self.failure_reason}") from None

    def describe(self):
        response = super().describe()
        if self.state in (FAILED, STOPPED):
            response["FailureReason"] = self.failure_reason
            response.pop("ModelArtifacts", None)
        return response


class SimEndpoint(_LocalEndpoint):
    """A local endpoint served by a host process registered under its name."""

    def __init__(self, endpoint_name, endpoint_config_name, tags=None, local_session=None,
                 state_dir=None, detach: bool = False):
        super().__init__(endpoint_name, endpoint_config_name, tags, local_session)
        self.state_dir = state_dir
        self.detach = detach
        self.failure_reason: str | None = None

    def serve(self):
        variant = self.production_variant
        self.create_time = datetime.datetime.now()
        self.container = SimContainer(variant["InstanceType"], variant["InitialInstanceCount"],
                                      self.primary_container["Image"], self.local_session)
        try:
            self.container.serve(
                self.primary_container["ModelDataUrl"], self.primary_container.get("Environment") or {},
                endpoint_name=self.name, state_dir=self.state_dir,
                config_name=self.endpoint_config["EndpointConfigName"],
                variant_name=variant.get("VariantName"), detach=self.detach,
            )
        except registry.EndpointExistsError:
            raise
        except EndpointStartFailed as exc:
            self.state = self._FAILED
            self.failure_reason = str(exc)[:1024]
            return
        except Exception as exc:  # noqa: BLE001 - e.g. the model could not be downloaded
            self.state = self._FAILED
            self.failure_reason = f"{type(exc).__name__}: {exc}"[:1024]
            return
        self.state = self._IN_SERVICE

    @property
    def url(self) -> str | None:
        record = self.container.record if self.container else None
        return record.get("url") if record else None

    def describe(self):
        response = super().describe()
        if self.failure_reason:
            response["FailureReason"] = self.failure_reason
        if self.state_dir is not None:  # sim only: workers replaced since it started
            response["WorkerRestarts"] = registry.restarts(registry.read(self.state_dir, self.name))
        return response
