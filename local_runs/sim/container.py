"""``SimContainer``: the SDK's ``_SageMakerContainer`` with host processes instead of Docker.

Everything but the runtime and the packing is the SDK's own code: temp folders, channel download
from S3, ``input/config/*.json``, the upload of ``model.tar.gz`` / ``output.tar.gz``, model download
and extraction for serving. What changes:

* No Docker Compose. The SDK's volume list (host dir -> ``/opt/ml/...``) is realised as
  symlinks under ``<container_root>/<host>``, which becomes ``SAGEMAKER_BASE_DIR`` (the
  toolkits' stand-in for ``/opt/ml``); ``/opt/ml`` paths in hyperparameters/environment are
  rewritten to it.
* ``train`` runs ``python -m sagemaker_training.cli.train`` (the real toolkit) in its own
  process group with ``SM_STUDIO_LOCAL_MODE=True`` and ``SAGEMAKER_TRAINING_MODULE`` set to
  ``local_runs.sim.train_framework:main``; output is streamed to stdout. On a non-zero exit
  it raises ``TrainingJobFailed`` whose reason is the first 1024 characters of
  ``output/failure``; nothing is uploaded.
* ``instance_count`` N runs N hosts (``hosts.py``): each its own tree, ``resourceconfig.json``
  naming all of them, its own ``/opt/ml/model`` (merged into the one ``model.tar.gz``; a file
  name two hosts wrote fails the job naming it), ShardedByS3Key channels dealt across them. One
  host failing stops the others and fails the job naming the host. Processing jobs:
  ``processing.py``.
* ``serve`` starts ``local_runs.sim.endpoint_server`` on 127.0.0.1 and a free port,
  registered by endpoint name; ``stop_serving`` stops it and deletes its temp dirs.
* ``model.tar.gz`` is packed by ``artifacts.py`` (every host's ``/opt/ml/model`` straight from
  its tree, gzip level 0: the SDK's copy-then-level-9 took 8.6 s for the encoder alone).

Children get a scrubbed environment (``procs.child_env``): the session's credentials (the
dummies), its region and local S3 endpoint, never the host's AWS settings. Modules the job
ships are imported only from the job's code dir, never from the host install
(``_site/sitecustomize.py``). ``LOCAL_RUNS_SIM_WORKERS`` (host) overrides the endpoint's
worker count.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import string
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import sagemaker
from sagemaker.local.image import _create_config_file_directories, _SageMakerContainer, _Volume

from local_runs.sim import artifacts as sim_artifacts
from local_runs.sim import endpoints, procs, registry
from local_runs.sim import hosts as hostlib

logger = logging.getLogger(__name__)

OPT_ML = "/opt/ml"
TRAINING_MODULE = "local_runs.sim.train_framework:main"
WORKERS_ENV = "LOCAL_RUNS_SIM_WORKERS"
FAILURE_REASON_LIMIT = 1024
SITE_DIR = str(Path(__file__).resolve().parent / "_site")
ALLOW_HOST_CODE_ENV = "LOCAL_RUNS_SIM_ALLOW_HOST_CODE"


class TrainingJobFailed(RuntimeError):
    """The training process failed; ``reason`` is what SageMaker reports as FailureReason."""

    def __init__(self, reason: str, exit_code: int | None):
        self.reason = reason
        self.exit_code = exit_code
        super().__init__(reason)


@lru_cache(maxsize=1)
def _package_root_if_needed() -> str | None:
    """The directory holding ``local_runs`` if a fresh interpreter could not import it."""
    root = str(Path(__file__).resolve().parents[2])
    probe = subprocess.run(
        [sys.executable, "-c", "import importlib.util,sys; sys.exit(importlib.util.find_spec('local_runs') is None)"],
        cwd=os.path.abspath(os.sep), env=procs.child_env({}), capture_output=True,
    )
    return None if probe.returncode == 0 else root


def _job_env(env: dict[str, str], code_root: str, first: str | None = None) -> dict[str, str]:
    """Finish a job process's environment: PYTHONPATH and the shipped-code guard.

    PYTHONPATH = ``first`` (the code dir, for serving), ``_site`` (its sitecustomize hides
    host-installed copies of modules the job ships, see ``_site/sitecustomize.py``), the
    host's PYTHONPATH, and the directory holding ``local_runs`` if it is not installed.
    ``LOCAL_RUNS_SIM_ALLOW_HOST_CODE=1`` turns the guard off (not what SageMaker does).
    """
    if os.environ.get(ALLOW_HOST_CODE_ENV) != "1":
        env["LOCAL_RUNS_SIM_CODE_ROOT"] = code_root
    parts = [first, SITE_DIR, env.get("PYTHONPATH"), _package_root_if_needed()]
    env["PYTHONPATH"] = os.pathsep.join(p for p in parts if p)
    return env


def _to_host(value: str, base: str) -> str:
    """``/opt/ml/x`` -> ``<base>/x``; anything else unchanged."""
    if value == OPT_ML or value.startswith(OPT_ML + "/"):
        return base + value[len(OPT_ML):]
    return value


def _mount(base: str, volumes: list[_Volume]) -> None:
    """Make each volume's host dir appear at its ``/opt/ml`` path under ``base`` (symlinks)."""
    for volume in sorted(volumes, key=lambda v: v.container_dir.rstrip("/").count("/")):
        rel = os.path.relpath(volume.container_dir, OPT_ML)
        if rel.startswith(".."):
            logger.warning("sim: ignoring volume outside /opt/ml: %s", volume.map)
            continue
        target = os.path.join(base, rel) if rel != "." else base
        os.makedirs(volume.host_dir, exist_ok=True)
        if os.path.realpath(target) == os.path.realpath(volume.host_dir):
            continue
        if os.path.islink(target):
            os.unlink(target)
        elif os.path.isdir(target):
            if os.listdir(target):
                raise RuntimeError(f"sim cannot mount {volume.host_dir} on non-empty {target}")
            os.rmdir(target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(volume.host_dir, target, target_is_directory=True)


def _distribution(channel: dict) -> str:
    source = (channel.get("DataSource") or {}).get("S3DataSource") or {}
    return hostlib.check_distribution(source.get("S3DataDistributionType"), f"channel {channel.get('ChannelName')}")


def _check_model_clashes(services: dict) -> None:
    """SageMaker merges every host's /opt/ml/model into one model.tar.gz; a name two hosts wrote fails."""
    owners: dict[str, str] = {}
    for host, service in services.items():
        for mapping in service["volumes"]:
            host_dir, container_dir = mapping.rsplit(":", 1)
            if container_dir != "/opt/ml/model":
                continue
            for rel in hostlib.relative_files(host_dir):
                if rel in owners:
                    raise TrainingJobFailed(
                        f"ClientError: model file {rel} was written by both {owners[rel]} and {host}; when several "
                        "instances write /opt/ml/model their file names must not clash (SageMaker merges them "
                        "into one model.tar.gz)", 1)
                owners[rel] = host


class SimContainer(_SageMakerContainer):
    """One "instance": training through the real toolkit, serving through endpoint_server."""

    def __init__(self, instance_type, instance_count, image, sagemaker_session=None,
                 container_entrypoint=None, container_arguments=None):
        # The SDK's __init__ insists on Docker Compose; set the same attributes without it.
        if int(instance_count) < 1:
            raise ValueError(f"instance_count must be at least 1, got {instance_count}")
        self.compose_cmd_prefix = None
        self.sagemaker_session = sagemaker_session
        self.instance_type = instance_type
        self.instance_count = int(instance_count)
        self.image = image
        self.container_entrypoint = container_entrypoint
        self.container_arguments = container_arguments
        self.is_studio = False
        suffix = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        self.hosts = hostlib.host_names(self.instance_count, suffix)  # each its own /opt/ml tree
        self.container_root = None
        self.container = None
        self.endpoint_name: str | None = None
        self.state_dir: Path | None = None
        self._server: subprocess.Popen | None = None
        self._pump = None
        self._record: dict[str, Any] | None = None
        self.max_runtime: float | None = None
        self._downloads: list[str] = []
        self.sharded_channels: set[str] = set()  # ShardedByS3Key channels (set by SimTrainingJob)

    # --- shared -----------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        session = self.sagemaker_session
        region = session.boto_region_name
        env = {"AWS_REGION": region, "AWS_DEFAULT_REGION": region}
        creds = session.boto_session.get_credentials()
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            env.update(AWS_ACCESS_KEY_ID=frozen.access_key, AWS_SECRET_ACCESS_KEY=frozen.secret_key)
            if frozen.token:
                env["AWS_SESSION_TOKEN"] = frozen.token
        if session.s3_resource is not None:
            s3_url = session.s3_resource.meta.client.meta.endpoint_url
            env.update(AWS_ENDPOINT_URL_S3=s3_url, S3_ENDPOINT_URL=s3_url)
        return env

    # --- training -----------------------------------------------------------------------

    def train(self, input_data_config, output_data_config, hyperparameters, environment, job_name):
        """Run one training job; returns the model artifact URI like the SDK's ``train``.

        ``self.max_runtime`` (seconds, from the job's StoppingCondition) stops a runaway job.
        """
        max_runtime = self.max_runtime
        if self.container_entrypoint:
            raise NotImplementedError(
                "sim runs the SageMaker training toolkit; a custom ContainerEntrypoint "
                "(remote functions, pipeline steps) needs the docker backend")
        root = self.container_root = self._create_tmp_folder()
        os.makedirs(os.path.join(root, "output", "data"))
        shared_dir = os.path.join(root, "shared")
        os.mkdir(shared_dir)
        data_dir = self._create_tmp_folder()
        try:
            return self._train(root, data_dir, shared_dir, input_data_config, output_data_config,
                               hyperparameters, environment, job_name, max_runtime)
        finally:
            for directory in (data_dir, root, *self._downloads):  # the SDK leaves S3 downloads behind
                shutil.rmtree(directory, ignore_errors=True)

    def _train(self, root, data_dir, shared_dir, input_data_config, output_data_config,
               hyperparameters, environment, job_name, max_runtime):
        volumes = self._prepare_training_volumes(data_dir, input_data_config, output_data_config, hyperparameters)
        s3_channels = {c["ChannelName"] for c in input_data_config if urlparse(c["DataUri"]).scheme == "s3"}
        self._downloads = [v.host_dir for v in volumes
                           if v.container_dir.rsplit("/", 1)[-1] in s3_channels
                           and v.container_dir.startswith("/opt/ml/input/data/")]
        hyperparameters = self._update_local_src_path(hyperparameters, key=sagemaker.estimator.DIR_PARAM_NAME)
        sharded = self.sharded_channels | {c["ChannelName"] for c in input_data_config
                                           if _distribution(c) == hostlib.SHARDED}
        specs, services = [], {}
        for index, host in enumerate(self.hosts):
            base = os.path.join(root, host)
            host_hps = {k: self._hp_to_host(v, base) for k, v in hyperparameters.items()}
            _create_config_file_directories(root, host)
            self.write_config_files(host, host_hps, input_data_config)
            shutil.copytree(data_dir, os.path.join(base, "input", "data"), dirs_exist_ok=True)
            host_volumes = self._host_volumes(volumes, root, host, index, sharded)
            all_volumes = self._build_optml_volumes(host, {"output", "output/data", "input"}) + host_volumes
            _mount(base, all_volumes)
            services[host] = {"volumes": [v.map for v in all_volumes]}
            env = {
                **self._base_env(),
                "TRAINING_JOB_NAME": job_name,
                **{k: _to_host(str(v), base) for k, v in (environment or {}).items()},
                "SAGEMAKER_BASE_DIR": base,
                "SM_STUDIO_LOCAL_MODE": "True",
                "SAGEMAKER_TRAINING_MODULE": TRAINING_MODULE,
                **procs.owner_env(),
            }
            env = _job_env(procs.child_env(env), code_root=os.path.join(base, "code"))
            workdir = os.path.join(root, "cwd" if len(self.hosts) == 1 else f"cwd-{host}")
            os.mkdir(workdir)  # an empty cwd: the toolkit copies it into PYTHONPATH
            specs.append(hostlib.HostSpec(host, [sys.executable, "-m", "sagemaker_training.cli.train"], env, workdir))
        logger.info("sim: training job %s on %d host(s) in %s", job_name, len(self.hosts), root)
        group = hostlib.HostGroup(specs, max_runtime=max_runtime).start()
        outcome = group.wait()
        if not outcome.ok:
            # MaxRuntimeExceeded only when our timer stopped it; a kill from elsewhere says so
            host = outcome.failed_host or self.hosts[0]
            reason = self._failure_reason(os.path.join(root, host), outcome.exit_codes.get(host),
                                          outcome.tails.get(host, ""), max_runtime if outcome.timed_out else None)
            if len(self.hosts) > 1:
                reason = f"host {host} of {len(self.hosts)} failed (the others were stopped): {reason}"[
                    :FAILURE_REASON_LIMIT]
            raise TrainingJobFailed(reason, outcome.exit_codes.get(host))
        compose_data = {"services": services}
        if len(self.hosts) > 1:
            _check_model_clashes(services)
        artifacts = sim_artifacts.retrieve(self.container_root, self.hosts, compose_data, output_data_config,
                                           job_name, self.sagemaker_session)
        logger.info("===== Job Complete =====")
        return artifacts

    def _host_volumes(self, volumes, root, host, index, sharded):
        """The SDK's volumes for one host: its own /opt/ml/model, and its share of sharded channels."""
        if len(self.hosts) == 1 and not sharded:
            return volumes
        result = []
        for volume in volumes:
            channel = volume.container_dir[len("/opt/ml/input/data/"):] \
                if volume.container_dir.startswith("/opt/ml/input/data/") else None
            if volume.container_dir == "/opt/ml/model" and len(self.hosts) > 1:
                result.append(_Volume(os.path.join(root, host, "model"), "/opt/ml/model"))
            elif channel in sharded:
                files = hostlib.relative_files(volume.host_dir)
                share = hostlib.deal(files, len(self.hosts))[index]
                logger.info("sim: %s gets %d of %d object(s) of channel %s (ShardedByS3Key)", host, len(share),
                            len(files), channel)
                target = hostlib.shard_dir(volume.host_dir, share, os.path.join(root, ".shards", host, channel))
                result.append(_Volume(target, volume.container_dir))
            else:
                result.append(volume)
        return result

    @staticmethod
    def _hp_to_host(value, base):
        try:
            decoded = json.loads(value)
        except (TypeError, ValueError):
            return value
        if isinstance(decoded, str) and _to_host(decoded, base) != decoded:
            return json.dumps(_to_host(decoded, base))
        return value

    @staticmethod
    def _failure_reason(base, exit_code, tail, max_runtime) -> str:
        failure = Path(base, "output", "failure")
        if failure.exists():
            text = failure.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                return text[:FAILURE_REASON_LIMIT]
        if max_runtime:
            return f"MaxRuntimeExceeded: training stopped after {max_runtime:g} s"
        how = f"exited with code {exit_code}"
        if exit_code is not None and exit_code < 0:
            try:
                name = signal.Signals(-exit_code).name
            except ValueError:
                name = f"signal {-exit_code}"
            how = (f"was killed by {name} (exit code {exit_code}) from outside the job, e.g. by the "
                   "out-of-memory killer or a user; nothing was uploaded, run it again")
        return f"AlgorithmError: training {how}\n{tail}"[:FAILURE_REASON_LIMIT]

    # --- serving ------------------------------------------------------------------------

    def serve(self, model_dir, environment, *, endpoint_name: str, state_dir, config_name=None,
              variant_name=None, detach: bool = False):
        """Start the endpoint server for ``model_dir`` (s3:// or file:// model data).

        Blocks until it is in service; raises ``endpoints.EndpointStartFailed`` otherwise.
        """
        if self.instance_count != 1:
            raise NotImplementedError("sim serves an endpoint on one instance (InitialInstanceCount=1)")
        self.endpoint_name = endpoint_name
        self.state_dir = Path(state_dir)
        work_root = os.path.abspath(
            sagemaker.utils.get_config_value("local.container_root", self.sagemaker_session.config)
            or tempfile.gettempdir())
        endpoints.forget_stale(self.state_dir, endpoint_name)  # a killed one's files go with its record
        registry.claim(self.state_dir, endpoint_name, config_name=config_name, variant_name=variant_name,
                       detached=detach, model_data=model_dir, image=self.image, work_root=work_root)
        cleanup: list[str] = []
        try:  # from here on the name is ours: undo everything on failure
            self._serve(model_dir, environment, detach, cleanup)
        except BaseException:
            for directory in cleanup:
                shutil.rmtree(directory, ignore_errors=True)
            registry.remove(self.state_dir, endpoint_name)
            raise

    def _serve(self, model_dir, environment, detach, cleanup):
        root = self.container_root = self._create_tmp_folder()
        cleanup.append(root)
        volumes = self._prepare_serving_volumes(model_dir)
        if urlparse(model_dir).scheme == "s3":
            cleanup.append(volumes[0].host_dir)  # the SDK's download dir; never a user's file:// dir
        registry.update(self.state_dir, self.endpoint_name, cleanup_dirs=cleanup)
        environment = dict(environment or {})
        base = os.path.join(root, self.hosts[0])
        model_path = os.path.join(base, "model")
        code_dir = os.path.join(model_path, "code")
        dir_key = sagemaker.estimator.DIR_PARAM_NAME.upper()
        if urlparse(environment.get(dir_key, "")).scheme == "file":  # local_code: code is not in the model
            parsed = urlparse(environment[dir_key])
            volumes.append(_Volume(os.path.abspath(parsed.netloc + parsed.path), "/opt/ml/code"))
            environment[dir_key] = "/opt/ml/code"
            code_dir = os.path.join(base, "code")
        _mount(base, volumes)
        workers = os.environ.get(WORKERS_ENV) or environment.get("SAGEMAKER_MODEL_SERVER_WORKERS") or "1"
        env = {
            **self._base_env(),
            **{k: _to_host(str(v), base) for k, v in environment.items()},
            "SAGEMAKER_BASE_DIR": base,
            "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers),
        }
        if not detach:
            env.update(procs.owner_env())
        env = _job_env(procs.child_env(env), code_root=code_dir, first=code_dir)
        argv = [sys.executable, "-m", "local_runs.sim.endpoint_server", "--name", self.endpoint_name,
                "--model-dir", model_path, "--state-dir", str(self.state_dir), "--workers", str(workers)]
        for directory in cleanup:
            argv += ["--cleanup", directory]
        workdir = os.path.join(root, "cwd")  # an empty cwd (it is sys.path[0] of the server)
        os.mkdir(workdir)
        logger.info("sim: starting endpoint %s (%s worker(s)) from %s", self.endpoint_name, workers, model_dir)
        self._server, self._pump, self._record = endpoints.launch(
            self.state_dir, self.endpoint_name, argv, env, cwd=workdir, detach=detach)
        logger.info("sim: endpoint %s in service at %s", self.endpoint_name, self._record.get("url"))

    @property
    def record(self) -> dict[str, Any] | None:
        return self._record

    def stop_serving(self):
        """Stop the endpoint process group, drop its record, delete its temp dirs."""
        if self.endpoint_name and self.state_dir:
            endpoints.stop_endpoint(self.state_dir, self.endpoint_name)
        if self._pump is not None:
            self._pump.join(timeout=2)
        self._server = None
