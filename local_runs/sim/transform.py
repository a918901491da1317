"""Batch transform in sim: SageMaker's ``CreateTransformJob`` over the sim's own serving processes.

The SDK's unchanged ``model.transformer(...).transform(s3_uri, content_type=..., split_type='Line')``
reaches ``SimSagemakerClient.create_transform_job``, which starts a ``SimTransformJob`` and returns
at once (like SageMaker; ``wait()`` / ``describe_transform_job`` follow it). The job keeps
SageMaker's contract:

* every object under the input prefix (S3Prefix) is read (``CompressionType`` Gzip is
  decompressed), split into records by line (``SplitType`` Line; None = the whole object is one
  record; blank lines are no record) and POSTed to ``/invocations``: one record per request
  (SingleRecord) or as many whole records as fit in ``MaxPayloadInMB`` (MultiRecord, records
  joined by newlines); a record larger than that fails the job;
* each input object ``x`` becomes ``x.out`` under ``S3OutputPath`` (its key relative to the input
  prefix's folder), the answers in input order; ``AssembleWith`` Line ends each answer with one
  newline (an answer's own trailing newline is not doubled), None concatenates them;
* the serving container is asked ``GET /execution-parameters`` first, as SageMaker asks it: a 200
  JSON answer supplies ``BatchStrategy`` / ``MaxPayloadInMB`` / ``MaxConcurrentTransforms`` the
  request left out (the SDK's local mode does the same for the first two). The PyTorch serving
  stack answers 404, and then SageMaker's defaults apply: MultiRecord, 6 MB, 1 request at a time;
* ``InstanceCount`` N starts N serving processes (at most one per input object: an instance with
  nothing to do is not started) and deals the objects across them in key order; each instance
  sends up to ``MaxConcurrentTransforms`` requests at once (default 1) and its serving process
  gets that many workers unless ``SAGEMAKER_MODEL_SERVER_WORKERS`` says otherwise;
* ``ModelClientConfig``: ``InvocationsTimeoutInSeconds`` (default 600) bounds one request (it is
  also the serving process's model timeout) and ``InvocationsMaxRetries`` (default 3) retries a
  5xx or a timed-out request; a 4xx is never retried.

The serving processes are the endpoint server of ``deploy`` (``SimContainer.serve``: the real
inference toolkit, the model downloaded from S3, a free 127.0.0.1 port), registered in a private
registry under ``<state dir>/transform/<job>`` so they never show up as endpoints, and stopped when
the job ends, however it ends. Their per-request log lines go to ``.../endpoints/instance-N.log``
(the start-up is echoed).

Failures, as SageMaker reports them (``TransformJobStatus`` Failed, ``FailureReason`` at most
1024 characters): a 4xx names the object, the line and the model's message (for MultiRecord the
line inside the request, when the model names one, is mapped back to the object's line); a
serving process that dies (``kill -9``) fails the job naming the instance and its log; a model
that does not load fails it with the start-up error. Outputs are uploaded only when every object
has been transformed, each as one S3 object, so a failed or stopped job leaves no ``.out`` behind.
Ctrl-C while waiting stops the serving processes (ports released) and raises
``procs.Interrupted``; the job is Stopped.
"""
from __future__ import annotations

import collections
import datetime
import gzip
import http.client
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from local_runs.sim import procs, registry

MiB = 1024 * 1024
DEFAULT_STRATEGY = "MultiRecord"
DEFAULT_MAX_PAYLOAD_MB = 6
DEFAULT_MAX_CONCURRENT = 1
DEFAULT_INVOCATION_TIMEOUT_S = 600
DEFAULT_MAX_RETRIES = 3
MAX_PAYLOAD_LIMIT_MB = 100  # SageMaker's bound on MaxPayloadInMB (and on MaxConcurrentTransforms x it)
FAILURE_REASON_LIMIT = 1024
EXECUTION_PARAMETERS_PATH = "/execution-parameters"
_LINE_IN_MESSAGE = re.compile(r"^line (\d+)\b:?\s*(.*)$", re.S)

IN_PROGRESS, COMPLETED, FAILED, STOPPING, STOPPED = "InProgress", "Completed", "Failed", "Stopping", "Stopped"


class TransformValidationError(ValueError):
    """The request cannot run (what SageMaker would refuse, or what sim does not do); raised by create."""


class TransformFailed(RuntimeError):
    """The job failed; ``str()`` is its FailureReason."""


class _Cancelled(Exception):
    """Another instance failed or the job is being stopped: stop quietly."""


# --- records, requests, answers (pure functions) -------------------------------------------------

@dataclass(frozen=True)
class Record:
    line: int  # 1-based line of the object (1 for SplitType None)
    data: bytes  # without its line terminator


@dataclass
class Batch:
    """One request: the records it carries and its body."""

    records: list[Record]
    body: bytes

    @property
    def lines(self) -> str:
        first, last = self.records[0].line, self.records[-1].line
        return f"line {first}" if first == last else f"lines {first}-{last}"


def split_records(data: bytes, split_type: str | None) -> Iterator[Record]:
    """The records of one object. Line: one per line (``\\n``, ``\\r\\n``), blank lines skipped."""
    if split_type in (None, "None"):
        if data.strip():
            yield Record(1, data)
        return
    if split_type != "Line":
        raise TransformValidationError(f"SplitType {split_type!r}: sim splits by Line or None")
    for number, line in enumerate(data.split(b"\n"), 1):
        line = line[:-1] if line.endswith(b"\r") else line
        if line.strip():
            yield Record(number, line)


def make_batches(records: Iterable[Record], strategy: str, max_payload_mb: int, split_type: str | None = "Line",
                 where: str = "the object") -> Iterator[Batch]:
    """Requests for SingleRecord (one record each) or MultiRecord (whole records, at most MaxPayloadInMB).

    MultiRecord bodies join records with newlines (each record ends with one). ``max_payload_mb`` 0
    means no limit. A record larger than the limit raises TransformFailed naming it.
    """
    limit = int(max_payload_mb) * MiB if max_payload_mb else None
    lines = split_type == "Line"
    if strategy not in ("SingleRecord", "MultiRecord"):
        raise TransformValidationError(f"BatchStrategy {strategy!r} must be SingleRecord or MultiRecord")

    def too_big(record: Record, size: int) -> TransformFailed:
        return TransformFailed(f"ClientError: the record at line {record.line} of {where} has {size} bytes, more than "
                               f"MaxPayloadInMB ({max_payload_mb} MB); raise max_payload or split the record")

    if strategy == "SingleRecord" or not lines:
        for record in records:
            if limit is not None and len(record.data) > limit:
                raise too_big(record, len(record.data))
            yield Batch([record], record.data)
        return
    pending: list[Record] = []
    size = 0
    for record in records:
        cost = len(record.data) + 1
        if limit is not None and cost > limit:
            raise too_big(record, cost)
        if pending and limit is not None and size + cost > limit:
            yield Batch(pending, b"".join(r.data + b"\n" for r in pending))
            pending, size = [], 0
        pending.append(record)
        size += cost
    if pending:
        yield Batch(pending, b"".join(r.data + b"\n" for r in pending))


def assemble(answer: bytes, assemble_with: str | None) -> bytes:
    """One answer as it goes into ``x.out``: Line ends it with exactly one newline; None keeps it as is."""
    if assemble_with == "Line":
        return (answer[:-1] if answer.endswith(b"\n") else answer) + b"\n"
    return answer


def deal(keys: list[str], instances: int) -> list[list[str]]:
    """Objects dealt across instances in key order (round robin); no instance gets an empty list."""
    keys = sorted(keys)
    count = max(1, min(int(instances), len(keys)))
    return [keys[i::count] for i in range(count)]


def output_key(input_prefix: str, key: str, output_prefix: str) -> str:
    """``x`` -> ``x.out`` under the output prefix, its path relative to the input prefix (as the SDK's
    local mode downloads it): a prefix that is the key itself keeps the file name; otherwise the prefix
    is a folder (``in`` = ``in/``) and the key keeps its path below it."""
    if key == input_prefix:
        relative = key.rsplit("/", 1)[-1]
    else:
        folder = input_prefix if input_prefix.endswith("/") or not input_prefix else input_prefix + "/"
        relative = key[len(folder):] if key.startswith(folder) else \
            key[input_prefix.rfind("/") + 1:]  # a key that only extends the prefix's last name (in2/...)
    output_prefix = output_prefix.strip("/")
    return f"{output_prefix}/{relative}.out" if output_prefix else f"{relative}.out"


def model_message(body: bytes) -> str:
    """The model's own words from an error body ({"error": {"message"}} or plain text)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text)
        message = payload["error"]["message"] if isinstance(payload.get("error"), dict) else payload.get("message")
        if isinstance(message, str) and message:
            return message
    except (ValueError, AttributeError, KeyError, TypeError):
        pass
    return text.splitlines()[0][:500] if text else "(empty body)"


def refused_reason(status: int, body: bytes, batch: Batch, where: str, strategy: str) -> str:
    """FailureReason for a 4xx: the object, the line and the model's message."""
    message = model_message(body)
    match = _LINE_IN_MESSAGE.match(message)
    if match and len(batch.records) > 1 and 1 <= int(match.group(1)) <= len(batch.records):
        record = batch.records[int(match.group(1)) - 1]
        return (f"ClientError: the model refused line {record.line} of {where} with {status}: {match.group(2)} "
                f"({strategy} request of {batch.lines})")
    if len(batch.records) == 1:
        if match:  # the model numbered the line of a one-line request: it is this record
            message = match.group(2)
        return f"ClientError: the model refused line {batch.records[0].line} of {where} with {status}: {message}"
    return f"ClientError: the model refused the {strategy} request of {batch.lines} of {where} with {status}: {message}"


def resolve_parameters(requested: dict, container: dict | None) -> dict:
    """BatchStrategy / MaxPayloadInMB / MaxConcurrentTransforms: the request's, else the container's
    (``/execution-parameters``), else SageMaker's defaults."""
    container = container or {}
    defaults = {"BatchStrategy": DEFAULT_STRATEGY, "MaxPayloadInMB": DEFAULT_MAX_PAYLOAD_MB,
                "MaxConcurrentTransforms": DEFAULT_MAX_CONCURRENT}
    resolved = {}
    for key, default in defaults.items():
        def unset(value, key=key):  # MaxConcurrentTransforms 0 = not set; MaxPayloadInMB 0 = no limit
            return value is None or (key == "MaxConcurrentTransforms" and not value)
        value = requested.get(key)
        if unset(value):
            value = container.get(key)
        resolved[key] = default if unset(value) else value
    resolved["MaxPayloadInMB"] = int(resolved["MaxPayloadInMB"])
    resolved["MaxConcurrentTransforms"] = int(resolved["MaxConcurrentTransforms"])
    return resolved


def validate_request(request: dict) -> None:
    """What SageMaker refuses in CreateTransformJob, and what sim does not do, as one clear error."""
    transform_input = request["TransformInput"]
    source = (transform_input.get("DataSource") or {}).get("S3DataSource") or {}
    if not source.get("S3Uri", "").startswith("s3://"):
        raise TransformValidationError("TransformInput.DataSource.S3DataSource.S3Uri must be an s3:// URI")
    if source.get("S3DataType", "S3Prefix") != "S3Prefix":
        raise TransformValidationError(f"S3DataType {source.get('S3DataType')!r}: sim reads S3Prefix inputs only")
    if transform_input.get("CompressionType", "None") not in ("None", "Gzip", None):
        raise TransformValidationError(f"CompressionType {transform_input['CompressionType']!r} must be None or Gzip")
    split_type = transform_input.get("SplitType")
    if split_type not in (None, "None", "Line"):
        raise TransformValidationError(f"SplitType {split_type!r}: sim splits by Line or None (not RecordIO/TFRecord)")
    output = request["TransformOutput"]
    if not output.get("S3OutputPath", "").startswith("s3://"):
        raise TransformValidationError("TransformOutput.S3OutputPath must be an s3:// URI")
    if output.get("AssembleWith", "None") not in ("None", "Line", None):
        raise TransformValidationError(f"AssembleWith {output['AssembleWith']!r} must be None or Line")
    strategy = request.get("BatchStrategy")
    if strategy is not None and strategy not in ("SingleRecord", "MultiRecord"):
        raise TransformValidationError(f"BatchStrategy {strategy!r} must be SingleRecord or MultiRecord")
    payload = request.get("MaxPayloadInMB")
    if payload is not None and not 0 <= int(payload) <= MAX_PAYLOAD_LIMIT_MB:
        raise TransformValidationError(f"MaxPayloadInMB {payload} must be 0-{MAX_PAYLOAD_LIMIT_MB}")
    concurrent = request.get("MaxConcurrentTransforms")
    if concurrent is not None and int(concurrent) < 0:
        raise TransformValidationError(f"MaxConcurrentTransforms {concurrent} must be 0 or more")
    if payload and concurrent and int(payload) * int(concurrent) > MAX_PAYLOAD_LIMIT_MB:
        raise TransformValidationError(f"MaxConcurrentTransforms x MaxPayloadInMB ({concurrent} x {payload}) must "
                                       f"not exceed {MAX_PAYLOAD_LIMIT_MB} MB")
    if int(request["TransformResources"].get("InstanceCount", 1)) < 1:
        raise TransformValidationError("TransformResources.InstanceCount must be at least 1")
    processing = request.get("DataProcessing") or {}
    if any(processing.get(k) not in (None, "$", "None") for k in ("InputFilter", "OutputFilter", "JoinSource")):
        raise TransformValidationError(f"DataProcessing {processing}: sim does not apply input/output filters or "
                                       "join_source")


def execution_parameters(host: str, port: int, timeout: float = 10.0) -> dict | None:
    """``GET /execution-parameters`` of a serving container: its JSON on 200, else None (not offered)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", EXECUTION_PARAMETERS_PATH)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return None
        answer = json.loads(body.decode("utf-8"))
        return answer if isinstance(answer, dict) else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def _how_it_ended(code: int | None) -> str:
    if code is None:
        return "is not answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


# --- the job ---------------------------------------------------------------------------------------

@dataclass
class _Instance:
    index: int  # 1-based
    keys: list[str]
    container: object = None
    host: str = "127.0.0.1"
    port: int = 0
    log_path: str = ""
    records: int = 0
    requests: int = 0
    outputs: dict = field(default_factory=dict)  # key -> local file of its .out


class SimTransformJob:
    """One CreateTransformJob: serving processes started, records sent, outputs uploaded, processes stopped."""

    def __init__(self, request: dict, primary_container: dict, session):
        validate_request(request)
        self.request = request
        self.name = request["TransformJobName"]
        self.model_name = request["ModelName"]
        self.primary_container = primary_container
        self.session = session
        self.state = IN_PROGRESS
        self.failure_reason: str | None = None
        self.creation_time = datetime.datetime.now()
        self.start_time: datetime.datetime | None = None
        self.end_time: datetime.datetime | None = None
        self.parameters: dict = {}
        self.instances: list[_Instance] = []
        self.stats: dict = {}
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.state_dir = Path(session.state_dir) / "transform" / self.name
        client_config = request.get("ModelClientConfig") or {}
        self.invocation_timeout = float(client_config.get("InvocationsTimeoutInSeconds") or DEFAULT_INVOCATION_TIMEOUT_S)
        retries = client_config.get("InvocationsMaxRetries")
        self.max_retries = DEFAULT_MAX_RETRIES if retries is None else int(retries)

    # --- lifetime ---
    def start(self) -> None:
        """Run the job in a thread; returns at once."""
        self.start_time = datetime.datetime.now()
        self._thread = threading.Thread(target=self._run, name=f"transform-{self.name}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the job ends. Ctrl-C stops it and raises ``procs.Interrupted``."""
        try:
            while not self._done.wait(0.2):
                pass
        except KeyboardInterrupt:
            self.stop()
            self._done.wait(30)
            raise procs.Interrupted(f"transform job {self.name}: interrupted (Ctrl-C): its serving processes were "
                                    "stopped, nothing was written") from None

    def stop(self) -> None:
        """StopTransformJob: stop sending, stop the serving processes, write nothing."""
        with self._lock:
            if self.state == IN_PROGRESS:
                self.state = STOPPING
        self._stop.set()
        self._stop_servers()

    def describe(self) -> dict:
        resources = self.request["TransformResources"]
        response = {
            "TransformJobName": self.name,
            "TransformJobArn": f"arn:aws:sagemaker:{self.session.boto_region_name}:000000000000:transform-job/"
                               f"{self.name.lower()}",
            "TransformJobStatus": self.state,
            "ModelName": self.model_name,
            "MaxConcurrentTransforms": self.parameters.get("MaxConcurrentTransforms",
                                                           self.request.get("MaxConcurrentTransforms")),
            "MaxPayloadInMB": self.parameters.get("MaxPayloadInMB", self.request.get("MaxPayloadInMB")),
            "BatchStrategy": self.parameters.get("BatchStrategy", self.request.get("BatchStrategy")),
            "Environment": dict(self.request.get("Environment") or {}),
            "TransformInput": self.request["TransformInput"],
            "TransformOutput": self.request["TransformOutput"],
            "TransformResources": resources,
            "CreationTime": self.creation_time,
            "TransformStartTime": self.start_time,
            "TransformEndTime": self.end_time,
        }
        if self.request.get("ModelClientConfig"):
            response["ModelClientConfig"] = self.request["ModelClientConfig"]
        if self.request.get("DataProcessing"):
            response["DataProcessing"] = self.request["DataProcessing"]
        if self.failure_reason:
            response["FailureReason"] = self.failure_reason
        return {k: v for k, v in response.items() if v is not None}

    # --- the run ---
    def _run(self) -> None:
        workdir = None
        try:
            root = Path(self.session.config.get("local", {}).get("container_root") or tempfile.gettempdir())
            root.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix=f"transform-{self.name[:40]}-", dir=root))
            self._transform(workdir)
            with self._lock:
                self.state = COMPLETED
        except (_Cancelled, TransformFailed, Exception) as exc:  # noqa: BLE001 - every end is a job status
            with self._lock:
                if self.state == STOPPING or (isinstance(exc, _Cancelled) and self.failure_reason is None):
                    self.state = STOPPED
                else:
                    self.state = FAILED
                    if self.failure_reason is None:
                        reason = str(exc) if isinstance(exc, TransformFailed) else f"{type(exc).__name__}: {exc}"
                        self.failure_reason = reason[:FAILURE_REASON_LIMIT]
        finally:
            self._stop_servers()
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
            if self.state == COMPLETED:
                shutil.rmtree(self.state_dir, ignore_errors=True)
            self.end_time = datetime.datetime.now()
            self._done.set()

    def _fail(self, reason: str) -> None:
        """The first failure wins; the other instances stop at their next request."""
        with self._lock:
            if self.failure_reason is None and self.state == IN_PROGRESS:
                self.failure_reason = reason[:FAILURE_REASON_LIMIT]
        self._stop.set()

    def _transform(self, workdir: Path) -> None:
        transform_input = self.request["TransformInput"]
        input_uri = transform_input["DataSource"]["S3DataSource"]["S3Uri"]
        keys = self._list_objects(input_uri)
        if not keys:
            raise TransformFailed(f"ClientError: no S3 objects found under {input_uri}")
        count = int(self.request["TransformResources"].get("InstanceCount", 1))
        self.instances = [_Instance(i + 1, part) for i, part in enumerate(deal(keys, count))]
        self._print(f"{len(keys)} object(s) under {input_uri} on {len(self.instances)} instance(s)")
        self._start_servers()
        first = self.instances[0]
        offered = execution_parameters(first.host, first.port)
        self.parameters = resolve_parameters(self.request, offered)
        self._print(f"{self.parameters['BatchStrategy']}, MaxPayloadInMB {self.parameters['MaxPayloadInMB']}, "
                    f"MaxConcurrentTransforms {self.parameters['MaxConcurrentTransforms']}"
                    f" (/execution-parameters: {'answered' if offered is not None else 'not offered, defaults'})")
        started = time.perf_counter()
        threads = [threading.Thread(target=self._run_instance, args=(instance, workdir), daemon=True,
                                    name=f"transform-{self.name}-{instance.index}") for instance in self.instances]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.failure_reason is not None:
            raise TransformFailed(self.failure_reason)
        if self._stop.is_set():
            raise _Cancelled()
        output_uri = self.request["TransformOutput"]["S3OutputPath"]
        bucket, prefix = _split_s3(output_uri)
        s3 = self.session.s3_client
        for instance in self.instances:  # only now: a failed or stopped job leaves no .out behind
            for key, path in instance.outputs.items():
                if self._stop.is_set():
                    raise _Cancelled()
                s3.upload_file(str(path), bucket, output_key(_split_s3(input_uri)[1], key, prefix))
        self.stats = {"objects": len(keys), "records": sum(i.records for i in self.instances),
                      "requests": sum(i.requests for i in self.instances),
                      "seconds": round(time.perf_counter() - started, 3)}
        self._print(f"done: {self.stats['records']} records in {self.stats['requests']} requests, "
                    f"{self.stats['seconds']:.1f} s; output under {output_uri}")

    def _print(self, text: str) -> None:
        print(f"transform job {self.name}: {text}", flush=True)

    def _list_objects(self, uri: str) -> list[str]:
        bucket, prefix = _split_s3(uri)
        keys = []
        paginator = self.session.s3_client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        return keys

    # --- serving processes ---
    def _environment(self) -> dict:
        """The serving container's environment, as the SDK's local mode builds it, plus the timeout/workers."""
        env = dict(self.primary_container.get("Environment") or {})
        env["SAGEMAKER_BATCH"] = "True"
        if self.request.get("MaxPayloadInMB") is not None:
            env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = str(self.request["MaxPayloadInMB"])
        strategy = self.request.get("BatchStrategy")
        if strategy:
            env["SAGEMAKER_BATCH_STRATEGY"] = {"SingleRecord": "SINGLE_RECORD", "MultiRecord": "MULTI_RECORD"}[strategy]
        concurrent = int(self.request.get("MaxConcurrentTransforms") or DEFAULT_MAX_CONCURRENT)
        env["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = str(concurrent)
        env.setdefault("SAGEMAKER_MODEL_SERVER_WORKERS", str(concurrent))
        env.setdefault("SAGEMAKER_MODEL_SERVER_TIMEOUT", str(int(self.invocation_timeout)))
        env.update(self.request.get("Environment") or {})
        return env

    def _start_servers(self) -> None:
        from local_runs.sim.container import SimContainer

        image = self.primary_container["Image"]
        instance_type = self.request["TransformResources"]["InstanceType"]
        environment = self._environment()
        errors: list[tuple[int, BaseException]] = []

        def start(instance: _Instance) -> None:
            container = SimContainer(instance_type, 1, image, self.session)
            instance.container = container
            try:
                container.serve(self.primary_container["ModelDataUrl"], environment,
                                endpoint_name=f"instance-{instance.index}", state_dir=self.state_dir)
            except BaseException as exc:  # noqa: BLE001 - reported below, as the job's failure
                errors.append((instance.index, exc))
                return
            pump = getattr(container, "_pump", None)
            if pump is not None:  # start-up was echoed; one line per request only goes to the log
                pump._echo = False
            record = container.record or {}
            instance.host, instance.port = record.get("host", "127.0.0.1"), int(record.get("port") or 0)
            instance.log_path = str(registry.log_path(self.state_dir, f"instance-{instance.index}"))

        self.state_dir.mkdir(parents=True, exist_ok=True)
        threads = [threading.Thread(target=start, args=(i,), daemon=True) for i in self.instances]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
                if self._stop.is_set():  # Ctrl-C while starting: stop what has come up (again, until all are done)
                    self._stop_servers()
        if self._stop.is_set():
            raise _Cancelled()
        if errors:
            index, exc = sorted(errors, key=lambda e: e[0])[0]
            raise TransformFailed(f"ClientError: the model did not start on instance {index}: {exc}")

    def _stop_servers(self) -> None:
        for instance in self.instances:
            container = instance.container
            if container is not None:
                try:
                    container.stop_serving()
                except Exception:  # noqa: BLE001 - best effort; the owner watch stops it anyway
                    pass

    def _server_gone(self, instance: _Instance) -> str | None:
        """How the serving process ended, if it did."""
        proc = getattr(instance.container, "_server", None)
        if proc is None:
            return None
        code = proc.poll()
        return None if code is None else _how_it_ended(code)

    # --- one instance ---
    def _run_instance(self, instance: _Instance, workdir: Path) -> None:
        try:
            for key in instance.keys:
                if self._stop.is_set():
                    return
                instance.outputs[key] = self._transform_object(instance, key, workdir)
        except _Cancelled:
            return
        except TransformFailed as exc:
            self._fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - a job failure, not a crash
            self._fail(f"{type(exc).__name__}: {exc}")

    def _transform_object(self, instance: _Instance, key: str, workdir: Path) -> Path:
        transform_input = self.request["TransformInput"]
        bucket = _split_s3(transform_input["DataSource"]["S3DataSource"]["S3Uri"])[0]
        where = f"s3://{bucket}/{key}"
        data = self.session.s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        if transform_input.get("CompressionType") == "Gzip":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as exc:
                raise TransformFailed(f"ClientError: {where} is not valid gzip (CompressionType Gzip): {exc}") from None
        split_type = transform_input.get("SplitType")
        strategy = self.parameters["BatchStrategy"]
        batches = make_batches(split_records(data, split_type), strategy, self.parameters["MaxPayloadInMB"],
                               split_type, where)
        headers = {"Content-Type": transform_input.get("ContentType") or "application/octet-stream"}
        accept = self.request["TransformOutput"].get("Accept")
        if accept:
            headers["Accept"] = accept
        assemble_with = self.request["TransformOutput"].get("AssembleWith")
        out_path = workdir / f"{instance.index}-{len(instance.outputs)}.out"
        ahead = max(1, self.parameters["MaxConcurrentTransforms"])
        with open(out_path, "wb") as out, ThreadPoolExecutor(ahead, thread_name_prefix="transform-send") as pool:
            pending: collections.deque = collections.deque()

            def drain_one():
                batch, future = pending.popleft()
                out.write(assemble(future.result(), assemble_with))
                instance.records += len(batch.records)
                instance.requests += 1

            try:
                for batch in batches:
                    if self._stop.is_set():
                        raise _Cancelled()
                    pending.append((batch, pool.submit(self._send, instance, batch, headers, where, strategy)))
                    while len(pending) >= ahead:
                        drain_one()
                while pending:
                    drain_one()
            except BaseException:
                for _, future in pending:
                    future.cancel()
                raise
        return out_path

    def _send(self, instance: _Instance, batch: Batch, headers: dict, where: str, strategy: str) -> bytes:
        """POST one request; the answer's body, or TransformFailed as SageMaker would report it."""
        last = ""
        for attempt in range(self.max_retries + 1):
            if self._stop.is_set():
                raise _Cancelled()
            conn = http.client.HTTPConnection(instance.host, instance.port, timeout=self.invocation_timeout)
            try:
                conn.request("POST", "/invocations", body=batch.body, headers=headers)
                response = conn.getresponse()
                body = response.read()
                status = response.status
            except socket.timeout:
                last = f"no answer within {self.invocation_timeout:g} s (InvocationsTimeoutInSeconds)"
                continue
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, or cut mid-answer (IncompleteRead)
                if self._stop.is_set():
                    raise _Cancelled() from None
                time.sleep(0.3)
                gone = self._server_gone(instance)
                if gone is not None:
                    raise TransformFailed(
                        f"AlgorithmError: the serving process of instance {instance.index} {gone} while {batch.lines} "
                        f"of {where} were being transformed; nothing was written. Its log: {instance.log_path}") from None
                last = f"the serving process could not be reached ({exc})"
                time.sleep(min(5.0, 0.5 * (attempt + 1)))  # e.g. a worker being replaced
                continue
            finally:
                conn.close()
            if 200 <= status < 300:
                return body
            if 400 <= status < 500:
                raise TransformFailed(refused_reason(status, body, batch, where, strategy))
            last = f"{status}: {model_message(body)}"
        raise TransformFailed(f"AlgorithmError: {batch.lines} of {where} failed after {self.max_retries + 1} "
                              f"attempt(s) (InvocationsMaxRetries {self.max_retries}): {last}. "
                              f"See the serving log {instance.log_path}")
