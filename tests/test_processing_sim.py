"""Processing jobs in sim through the unchanged SDK: ScriptProcessor and FrameworkProcessor, one and several
instances, FullyReplicated and ShardedByS3Key inputs, failures, ExitMessage, wait=False."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from local_runs.s3_server import LocalS3
from local_runs.sim import SimSession

from sagemaker.exceptions import UnexpectedStatusException  # noqa: E402  (after local_runs: quiet SDK)
from sagemaker.processing import ProcessingInput, ProcessingOutput, ScriptProcessor  # noqa: E402
from sagemaker.pytorch.processing import PyTorchProcessor  # noqa: E402

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "sim_processing" / "process.py"
ROLE = "arn:aws:iam::111111111111:role/SageMakerRole"
BUCKET = "sim-processing-tests"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6-cpu-py312"
PARTS = [f"part-{i:05d}.txt" for i in range(5)]


@pytest.fixture(scope="module")
def s3():
    with LocalS3(bucket=BUCKET, set_environ=False) as server:
        client = server.client()
        for i, name in enumerate(PARTS):
            client.put_object(Bucket=BUCKET, Key=f"in/{name}", Body=f"part {i}\n".encode())
        yield server


@pytest.fixture(scope="module")
def session(s3, tmp_path_factory):
    return SimSession(s3_endpoint_url=s3.url, default_bucket=BUCKET, state_dir=tmp_path_factory.mktemp("proc-state"))


def _keys(s3, prefix):
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"][len(prefix):] for o in listing.get("Contents", []))


def _get(s3, key):
    return s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def _processor(session, instances):
    return ScriptProcessor(command=["python3"], image_uri=IMAGE, role=ROLE, instance_count=instances,
                           instance_type="local", sagemaker_session=session)


def _run(session, instances, out, distribution="FullyReplicated", arguments=(), wait=True, processor=None):
    processor = processor or _processor(session, instances)
    processor.run(code=str(SCRIPT), arguments=list(arguments), wait=wait, logs=False,
                  inputs=[ProcessingInput(source=f"s3://{BUCKET}/in", destination="/opt/ml/processing/input/data",
                                          input_name="data", s3_data_distribution_type=distribution)],
                  outputs=[ProcessingOutput(source="/opt/ml/processing/output/result", output_name="result",
                                            destination=f"s3://{BUCKET}/{out}")])
    return processor


def test_script_processor_one_instance(s3, session):
    processor = _run(session, 1, "one")
    desc = processor.latest_job.describe()
    assert desc["ProcessingJobStatus"] == "Completed"
    assert _keys(s3, "one/") == sorted([n + ".out" for n in PARTS] + ["host-1.json"])
    assert _get(s3, "one/part-00003.txt.out") == "PART 3\n"
    info = json.loads(_get(s3, "one/host-1.json"))
    assert info["instance_count"] == 1 and info["host"].startswith("algo-1-")


def test_sharded_by_s3_key_deals_objects_to_hosts(s3, session):
    _run(session, 2, "sharded", distribution="ShardedByS3Key")
    first, second = (json.loads(_get(s3, f"sharded/host-{i}.json")) for i in (1, 2))
    assert first["hosts"] == second["hosts"] and len(first["hosts"]) == 2
    assert first["files"] == ["part-00000.txt", "part-00002.txt", "part-00004.txt"]
    assert second["files"] == ["part-00001.txt", "part-00003.txt"]
    assert _keys(s3, "sharded/") == sorted([n + ".out" for n in PARTS] + ["host-1.json", "host-2.json"])


def test_fully_replicated_gives_every_host_everything(s3, session):
    _run(session, 2, "replicated")
    for i in (1, 2):
        assert json.loads(_get(s3, f"replicated/host-{i}.json"))["files"] == PARTS


def test_more_hosts_than_objects_leaves_idle_hosts_with_an_empty_channel(s3, session):
    _run(session, 7, "idle", distribution="ShardedByS3Key")
    infos = [json.loads(_get(s3, f"idle/host-{i}.json")) for i in range(1, 8)]
    assert [len(i["files"]) for i in infos] == [1, 1, 1, 1, 1, 0, 0]


def test_one_host_failing_fails_the_job_names_it_and_uploads_nothing(s3, session):
    processor = _processor(session, 3)
    with pytest.raises(UnexpectedStatusException) as caught:
        _run(session, 3, "failed", arguments=["--fail-on-host", "2", "--message", "hello"], processor=processor)
    desc = processor.latest_job.describe()
    assert "algo-2-" in str(caught.value)
    assert desc["ProcessingJobStatus"] == "Failed"
    assert "algo-2-" in desc["FailureReason"] and "exited with code 3" in desc["FailureReason"]
    assert desc["ExitMessage"].startswith("hello from algo-1;hello from algo-2;")
    assert _keys(s3, "failed/") == []


def test_failure_stops_the_other_hosts(s3, session):
    # host 1 sleeps 60 s; host 2 fails at once: the job must end long before host 1 would
    started = time.monotonic()
    processor = _processor(session, 2)
    with pytest.raises(UnexpectedStatusException):
        _run(session, 2, "stopped", arguments=["--fail-on-host", "2", "--sleep", "60"], processor=processor)
    assert time.monotonic() - started < 45
    assert _keys(s3, "stopped/") == []
    assert processor.latest_job.describe()["ProcessingJobStatus"] == "Failed"


def test_stop_processing_job_stops_every_host(s3, session):
    processor = _run(session, 2, "stop", arguments=["--sleep", "60"], wait=False)
    time.sleep(2)
    started = time.monotonic()
    processor.latest_job.stop()
    processor.latest_job.wait(logs=False)  # Stopped is not an error for the SDK
    assert time.monotonic() - started < 30
    assert processor.latest_job.describe()["ProcessingJobStatus"] == "Stopped"
    assert _keys(s3, "stop/") == []


def test_wait_false_returns_a_running_job_then_wait(s3, session):
    processor = _run(session, 1, "later", arguments=["--sleep", "3"], wait=False)
    job = processor.latest_job
    assert job.describe()["ProcessingJobStatus"] == "InProgress"
    job.wait(logs=False)
    assert job.describe()["ProcessingJobStatus"] == "Completed"
    assert "host-1.json" in _keys(s3, "later/")


def test_framework_processor_runs_runproc_with_source_dir(s3, session, tmp_path):
    source = tmp_path / "code"
    source.mkdir()
    (source / "process.py").write_text(SCRIPT.read_text())
    (source / "requirements.txt").write_text("numpy\n")
    processor = PyTorchProcessor(framework_version="2.6", py_version="py312", role=ROLE, instance_count=2,
                                 instance_type="local", sagemaker_session=session)
    processor.run(code="process.py", source_dir=str(source), logs=False,
                  inputs=[ProcessingInput(source=f"s3://{BUCKET}/in", destination="/opt/ml/processing/input/data",
                                          s3_data_distribution_type="ShardedByS3Key")],
                  outputs=[ProcessingOutput(source="/opt/ml/processing/output/result",
                                            destination=f"s3://{BUCKET}/framework")])
    assert processor.latest_job.describe()["ProcessingJobStatus"] == "Completed"
    assert _keys(s3, "framework/") == sorted([n + ".out" for n in PARTS] + ["host-1.json", "host-2.json"])


def test_framework_processor_missing_requirement_fails_naming_it(s3, session, tmp_path):
    source = tmp_path / "code"
    source.mkdir()
    (source / "process.py").write_text(SCRIPT.read_text())
    (source / "requirements.txt").write_text("no-such-package-xyz==1.0\n")
    processor = PyTorchProcessor(framework_version="2.6", py_version="py312", role=ROLE, instance_count=1,
                                 instance_type="local", sagemaker_session=session)
    with pytest.raises(UnexpectedStatusException) as caught:
        processor.run(code="process.py", source_dir=str(source), logs=False,
                      inputs=[ProcessingInput(source=f"s3://{BUCKET}/in", destination="/opt/ml/processing/input/data")],
                      outputs=[ProcessingOutput(source="/opt/ml/processing/output/result",
                                                destination=f"s3://{BUCKET}/missing")])
    assert "no-such-package-xyz" in str(caught.value)


def _host_processes(marker: str):
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if marker in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_ctrl_c_while_waiting_stops_every_host_and_uploads_nothing(s3, session):
    import _thread
    import threading

    from local_runs.sim import procs

    processor = _run(session, 3, "interrupted", arguments=["--sleep", "60"], wait=False)
    deadline = time.monotonic() + 60
    while len(_host_processes("process.py")) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_host_processes("process.py")) == 3
    threading.Timer(0.5, _thread.interrupt_main).start()
    with pytest.raises(procs.Interrupted):
        processor.latest_job.wait(logs=False)
    assert processor.latest_job.describe()["ProcessingJobStatus"] == "Stopped"
    assert _host_processes("process.py") == []
    assert _keys(s3, "interrupted/") == []
