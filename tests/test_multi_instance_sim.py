"""Multi-instance training in sim through the unchanged SDK: N hosts, SM_HOSTS / SM_CURRENT_HOST,
resourceconfig.json, ShardedByS3Key channels, every host's /opt/ml/model in one model.tar.gz, clashing
model files and a failing host fail the job naming them."""
from __future__ import annotations

import io
import json
import tarfile
import textwrap
import time

import pytest

from local_runs.s3_server import LocalS3
from local_runs.sim import SimSession

from sagemaker.inputs import TrainingInput  # noqa: E402  (after local_runs: quiet SDK)
from sagemaker.exceptions import UnexpectedStatusException  # noqa: E402
from sagemaker.pytorch import PyTorch  # noqa: E402

pytestmark = pytest.mark.integration

ROLE = "arn:aws:iam::111111111111:role/SageMakerRole"
BUCKET = "sim-multi-tests"
FRAMEWORK = {"framework_version": "2.6", "py_version": "py312"}
PARTS = [f"part-{i:05d}.txt" for i in range(5)]

SCRIPT = textwrap.dedent('''
    import argparse, json, os, sys, time
    parser = argparse.ArgumentParser()
    parser.add_argument("--clash", type=int, default=0)
    parser.add_argument("--fail-host", "--fail_host", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0)
    args = parser.parse_args()
    hosts = json.loads(os.environ["SM_HOSTS"])
    host = os.environ["SM_CURRENT_HOST"]
    index = hosts.index(host) + 1
    base = os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")
    resource = json.load(open(os.path.join(base, "input", "config", "resourceconfig.json")))
    channel = os.environ["SM_CHANNEL_TRAIN"]
    files = sorted(os.listdir(channel))
    print(f"{host}: {files}", flush=True)
    if args.fail_host == index:
        time.sleep(0.5)
        raise ValueError(f"host {index} was told to fail")
    time.sleep(args.sleep)
    name = "same.json" if args.clash else f"host-{index}.json"
    with open(os.path.join(os.environ["SM_MODEL_DIR"], name), "w") as f:
        json.dump({"host": host, "hosts": hosts, "resource_hosts": resource["hosts"],
                   "current": resource["current_host"], "files": files}, f)
''')


@pytest.fixture(scope="module")
def s3():
    with LocalS3(bucket=BUCKET, set_environ=False) as server:
        client = server.client()
        for i, name in enumerate(PARTS):
            client.put_object(Bucket=BUCKET, Key=f"train/{name}", Body=f"part {i}\n".encode())
        yield server


@pytest.fixture(scope="module")
def session(s3, tmp_path_factory):
    return SimSession(s3_endpoint_url=s3.url, default_bucket=BUCKET, state_dir=tmp_path_factory.mktemp("multi-state"))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    directory = tmp_path_factory.mktemp("multi-src")
    (directory / "train.py").write_text(SCRIPT)
    return directory


def _fit(session, source, instances, distribution="FullyReplicated", **hyperparameters):
    estimator = PyTorch(entry_point="train.py", source_dir=str(source), role=ROLE, instance_count=instances,
                        instance_type="local", hyperparameters=hyperparameters, sagemaker_session=session,
                        disable_profiler=True, **FRAMEWORK)
    estimator.fit({"train": TrainingInput(f"s3://{BUCKET}/train", distribution=distribution)}, logs=False)
    return estimator


def _model_files(s3, model_data):
    bucket, _, key = model_data[len("s3://"):].partition("/")
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return {m.name: json.load(tar.extractfile(m)) for m in tar.getmembers() if m.isfile()}


def test_three_hosts_sharded_merge_their_model_dirs(s3, session, source):
    estimator = _fit(session, source, 3, distribution="ShardedByS3Key")
    files = _model_files(s3, estimator.model_data)
    assert sorted(files) == ["host-1.json", "host-2.json", "host-3.json"]
    hosts = files["host-1.json"]["hosts"]
    assert len(hosts) == 3 and [h.split("-")[1] for h in hosts] == ["1", "2", "3"]
    for i in (1, 2, 3):
        info = files[f"host-{i}.json"]
        assert info["host"] == hosts[i - 1] == info["current"] and info["resource_hosts"] == hosts
    assert [files[f"host-{i}.json"]["files"] for i in (1, 2, 3)] == [
        ["part-00000.txt", "part-00003.txt"], ["part-00001.txt", "part-00004.txt"], ["part-00002.txt"]]


def test_fully_replicated_gives_every_host_every_object(s3, session, source):
    files = _model_files(s3, _fit(session, source, 2).model_data)
    assert files["host-1.json"]["files"] == files["host-2.json"]["files"] == PARTS


def test_idle_hosts_get_an_empty_channel(s3, session, source):
    files = _model_files(s3, _fit(session, source, 6, distribution="ShardedByS3Key").model_data)
    assert [len(files[f"host-{i}.json"]["files"]) for i in range(1, 7)] == [1, 1, 1, 1, 1, 0]


def test_clashing_model_files_fail_the_job_naming_the_file(session, source):
    with pytest.raises(UnexpectedStatusException) as caught:
        _fit(session, source, 2, clash=1)
    assert "same.json" in str(caught.value) and "algo-1-" in str(caught.value) and "algo-2-" in str(caught.value)


def test_a_failing_host_fails_the_job_naming_it_and_stops_the_others(session, source):
    started = time.monotonic()
    with pytest.raises(UnexpectedStatusException) as caught:
        _fit(session, source, 2, fail_host=2, sleep=60)
    message = str(caught.value)
    assert "host algo-2-" in message and "host 2 was told to fail" in message
    assert time.monotonic() - started < 45


def test_ctrl_c_stops_every_host_and_uploads_nothing(s3, session, source):
    import _thread
    import threading

    import psutil


    def hosts_running():
        found = []
        for proc in psutil.Process().children(recursive=True):
            try:
                if "train.py" in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def interrupt_when_running():
        deadline = time.monotonic() + 90
        while len(hosts_running()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        _thread.interrupt_main()

    before = {o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])
              if o["Key"].endswith("model.tar.gz")}
    threading.Thread(target=interrupt_when_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        _fit(session, source, 2, sleep=60)
    assert hosts_running() == []
    after = {o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])
             if o["Key"].endswith("model.tar.gz")}
    assert after == before
