"""The `sim` backend: SageMaker local mode without Docker (`local_runs/sim/`), S3 from moto on 127.0.0.1.

For `cycle` the S3 server lives in this process and goes with it. For the step-by-step commands
(`fit`, `deploy`, `predict`, ... in separate processes) the S3 server and the runtime gateway are
daemons found through files in the state dir; endpoints are detached processes registered there.
"""
from __future__ import annotations

import os

from local_runs.backends.base import DUMMY_ROLE, LOCAL_BUCKET, Backend, state_dir
from local_runs.config import Settings
from local_runs.errors import UsageError

S3_PORT_FILE = "s3.json"
GATEWAY_PORT_FILE = "gateway.json"


class SimBackend(Backend):
    name = "sim"

    @classmethod
    def open(cls, settings: Settings, persistent: bool = False) -> "SimBackend":
        from local_runs import s3_server
        from local_runs.sim import gateway
        from local_runs.sim.session import SimSession

        directory = state_dir(settings)
        if persistent:
            info = s3_server.ensure_daemon(directory / S3_PORT_FILE, bucket=LOCAL_BUCKET, region=settings.region)
            os.environ[s3_server.ENDPOINT_ENV] = info["url"]
            runtime = gateway.ensure_daemon(directory / GATEWAY_PORT_FILE, directory)
            session = SimSession(info["url"], LOCAL_BUCKET, region=settings.region, state_dir=directory,
                                 detach_endpoints=True, runtime_endpoint_url=runtime["url"])
            return cls(settings, session, DUMMY_ROLE, LOCAL_BUCKET,
                       extra={"s3_url": info["url"], "runtime_url": runtime["url"]})
        s3 = s3_server.LocalS3(bucket=LOCAL_BUCKET, region=settings.region).start()
        try:
            session = SimSession(s3.url, LOCAL_BUCKET, region=settings.region, state_dir=directory)
        except BaseException:
            s3.stop()
            raise
        return cls(settings, session, DUMMY_ROLE, LOCAL_BUCKET, closers=[s3.stop], extra={"s3_url": s3.url})

    def check_model(self, model_data: str) -> None:
        """Say plainly when the model is not in the local S3 (for example after `shutdown --purge`)."""
        if not model_data.startswith("s3://"):
            return
        from botocore.exceptions import ClientError

        bucket, _, key = model_data[len("s3://"):].partition("/")
        try:
            self.session.s3_client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NoSuchBucket"):
                raise
            raise UsageError(f"the model {model_data} is not in the local S3 at {self.extra.get('s3_url')}: the sim "
                             "S3 no longer holds it (its data was removed since that fit); run `local-runs fit` "
                             "again") from None

    def endpoint_log_hint(self, name: str) -> str:
        from local_runs.sim import registry

        return f"its log: {registry.log_path(self.session.state_dir, name)}"

    def list_endpoints(self) -> list[dict]:
        from local_runs.sim.endpoints import list_endpoints

        return list_endpoints(self.session.state_dir)

    @classmethod
    def shutdown(cls, settings: Settings, purge: bool = False) -> list[str]:
        """Stop every endpoint, the runtime gateway and the S3 daemon (and with `purge`, remove its data)."""
        from local_runs import s3_server
        from local_runs.sim import endpoints, gateway

        directory = state_dir(settings)
        done = []
        for record in endpoints.list_endpoints(directory):
            endpoints.stop_endpoint(directory, record["name"])
            done.append(f"endpoint {record['name']} stopped")
        if gateway.stop_daemon(directory / GATEWAY_PORT_FILE):
            done.append("runtime gateway stopped")
        if s3_server.stop_daemon(directory / S3_PORT_FILE):
            done.append(f"S3 server stopped (its objects stay in {s3_server.store_dir(directory)})")
        if purge:
            removed = s3_server.purge(directory)
            done.append(f"S3 data {'removed' if removed else 'was already empty'}: every fitted model is gone")
        return done
