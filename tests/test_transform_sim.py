"""Batch transform on sim, end to end through the unchanged SDK (`model.transformer(...).transform(...)`):
the fixtures model served by the sim's endpoint server, the answers in order in `x.out`, and the
failures as SageMaker reports them (a 4xx record, a killed serving process, Ctrl-C).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from sagemaker.exceptions import UnexpectedStatusException

from conftest import ROOT
from local_runs import daemon, job
from local_runs.sim import registry

pytestmark = pytest.mark.integration

QUERIES = ["a kite for windy days", "a bath toy that floats", "good for long car rides", "my kids loved it",
           "it broke after a week", "great gift for a five year old"]


def _pack(model_dir: Path, target: Path) -> Path:
    with tarfile.open(target, "w:gz", compresslevel=1) as tar:  # what the training job uploads
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    return target


@pytest.fixture(scope="module")
def model_uri(backend, fixture_model_dir, tmp_path_factory):
    archive = _pack(fixture_model_dir, tmp_path_factory.mktemp("model") / "model.tar.gz")
    return backend.session.upload_data(str(archive), bucket=backend.bucket, key_prefix="transform-tests/model")


def _put(backend, key: str, lines: list[str]) -> str:
    backend.session.s3_client.put_object(Bucket=backend.bucket, Key=key, Body="".join(l + "\n" for l in lines).encode())
    return f"s3://{backend.bucket}/{key}"


def _keys(backend, prefix: str) -> list[str]:
    pages = backend.session.s3_client.get_paginator("list_objects_v2").paginate(Bucket=backend.bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _read(backend, key: str) -> list[dict]:
    body = backend.session.s3_client.get_object(Bucket=backend.bucket, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines()]


def _lines(n: int, offset: int = 0) -> list[str]:
    return [json.dumps({"query": QUERIES[(i + offset) % len(QUERIES)], "n_items": 1 + (i + offset) % 3})
            for i in range(n)]


def _products(answer: dict) -> list[str]:
    return [answer[f"pred{i}"]["product_id"] for i in range(len(answer))]


def _job_dir(backend, name: str) -> Path:
    return Path(backend.session.state_dir) / "transform" / name


def test_single_and_multi_record_answer_every_line_in_order(backend, model_uri, capsys):
    first = _lines(7) + [""] + _lines(5, offset=3)  # a blank line: no record, no answer
    _put(backend, "transform-tests/in/a.jsonl", first)
    _put(backend, "transform-tests/in/sub/b.jsonl", _lines(4, offset=1))
    results = {}
    for strategy in ("SingleRecord", "MultiRecord"):
        output = f"s3://{backend.bucket}/transform-tests/out-{strategy}"
        transformer = job.transform(backend, model_uri, f"s3://{backend.bucket}/transform-tests/in/", output,
                                    instance_count=2, strategy=strategy, max_payload=1, wait=False)
        name = transformer.latest_transform_job.name
        description = backend.session.sagemaker_client.describe_transform_job(TransformJobName=name)
        assert description["TransformJobStatus"] == "InProgress"  # wait=False returned at once
        assert backend.list_endpoints() == []  # the serving processes are not endpoints
        transformer.wait()
        description = backend.session.sagemaker_client.describe_transform_job(TransformJobName=name)
        assert description["TransformJobStatus"] == "Completed", description.get("FailureReason")
        assert description["BatchStrategy"] == strategy and description["MaxPayloadInMB"] == 1
        assert description["TransformResources"]["InstanceCount"] == 2
        prefix = f"transform-tests/out-{strategy}/"
        assert _keys(backend, prefix) == [prefix + "a.jsonl.out", prefix + "sub/b.jsonl.out"]
        results[strategy] = {k: _read(backend, prefix + k) for k in ("a.jsonl.out", "sub/b.jsonl.out")}
        assert not _job_dir(backend, name).exists()  # its private registry and logs go when it succeeds
    single, multi = results["SingleRecord"], results["MultiRecord"]
    assert len(single["a.jsonl.out"]) == 12 and len(single["sub/b.jsonl.out"]) == 4
    for key in single:
        assert [_products(a) for a in single[key]] == [_products(a) for a in multi[key]]
    requests = [json.loads(line) for line in first if line]
    for request, answer in zip(requests, single["a.jsonl.out"]):  # in order: n_items of each line
        assert len(answer) == request["n_items"]
    out = capsys.readouterr().out
    assert "2 object(s)" in out and "/execution-parameters: not offered, defaults" in out
    assert "POST /invocations" not in out  # per-request lines go to the serving log only


def test_a_refused_record_fails_the_job_naming_object_line_and_message(backend, model_uri):
    lines = _lines(3) + [json.dumps({"query": "kite", "n_items": 500})] + _lines(3)
    uri = _put(backend, "transform-tests/bad/q.jsonl", lines)
    for strategy in ("MultiRecord", "SingleRecord"):
        output = f"s3://{backend.bucket}/transform-tests/bad-out-{strategy}"
        transformer = job.transform(backend, model_uri, uri, output, strategy=strategy, wait=False)
        with pytest.raises(UnexpectedStatusException) as info:
            transformer.wait()
        name = transformer.latest_transform_job.name
        description = backend.session.sagemaker_client.describe_transform_job(TransformJobName=name)
        assert description["TransformJobStatus"] == "Failed"
        reason = description["FailureReason"]
        assert f"line 4 of {uri} with 400" in reason and "n_items" in reason, reason
        assert reason in str(info.value)
        assert _keys(backend, f"transform-tests/bad-out-{strategy}") == []  # no .out that looks complete


def _wait_for_serving(backend, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = registry.read(_job_dir(backend, name), "instance-1")
        if record and record.get("status") == registry.IN_SERVICE and record.get("pid"):
            return record
        time.sleep(0.05)
    pytest.fail("the transform job's serving process never came up")


def test_a_killed_serving_process_fails_the_job(backend, model_uri):
    uri = _put(backend, "transform-tests/kill/q.jsonl", _lines(3000))
    output = f"s3://{backend.bucket}/transform-tests/kill-out"
    transformer = job.transform(backend, model_uri, uri, output, strategy="SingleRecord", wait=False)
    name = transformer.latest_transform_job.name
    record = _wait_for_serving(backend, name)
    time.sleep(0.5)  # some records are through
    os.kill(record["pid"], signal.SIGKILL)
    with pytest.raises(UnexpectedStatusException):
        transformer.wait()
    description = backend.session.sagemaker_client.describe_transform_job(TransformJobName=name)
    assert description["TransformJobStatus"] == "Failed"
    reason = description["FailureReason"]
    assert "serving process of instance 1 was killed by SIGKILL" in reason and uri in reason, reason
    assert "instance-1.log" in reason and _job_dir(backend, name).exists()  # the log stays, named
    assert _keys(backend, "transform-tests/kill-out") == []
    assert not daemon.port_accepts("127.0.0.1", record["port"])


def test_ctrl_c_stops_the_job_and_releases_every_port(backend, model_uri):
    uri = _put(backend, "transform-tests/stop/q.jsonl", _lines(3000))
    output = f"s3://{backend.bucket}/transform-tests/stop-out"
    transformer = job.transform(backend, model_uri, uri, output, strategy="SingleRecord", instance_count=1,
                                wait=False)
    name = transformer.latest_transform_job.name
    record = _wait_for_serving(backend, name)
    processes = [psutil.Process(record["pid"])] + psutil.Process(record["pid"]).children(recursive=True)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))  # Ctrl-C while waiting
    timer.start()
    from local_runs.sim.procs import Interrupted

    with pytest.raises(Interrupted, match="interrupted"):
        transformer.wait()
    timer.join()
    _gone, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive, alive
    assert not daemon.port_accepts("127.0.0.1", record["port"])
    description = backend.session.sagemaker_client.describe_transform_job(TransformJobName=name)
    assert description["TransformJobStatus"] == "Stopped"
    assert _keys(backend, "transform-tests/stop-out") == []


# --- the command line, across processes --------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_state(tmp_path_factory, fixture_model_dir):
    """A state dir whose S3 daemon holds the fixtures model, remembered as the last fit."""
    from local_runs.backends import open_backend
    from local_runs.backends.sim import SimBackend
    from local_runs.config import load_settings
    from local_runs.daemon import write_json_atomic

    state = tmp_path_factory.mktemp("cli-state")
    settings = load_settings(cli={"backend": "sim", "state_dir": str(state)}, environ={})
    archive = _pack(fixture_model_dir, state / "model.tar.gz")
    with open_backend(settings, persistent=True) as opened:
        uri = opened.session.upload_data(str(archive), bucket=opened.bucket, key_prefix="transform-tests/model")
    write_json_atomic(state / "last_model.json", {"backend": "sim", "model_data": uri, "job_name": "fixtures"})
    yield state
    SimBackend.shutdown(settings)


def _cli(state: Path, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "local_runs", "--state-dir", str(state), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_cli_transform_on_two_instances_writes_answers_in_order(cli_state, tmp_path):
    queries = tmp_path / "queries.jsonl"
    lines = _lines(9)
    queries.write_text("".join(line + "\n" for line in lines))
    results = tmp_path / "results.jsonl"
    proc = _cli(cli_state, "transform", str(queries), "--out", str(results), "--instances", "2",
                "--strategy", "SingleRecord")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "9 answers for 9 queries" in out and "on 2 instance(s)" in out
    answers = [json.loads(line) for line in results.read_text().splitlines()]
    assert [len(a) for a in answers] == [json.loads(line)["n_items"] for line in lines]


def test_cli_ctrl_c_leaves_nothing_running_and_no_results(cli_state, tmp_path):
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(line + "\n" for line in _lines(3000)))
    results = tmp_path / "results.jsonl"
    proc = _cli(cli_state, "transform", str(queries), "--out", str(results), "--strategy", "SingleRecord")
    try:
        deadline, servers = time.monotonic() + 120, []
        while time.monotonic() < deadline:
            servers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                       if "local_runs.sim.endpoint_server" in " ".join(p.cmdline())]
            records = list((cli_state / "transform").glob("*/endpoints/instance-1.json"))
            if servers and records and json.loads(records[-1].read_text()).get("status") == registry.IN_SERVICE:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the serving process never came up")
        port = json.loads(records[-1].read_text())["port"]
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, out
        assert "interrupted" in out
        _gone, alive = psutil.wait_procs(servers, timeout=10)
        assert not alive, alive
        assert not daemon.port_accepts("127.0.0.1", port)
        assert not results.exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_evaluation_set_scores_the_same_through_the_container(backend, model_uri, fixture_model_dir, tmp_path,
                                                                   capsys):
    """knn.evaluate's figures, checked through the serving code: same rankings, same metrics."""
    from knn import evaluate_transform as et

    fixtures = json.loads((ROOT / "fixtures" / "queries.json").read_text())
    queries_file = tmp_path / "queries.json"
    queries_file.write_text(json.dumps([{"id": str(i), "kind": q.get("kind", "all"), "query": q["query"],
                                         "relevant": [q["product_id"]]} for i, q in enumerate(fixtures)]))
    requests = tmp_path / "requests.jsonl"
    assert et.main([str(queries_file), "--write-requests", str(requests)]) == 0
    uri = _put(backend, "transform-tests/eval/requests.jsonl", requests.read_text().splitlines())
    job.transform(backend, model_uri, uri, f"s3://{backend.bucket}/transform-tests/eval-out")
    results = tmp_path / "results.jsonl"
    backend.session.s3_client.download_file(backend.bucket, "transform-tests/eval-out/requests.jsonl.out", str(results))
    report = tmp_path / "report.json"
    capsys.readouterr()
    assert et.main([str(queries_file), str(results), "--model-dir", str(fixture_model_dir), "--json", str(report)]) == 0
    figures = json.loads(report.read_text())
    assert figures["differ"] == [] and figures["container"]["metrics"] == figures["in_process"]["metrics"]
    assert len(figures["container"]["per_query"]) == len(fixtures)
    assert "rankings that differ: 0" in capsys.readouterr().out
