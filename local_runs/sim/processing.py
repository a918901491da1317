"""Processing jobs in sim: the SDK's ``ScriptProcessor`` / ``FrameworkProcessor`` run as host processes.

The contract honoured (what a processing container sees on SageMaker):

* each input under its ``LocalPath`` (``/opt/ml/processing/input/<name>``), each output under its
  ``LocalPath`` (``/opt/ml/processing/output/<name>``), uploaded to its ``S3Uri`` when the job ends
  (``S3UploadMode`` EndOfJob) -- and only when every host succeeded: a failed or stopped job
  uploads nothing;
* ``/opt/ml/config/processingjobconfig.json`` and ``/opt/ml/config/resourceconfig.json``
  (``current_host``, ``hosts``), written by the SDK's own ``write_processing_config_files``;
* a non-zero exit makes the job ``Failed`` with a ``FailureReason`` naming the host; UTF-8 text a
  host writes to ``/opt/ml/output/message`` becomes ``ExitMessage`` (the first 1 KB; with several
  hosts, theirs concatenated in host order);
* ``InstanceCount`` N runs N hosts (``algo-1-xxxxx`` ...), each with its own tree;
  ``S3DataDistributionType`` FullyReplicated or ShardedByS3Key (``hosts.py`` says how objects are
  dealt), which the SDK's local mode refuses.

Where ``/opt/ml`` is. There is no container, so each host's ``/opt/ml`` is a directory
``<job temp root>/<host>``. sim rewrites every ``/opt/ml/...`` path the job definition names --
``ContainerEntrypoint``, ``ContainerArguments``, ``Environment`` values, and the text of a shell
script the entrypoint runs (the FrameworkProcessor's ``runproc.sh``) -- to that directory, and sets
``SAGEMAKER_BASE_DIR`` to it (the variable the SageMaker toolkits read for their base dir). A
script that takes its paths from its arguments (as ``ScriptProcessor`` jobs do) needs nothing
else; one that opens ``/opt/ml/config/...`` itself should read
``os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")`` first.

The interpreter. ``python`` / ``python3`` in the entrypoint, and in a shell entrypoint's ``PATH``,
are this environment's interpreter. ``python -m pip install -r requirements.txt`` (what
``runproc.sh`` runs) checks the requirements against this environment instead of installing
(``requirements.py``); ``pip uninstall`` does nothing.

Jobs run in a background thread: ``create_processing_job`` returns at once (``run(wait=False)``
returns a running job, ``describe_processing_job`` says ``InProgress``) and the session's
``wait_for_processing_job`` / ``logs_for_processing_job(wait=True)`` wait for it. Ctrl-C while
waiting stops every host, uploads nothing and marks the job ``Stopped``.
"""
from __future__ import annotations

import datetime
import logging
import os
import shlex
import shutil
import stat
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import sagemaker
from sagemaker.local.image import _create_processing_config_file_directories

from local_runs.sim import hosts as hostlib
from local_runs.sim import procs

logger = logging.getLogger(__name__)

OPT_ML = "/opt/ml"
EXIT_MESSAGE_LIMIT = 1024
FAILURE_REASON_LIMIT = 1024
IN_PROGRESS, COMPLETED, FAILED, STOPPING, STOPPED = "InProgress", "Completed", "Failed", "Stopping", "Stopped"
PYTHON_NAMES = {"python", "python3", f"python{sys.version_info.major}.{sys.version_info.minor}"}
SHELLS = {"bash", "/bin/bash", "/usr/bin/bash", "sh", "/bin/sh", "/usr/bin/sh"}


class ProcessingJobFailed(RuntimeError):
    def __init__(self, reason: str, exit_message: str = ""):
        self.reason = reason
        self.exit_message = exit_message
        super().__init__(reason)


def _to_host(value: str, base: str) -> str:
    if value == OPT_ML or value.startswith(OPT_ML + "/"):
        return base + value[len(OPT_ML):]
    return value


def _rewrite(value: str, base: str) -> str:
    """Every ``/opt/ml`` path inside ``value`` (a whole argument, or a script's text) moved under ``base``."""
    return value.replace(OPT_ML + "/", base + "/") if OPT_ML + "/" in value else _to_host(value, base)


_PYTHON_SHIM = """#!/bin/sh
# sim: this environment's interpreter; `python -m pip ...` is checked, never run (see processing.py)
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then shift 2; exec {python} -m local_runs.sim.pip_check "$@"; fi
exec {python} "$@"
"""
_PIP_SHIM = """#!/bin/sh
exec {python} -m local_runs.sim.pip_check "$@"
"""


def _write_shims(directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    python = shlex.quote(sys.executable)
    for name, text in [*((n, _PYTHON_SHIM) for n in PYTHON_NAMES), ("pip", _PIP_SHIM), ("pip3", _PIP_SHIM)]:
        path = os.path.join(directory, name)
        Path(path).write_text(text.format(python=python))
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


def host_argv(entrypoint: list[str] | None, arguments: list[str] | None, base: str, scratch: str) -> list[str]:
    """The command a host runs: the job's entrypoint + arguments with ``/opt/ml`` moved under ``base``."""
    if not entrypoint:
        raise NotImplementedError(
            "sim runs a processing job's ContainerEntrypoint on the host; this job has none (it relies on "
            "the image's own entrypoint): give the processor a command/code, or use the docker backend")
    argv = [_to_host(str(a), base) for a in entrypoint] + [_to_host(str(a), base) for a in (arguments or [])]
    if os.path.basename(argv[0]) in PYTHON_NAMES:
        argv[0] = sys.executable
    elif argv[0] in SHELLS and len(argv) > 1 and os.path.isfile(argv[1]):
        # a shell entrypoint script (runproc.sh): run a copy whose /opt/ml paths point under base
        script = Path(argv[1])
        copy = Path(scratch, "entrypoint-" + script.name)
        copy.write_text(_rewrite(script.read_text(encoding="utf-8"), base), encoding="utf-8")
        argv[1] = str(copy)
    return argv


def _read_message(base: str) -> str:
    path = Path(base, "output", "message")
    if not path.is_file():
        return ""
    return path.read_bytes()[:EXIT_MESSAGE_LIMIT].decode("utf-8", "replace")


class ProcessingRun:
    """One processing job's hosts, inputs and outputs (driven by ``SimProcessingJob``)."""

    def __init__(self, container, inputs, output_config, environment, job_name, max_runtime=None):
        self.container = container
        self.inputs = inputs
        self.output_config = output_config or {}
        self.environment = environment or {}
        self.job_name = job_name
        self.max_runtime = max_runtime
        self.group: hostlib.HostGroup | None = None
        self.exit_message = ""
        self._stop = threading.Event()
        self._cleanup: list[str] = []

    def stop(self) -> None:
        self._stop.set()
        if self.group is not None:
            self.group.stop()

    def run(self) -> None:
        """Run every host; upload the outputs if all succeeded; raise ProcessingJobFailed otherwise."""
        container = self.container
        root = container.container_root = container._create_tmp_folder()
        self._cleanup.append(root)
        try:
            self._run(root)
        finally:
            for directory in self._cleanup:
                shutil.rmtree(directory, ignore_errors=True)

    def _sources(self) -> dict[str, tuple[str, str, list[str]]]:
        """name -> (distribution, downloaded root dir, its files relative to it)."""
        sources = {}
        for item in self.inputs:
            s3_input = item["S3Input"]
            name = item.get("InputName") or os.path.basename(s3_input["LocalPath"].rstrip("/"))
            kind = hostlib.check_distribution(s3_input.get("S3DataDistributionType"), f"input {name}")
            data_source = sagemaker.local.data.get_data_source_instance(item["DataUri"], self.container.sagemaker_session)
            root = data_source.get_root_dir()
            if urlparse(item["DataUri"]).scheme == "s3":
                self._cleanup.append(root)
            sources[name] = (kind, root, hostlib.relative_files(root))
        return sources

    def _run(self, root: str) -> None:
        container = self.container
        host_list = container.hosts
        sources = self._sources()
        by_name = {(item.get("InputName") or os.path.basename(item["S3Input"]["LocalPath"].rstrip("/"))): item
                   for item in self.inputs}
        shards = {name: hostlib.deal(files, len(host_list)) for name, (kind, _root, files) in sources.items()
                  if kind == hostlib.SHARDED}
        outputs = self.output_config.get("Outputs") or []
        specs = []
        for index, host in enumerate(host_list):
            base = os.path.join(root, host)
            _create_processing_config_file_directories(root, host)
            container.write_processing_config_files(host, self.environment, self.inputs, self.output_config,
                                                    self.job_name)
            os.makedirs(os.path.join(base, "output"), exist_ok=True)
            for name, (kind, source_root, _files) in sources.items():
                target = _to_host(by_name[name]["S3Input"]["LocalPath"].rstrip("/"), base)
                if not target.startswith(base + os.sep):
                    raise ValueError(f"input {name}: LocalPath must be under /opt/ml/processing, "
                                     f"got {by_name[name]['S3Input']['LocalPath']}")
                if kind == hostlib.SHARDED:
                    hostlib.shard_dir(source_root, shards[name][index], target)
                    logger.info("sim: %s gets %d of %d object(s) of input %s (ShardedByS3Key)", host,
                                len(shards[name][index]), len(_files), name)
                else:
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copytree(source_root, target, copy_function=_link_or_copy, dirs_exist_ok=True)
            for item in outputs:
                os.makedirs(_to_host(item["S3Output"]["LocalPath"].rstrip("/"), base), exist_ok=True)
            scratch = os.path.join(root, ".sim", host)
            os.makedirs(scratch)
            shims = _write_shims(os.path.join(scratch, "bin"))
            argv = host_argv(container.container_entrypoint, container.container_arguments, base, scratch)
            env = {
                **container._base_env(),
                **{k: _rewrite(str(v), base) for k, v in self.environment.items()},
                "PROCESSING_JOB_NAME": self.job_name,
                "SAGEMAKER_BASE_DIR": base,
                **procs.owner_env(),
            }
            env = procs.child_env(env)
            env["PATH"] = os.pathsep.join([shims, env.get("PATH", "")])
            code_root = os.path.join(base, "processing", "input", "code")
            env = _job_env(env, code_root)
            workdir = os.path.join(scratch, "cwd")
            os.mkdir(workdir)
            specs.append(hostlib.HostSpec(host, argv, env, workdir))
        if self._stop.is_set():
            raise KeyboardInterrupt
        logger.info("sim: processing job %s on %d host(s) in %s", self.job_name, len(host_list), root)
        self.group = hostlib.HostGroup(specs, max_runtime=self.max_runtime)
        self.group.start()
        outcome = self.group.wait()
        self.exit_message = "".join(_read_message(os.path.join(root, h)) for h in host_list)[:EXIT_MESSAGE_LIMIT]
        if outcome.stopped or self._stop.is_set():
            raise KeyboardInterrupt
        if not outcome.ok:
            raise ProcessingJobFailed(self._failure_reason(root, outcome), self.exit_message)
        self._upload(root, host_list, outputs)
        logger.info("===== Job Complete =====")

    def _failure_reason(self, root: str, outcome: hostlib.HostOutcome) -> str:
        if outcome.timed_out:
            return f"MaxRuntimeExceeded: processing stopped after {self.max_runtime:g} s"
        host = outcome.failed_host
        code = outcome.exit_codes.get(host)
        message = _read_message(os.path.join(root, host)).strip()
        detail = message or outcome.tails.get(host, "").strip()
        many = len(outcome.exit_codes) > 1
        others = " (the other hosts were stopped)" if many else ""
        return (f"AlgorithmError: host {host} {hostlib.describe_exit(code)}{others}; nothing was uploaded"
                + (f"\n{detail}" if detail else ""))[:FAILURE_REASON_LIMIT]

    def _upload(self, root: str, host_list: list[str], outputs: list[dict]) -> None:
        session = self.container.sagemaker_session
        for item in outputs:
            destination = item["S3Output"]["S3Uri"]
            for host in host_list:
                source = _to_host(item["S3Output"]["LocalPath"].rstrip("/"), os.path.join(root, host))
                if not os.listdir(source):
                    continue  # a host with nothing to say (e.g. no shard): no upload at all
                sagemaker.local.utils.move_to_destination(source, destination, "", session)


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _job_env(env, code_root):
    from local_runs.sim.container import _job_env as job_env

    return job_env(env, code_root=code_root)


class SimProcessingJob:
    """A processing job run in a background thread; ``describe`` answers like DescribeProcessingJob."""

    def __init__(self, container, max_runtime=None):
        self.container = container
        self.max_runtime = max_runtime
        self.state = "Created"
        self.failure_reason: str | None = None
        self.exit_message = ""
        self.start_time = None
        self.end_time = None
        self.processing_job_name = ""
        self.processing_inputs = None
        self.processing_output_config = None
        self.environment = None
        self._run: ProcessingRun | None = None
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    def start(self, processing_inputs, processing_output_config, environment, processing_job_name):
        from sagemaker.local.entities import _LocalProcessingJob

        # The SDK's own checks (File mode, EndOfJob uploads, no DatasetDefinition), less its refusal
        # of ShardedByS3Key: check the distribution ourselves, hand it FullyReplicated.
        checked = []
        for item in processing_inputs:
            item = dict(item)
            if "S3Input" in item:
                s3_input = dict(item["S3Input"])
                hostlib.check_distribution(s3_input.get("S3DataDistributionType"), f"input {item.get('InputName')}")
                s3_input["S3DataDistributionType"] = hostlib.FULLY_REPLICATED
                item["S3Input"] = s3_input
            checked.append(item)
        probe = _LocalProcessingJob(container=_NoRun())
        probe.start(checked, processing_output_config, environment, processing_job_name)
        for item in processing_inputs:
            item["DataUri"] = item["S3Input"]["S3Uri"]
        self.processing_job_name = processing_job_name
        self.processing_inputs = processing_inputs
        self.processing_output_config = processing_output_config
        self.environment = environment
        self.start_time = datetime.datetime.now()
        self.state = IN_PROGRESS
        self._run = ProcessingRun(self.container, processing_inputs, processing_output_config, environment,
                                  processing_job_name, max_runtime=self.max_runtime)
        self._thread = threading.Thread(target=self._body, name=f"sim-processing-{processing_job_name}", daemon=True)
        self._thread.start()

    def _body(self):
        try:
            self._run.run()
        except ProcessingJobFailed as exc:
            self._finish(FAILED, exc.reason)
        except KeyboardInterrupt:
            self._finish(STOPPED, "stopped: the job's processes were stopped, nothing was uploaded")
        except Exception as exc:  # noqa: BLE001 - e.g. an input could not be downloaded
            self._finish(FAILED, f"{type(exc).__name__}: {exc}"[:FAILURE_REASON_LIMIT])
        else:
            self._finish(COMPLETED, None)

    def _finish(self, state, reason):
        self.exit_message = self._run.exit_message if self._run else ""
        self.failure_reason = reason
        self.end_time = datetime.datetime.now()
        self.state = state
        self._done.set()

    def stop(self) -> None:
        if self.state == IN_PROGRESS:
            self.state = STOPPING
            self._run.stop()

    def wait(self) -> None:
        """Block until the job ends; Ctrl-C stops it (every host, nothing uploaded) and re-raises."""
        try:
            while not self._done.wait(0.2):
                pass
        except KeyboardInterrupt:
            self.stop()
            self._done.wait(60)
            self.failure_reason = "interrupted (Ctrl-C): the job's processes were stopped, nothing was uploaded"
            raise procs.Interrupted(f"processing job {self.processing_job_name}: {self.failure_reason}") from None

    def describe(self):
        container = self.container
        response = {
            "ProcessingJobArn": self.processing_job_name,
            "ProcessingJobName": self.processing_job_name,
            "AppSpecification": {"ImageUri": container.image, "ContainerEntrypoint": container.container_entrypoint,
                                 "ContainerArguments": container.container_arguments},
            "Environment": self.environment,
            "ProcessingInputs": self.processing_inputs,
            "ProcessingOutputConfig": self.processing_output_config,
            "ProcessingResources": {"ClusterConfig": {"InstanceCount": container.instance_count,
                                                      "InstanceType": container.instance_type,
                                                      "VolumeSizeInGB": 30}},
            "RoleArn": "<no_role>",
            "StoppingCondition": {"MaxRuntimeInSeconds": int(self.max_runtime or 86400)},
            "ProcessingJobStatus": self.state,
            "ProcessingStartTime": self.start_time,
            "ProcessingEndTime": self.end_time,
        }
        if self.exit_message:
            response["ExitMessage"] = self.exit_message
        if self.failure_reason and self.state in (FAILED, STOPPED):
            response["FailureReason"] = self.failure_reason
        return response


class _NoRun:
    """Stands in for the container while the SDK's entity checks a job definition."""

    def process(self, *args, **kwargs):
        return None
