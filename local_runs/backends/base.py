"""What every backend answers: the `Backend` base class.

    with open_backend(settings) as backend:
        backend.session        # a SageMaker session (SDK v2) for this backend
        backend.role           # IAM role ARN (a dummy one locally)
        backend.instance_type  # "local" for sim/docker, ml.m4.xlarge (configurable) on SageMaker
        backend.upload(path)   # -> s3:// URI of the training data, via the SDK's own upload_data
        backend.check_model(model_data)     # before deploy: is the model where the backend can reach it?
        backend.transform_output_uri(run)   # where `local-runs transform` has its job write
        backend.list_endpoints()            # [{"name", "status", ...}]
        backend.delete_endpoint(name)       # -> what was deleted, one line each
        type(backend).shutdown(settings)    # stop what the backend left running between commands

The jobs themselves (fit, deploy, predict) are the user's script, `local_runs/job.py`: the same
code for every backend, handed `backend.session`. A backend only differs in what it opens, what it
can list and delete, and what it leaves running. The SDK stays behind this interface (SDK v2 reaches
end of support 2027-07-06).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar

from local_runs.config import Settings
from local_runs.errors import UsageError

DUMMY_ROLE = "arn:aws:iam::111111111111:role/SageMakerRole"
LOCAL_BUCKET = "review-search-local"
DATA_PREFIX = "review-search/data"
PROJECT_PREFIX = "review-search"  # names of what this project creates: jobs, endpoints


def state_dir(settings: Settings) -> Path:
    """Where the launcher keeps its state between commands (created on first use)."""
    path = Path(settings.state_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


class Backend:
    """One place the user's script runs. Subclasses open a session in `open` and say what differs."""

    name: ClassVar[str] = ""
    remembers_models: ClassVar[bool] = True  # False: a fit trains nothing (dry run), remember nothing
    # False: the service refuses S3DataDistributionType ShardedByS3Key (the SDK's local mode); a multi-instance
    # job then gets every object on every host and each host takes its own share (see entry/embed.py)
    shards_inputs: ClassVar[bool] = True
    runs_jobs: ClassVar[bool] = True  # False: jobs are only printed (dry run): no transform output to fetch
    tails_transform_logs: ClassVar[bool] = True  # transform(wait=True) follows the job's log (CloudWatch on SageMaker)

    def __init__(self, settings: Settings, session, role: str, bucket: str,
                 closers: list[Callable[[], None]] | None = None, extra: dict | None = None):
        self.settings = settings
        self.session = session
        self.role = role
        self.bucket = bucket
        self.closers = list(closers or [])
        self.extra = dict(extra or {})

    @classmethod
    def open(cls, settings: Settings, persistent: bool = False) -> "Backend":
        """A ready backend; `persistent` keeps local services running for later commands."""
        raise NotImplementedError

    @property
    def instance_type(self) -> str:
        return self.settings.resolved_instance_type

    def upload(self, path: str | Path, prefix: str = DATA_PREFIX) -> str:
        """Upload a reviews file and return the s3:// URI of the folder holding it (the channel)."""
        path = Path(path)
        uri = self.session.upload_data(str(path), bucket=self.bucket, key_prefix=f"{prefix}/{path.stem.split('.')[0]}")
        return uri.rsplit("/", 1)[0]

    def upload_parts(self, directory: str | Path, name: str, prefix: str = DATA_PREFIX) -> str:
        """Upload a folder of review part files (a two-step fit's input); returns the s3:// folder URI."""
        return self.session.upload_data(str(directory), bucket=self.bucket, key_prefix=f"{prefix}/{name}")

    # --- what differs between backends ----------------------------------------------------------
    def check_model(self, model_data: str) -> None:
        """Before deploy: raise UsageError when the model cannot be reached. Default: the service decides."""

    def transform_output_uri(self, run: str) -> str:
        """The S3 folder a `local-runs transform` run writes its `x.out` objects to."""
        return f"s3://{self.bucket}/{PROJECT_PREFIX}/transform/{run}/output"

    def transform_results_uri(self, output_uri: str, job_name: str) -> str:
        """Where a transform job's `x.out` objects land: SageMaker writes them straight under S3OutputPath."""
        return output_uri

    def endpoint_log_hint(self, name: str) -> str:
        """Where the serving log of endpoint `name` can be read, for messages while it starts."""
        return f"CloudWatch log group /aws/sagemaker/Endpoints/{name}"

    def list_endpoints(self) -> list[dict]:
        """Endpoints as `{"name", "status"}` (plus `url`, `failure_reason` where known)."""
        client = self.session.sagemaker_client
        return [{"name": e["EndpointName"], "status": e["EndpointStatus"]}
                for e in client.list_endpoints().get("Endpoints", [])]

    def endpoints_to_delete_all(self) -> list[str]:
        """What `delete --all` removes: every endpoint this backend lists."""
        return [e["name"] for e in self.list_endpoints()]

    def delete_endpoint(self, name: str) -> list[str]:
        """Delete an endpoint; returns what was deleted, one line each."""
        self.session.delete_endpoint(name)
        return [f"endpoint {name} deleted"]

    @classmethod
    def shutdown(cls, settings: Settings, purge: bool = False) -> list[str]:
        """Stop the local services a backend left running between commands; returns what stopped."""
        raise UsageError(f"shutdown stops the sim backend's local services; the {cls.name} backend leaves none "
                         "running (use `local-runs delete` for endpoints)")

    # --- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        while self.closers:
            self.closers.pop()()

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
