"""End-to-end sim cycles through the unchanged SageMaker SDK v2 code (no Docker, no AWS)."""
from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import boto3
import psutil
import pytest
from botocore.exceptions import ClientError

from local_runs import daemon
from local_runs.s3_server import LocalS3
from local_runs.sim import SimSession, registry

from sagemaker.deserializers import JSONDeserializer  # noqa: E402  (after local_runs: quiet SDK)
from sagemaker.exceptions import UnexpectedStatusException  # noqa: E402
from sagemaker.pytorch import PyTorch, PyTorchModel  # noqa: E402
from sagemaker.serializers import JSONSerializer  # noqa: E402

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
ENTRY = HERE / "sim_entry"
DEP = HERE / "sim_deps" / "echo_lib"
ROLE = "arn:aws:iam::111111111111:role/SageMakerRole"
# Newest PyTorch with both a training and an inference image for py311/py312 in SDK 2.257.7
# (2.7/2.8 have training images only, so deploy() would fail to find an image).
FRAMEWORK = {"framework_version": "2.6", "py_version": "py312"}
BUCKET = "sim-tests"
TRAIN = f"s3://{BUCKET}/data/train"


@pytest.fixture(scope="module")
def s3():
    with LocalS3(bucket=BUCKET, set_environ=False) as server:  # the session must not need the variable
        client = server.client()
        client.put_object(Bucket=BUCKET, Key="data/train/a.txt", Body=b"one\ntwo\n")
        client.put_object(Bucket=BUCKET, Key="data/train/b.txt", Body=b"three\n")
        yield server


@pytest.fixture(scope="module")
def session(s3, tmp_path_factory):
    return SimSession(s3_endpoint_url=s3.url, default_bucket=BUCKET, state_dir=tmp_path_factory.mktemp("sim-state"))


def make_estimator(session, source_dir=ENTRY, **hyperparameters):
    return PyTorch(entry_point="entry_point.py", source_dir=str(source_dir), dependencies=[str(DEP)], role=ROLE,
                   instance_count=1, instance_type="local", hyperparameters=hyperparameters,
                   sagemaker_session=session, **FRAMEWORK)


def deploy(estimator_or_model, name=None):
    return estimator_or_model.deploy(initial_instance_count=1, instance_type="local", endpoint_name=name,
                                     serializer=JSONSerializer(), deserializer=JSONDeserializer())


@pytest.fixture(scope="module")
def trained(session):
    estimator = make_estimator(session, greeting="hi")
    estimator.fit({"train": TRAIN})
    return estimator


def tar_names(s3, key):
    body = s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return set(tar.getnames()), {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def keys(s3, prefix=""):
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def endpoint_processes(record):
    main = psutil.Process(record["pid"])
    return [main] + main.children(recursive=True)


def assert_endpoint_gone(state_dir, record, processes, timeout=10.0):
    _gone, alive = psutil.wait_procs(processes, timeout=timeout)
    assert not alive, f"still running: {alive}"
    assert not daemon.port_accepts("127.0.0.1", record["port"])
    assert registry.read(state_dir, record["name"]) is None
    assert not any(Path(d).exists() for d in record.get("cleanup_dirs") or [])


def test_full_cycle_with_unchanged_sdk_code(s3, session, capsys):
    started = time.monotonic()
    est = PyTorch(entry_point="entry_point.py", source_dir=str(ENTRY), dependencies=[str(DEP)], role=ROLE,
                  framework_version="2.6", py_version="py312", instance_count=1, instance_type="local",
                  hyperparameters={"greeting": "hello", "k": 2}, sagemaker_session=session)
    est.fit({"train": TRAIN})
    fitted = time.monotonic()
    predictor = est.deploy(initial_instance_count=1, instance_type="local",
                           serializer=JSONSerializer(), deserializer=JSONDeserializer())
    deployed = time.monotonic()
    out = predictor.predict({"query": "My children liked it", "n_items": 3})
    predicted = time.monotonic()
    assert out["echo"] == "MY CHILDREN LIKED IT" and out["n_items"] == 3
    assert out["greeting"] == "hello" and out["lines"] == 3 and out["body_type"] == "str"
    assert "trained on 3 lines" in capsys.readouterr().out  # container output streamed like local mode

    record = session.endpoint_record(predictor.endpoint_name)
    # the model runs in a worker supervised by the registered serving process
    worker_pids = [p.pid for p in psutil.Process(record["pid"]).children()]
    assert record["status"] == "InService" and record["host"] == "127.0.0.1" and out["pid"] in worker_pids
    processes = endpoint_processes(record)

    job = est.latest_training_job.name
    assert est.latest_training_job.describe()["TrainingJobStatus"] == "Completed"
    names, _ = tar_names(s3, f"{job}/source/sourcedir.tar.gz")
    assert {"entry_point.py", "requirements.txt", "echo_lib/__init__.py"} <= names
    names, files = tar_names(s3, f"{job}/output/model.tar.gz")
    model = json.loads(files["model.json"])
    assert model["greeting"] == "hello" and model["files"] == ["a.txt", "b.txt"] and model["hps"]["k"] == 2
    repacked = [k for k in keys(s3) if k.endswith("model.tar.gz") and not k.startswith(f"{job}/")]
    assert len(repacked) == 1
    names, _ = tar_names(s3, repacked[0])
    assert {"model.json", "code/entry_point.py", "code/requirements.txt", "code/lib/echo_lib/__init__.py"} <= names

    predictor.delete_endpoint()
    deleted = time.monotonic()
    assert_endpoint_gone(session.state_dir, record, processes)
    with pytest.raises(ClientError):
        session.sagemaker_client.describe_endpoint(EndpointName=predictor.endpoint_name)
    timings = (f"fit {fitted - started:.1f}s, deploy {deployed - fitted:.1f}s, predict "
               f"{(predicted - deployed) * 1000:.0f}ms, delete {deleted - predicted:.1f}s")
    print(timings)
    assert deleted - started < 60, timings


def test_training_failure_shows_failure_reason(s3, session):
    est = make_estimator(session, fail_with="the data is bad")
    with pytest.raises(UnexpectedStatusException) as info:
        est.fit({"train": TRAIN})
    message = str(info.value)
    assert "Failed. Reason: ExecuteUserScriptError" in message and "the data is bad" in message
    desc = est.latest_training_job.describe()
    assert desc["TrainingJobStatus"] == "Failed" and "the data is bad" in desc["FailureReason"]
    assert len(desc["FailureReason"]) <= 1024
    job = est.latest_training_job.name
    assert keys(s3, f"{job}/") == [f"{job}/source/sourcedir.tar.gz"]  # no model.tar.gz


def test_missing_requirement_fails_clearly(s3, session, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ENTRY, source)
    (source / "requirements.txt").write_text("boto3\ndefinitely-not-installed-xyz==1.0\n")
    started = time.monotonic()
    with pytest.raises(UnexpectedStatusException, match=r"definitely-not-installed-xyz==1.0 \(not installed\)"):
        make_estimator(session, source_dir=source).fit({"train": TRAIN})
    assert time.monotonic() - started < 30  # checked, not pip-installed


def test_bad_request_is_model_error_and_endpoint_keeps_serving(session, trained):
    predictor = deploy(trained)
    try:
        runtime = session.sagemaker_runtime_client
        with pytest.raises(ClientError) as info:
            predictor.predict({"no_query": True})
        error = info.value
        assert isinstance(error, runtime.exceptions.ModelError)
        assert error.response["Error"]["Code"] == "ModelError"
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 424
        assert error.response["OriginalStatusCode"] == 400
        assert error.response["OriginalMessage"].startswith("bad")

        with pytest.raises(runtime.exceptions.ModelError) as info:
            predictor.predict({"query": "x", "crash": True})
        assert info.value.response["OriginalStatusCode"] == 500 and "boom" in info.value.response["OriginalMessage"]

        assert predictor.predict({"query": "still here"})["echo"] == "STILL HERE"
    finally:
        predictor.delete_endpoint()


def test_boto3_runtime_reaches_endpoint_by_name(session, trained, monkeypatch):
    predictor = deploy(trained, name="boto3-path")
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", session.runtime_url)
        runtime = boto3.client("sagemaker-runtime", region_name="us-east-1",
                               aws_access_key_id="x", aws_secret_access_key="y")
        response = runtime.invoke_endpoint(EndpointName="boto3-path", ContentType="application/json",
                                           Accept="application/json", Body=json.dumps({"query": "via boto3"}))
        assert json.loads(response["Body"].read())["echo"] == "VIA BOTO3"
        with pytest.raises(runtime.exceptions.ModelError):
            runtime.invoke_endpoint(EndpointName="boto3-path", ContentType="application/json", Body=b"{}")
        with pytest.raises(runtime.exceptions.ValidationError):
            runtime.invoke_endpoint(EndpointName="no-such-endpoint", ContentType="application/json", Body=b"{}")
    finally:
        predictor.delete_endpoint()


def test_two_endpoints_side_by_side(session, trained):
    first, second = deploy(trained, name="side-a"), deploy(trained, name="side-b")
    records = [session.endpoint_record(name) for name in ("side-a", "side-b")]
    assert records[0]["port"] != records[1]["port"]
    answers = [p.predict({"query": name}) for p, name in ((first, "a"), (second, "b"))]
    assert [a["echo"] for a in answers] == ["A", "B"]
    assert answers[0]["pid"] != answers[1]["pid"]
    processes = endpoint_processes(records[0])
    first.delete_endpoint()
    assert_endpoint_gone(session.state_dir, records[0], processes)
    assert second.predict({"query": "b again"})["echo"] == "B AGAIN"
    processes = endpoint_processes(records[1])
    second.delete_endpoint()
    assert_endpoint_gone(session.state_dir, records[1], processes)


def test_model_load_failure_fails_deploy(s3, session, tmp_path):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("nothing.txt")
        tar.addfile(info, io.BytesIO(b""))
    s3.client().upload_file(str(archive), BUCKET, "broken/model.tar.gz")
    model = PyTorchModel(model_data=f"s3://{BUCKET}/broken/model.tar.gz", entry_point="entry_point.py",
                         source_dir=str(ENTRY), dependencies=[str(DEP)], role=ROLE, sagemaker_session=session,
                         **FRAMEWORK)
    with pytest.raises(UnexpectedStatusException, match=r"Failed\. Reason: .*model\.json"):
        deploy(model, name="broken-model")
    assert registry.read(session.state_dir, "broken-model") is None


SCRIPT = textwrap.dedent('''
    import json, sys, time
    from local_runs.sim import SimSession
    from sagemaker.pytorch import PyTorchModel
    s3_url, bucket, state_dir, model_data, entry, dep, name, mode = sys.argv[1:9]
    session = SimSession(s3_endpoint_url=s3_url, default_bucket=bucket, state_dir=state_dir)
    model = PyTorchModel(model_data=model_data, entry_point="entry_point.py", source_dir=entry,
                         dependencies=[dep], role="arn:aws:iam::111111111111:role/R",
                         framework_version="2.6", py_version="py312", sagemaker_session=session)
    model.deploy(initial_instance_count=1, instance_type="local", endpoint_name=name)
    print("RECORD " + json.dumps(session.endpoint_record(name)), flush=True)
    if mode != "exit":
        time.sleep(600)
''')


@pytest.mark.parametrize("mode", ["exit", "sigint", "sigterm", "sigkill"])
def test_nothing_left_running_when_the_deploying_process_ends(s3, trained, tmp_path, mode):
    script = tmp_path / "deploy_and_leave.py"
    script.write_text(SCRIPT)
    state = tmp_path / "state"
    name = f"left-{mode}"
    proc = subprocess.Popen(
        [sys.executable, str(script), s3.url, BUCKET, str(state), trained.model_data, str(ENTRY), str(DEP), name, mode],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        record, output = None, []
        for line in proc.stdout:
            output.append(line)
            if "RECORD " in line:  # the SDK prints "!" without a newline when the endpoint is up
                record = json.loads(line.split("RECORD ", 1)[1])
                break
        assert record is not None, "the script did not deploy:\n" + "".join(output[-30:])
        processes = endpoint_processes(record)
        if mode != "exit":
            proc.send_signal({"sigint": signal.SIGINT, "sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL}[mode])
        proc.wait(timeout=30)
        assert_endpoint_gone(state, record, processes)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_shipped_code_is_not_taken_from_the_host(session, trained, tmp_path, monkeypatch):
    """A dependency also importable on the host must still be imported from the job's code.

    At serving the SDK repack puts `dependencies` in code/lib, which the inference toolkit does
    not put on the path: an entry point that does not add it fails on SageMaker, so in sim too.
    """
    host_side = tmp_path / "host-side"
    shutil.copytree(DEP, host_side / "echo_lib")
    monkeypatch.setenv("PYTHONPATH", str(host_side))  # the host "has" echo_lib installed
    source = tmp_path / "src"
    shutil.copytree(ENTRY, source)
    script = source / "entry_point.py"
    text = script.read_text()
    start, end = text.index("_LIB = "), text.index("from echo_lib import")
    script.write_text(text[:start] + text[end:])  # no code/lib on sys.path
    model = PyTorchModel(model_data=trained.model_data, entry_point="entry_point.py", source_dir=str(source),
                         dependencies=[str(DEP)], role=ROLE, sagemaker_session=session, **FRAMEWORK)
    with pytest.raises(UnexpectedStatusException, match=r"No module named 'echo_lib' \(sim:"):
        deploy(model, name="host-copy-hidden")


TRAIN_SCRIPT = textwrap.dedent('''
    import sys
    from local_runs.sim import SimSession
    from sagemaker.pytorch import PyTorch
    s3_url, bucket, state_dir, entry, dep = sys.argv[1:6]
    session = SimSession(s3_endpoint_url=s3_url, default_bucket=bucket, state_dir=state_dir)
    PyTorch(entry_point="entry_point.py", source_dir=entry, dependencies=[dep],
            role="arn:aws:iam::111111111111:role/R", framework_version="2.6", py_version="py312",
            instance_count=1, instance_type="local", hyperparameters={"sleep": 120},
            sagemaker_session=session).fit({"train": f"s3://{bucket}/data/train"})
''')


def test_ctrl_c_during_training_leaves_nothing_running(s3, tmp_path):
    script = tmp_path / "train_forever.py"
    script.write_text(TRAIN_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), s3.url, BUCKET, str(tmp_path / "state"), str(ENTRY), str(DEP)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline, descendants = time.monotonic() + 60, []
        while time.monotonic() < deadline:  # wait until the user script runs
            descendants = psutil.Process(proc.pid).children(recursive=True)
            if any("entry_point.py" in " ".join(p.cmdline()) for p in descendants if p.is_running()):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the training script never started")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        _gone, alive = psutil.wait_procs(descendants, timeout=10)
        assert not alive, alive
    finally:
        if proc.poll() is None:
            proc.kill()
