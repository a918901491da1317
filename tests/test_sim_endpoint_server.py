"""The serving process on its own: real inference toolkit handlers behind /ping and /invocations."""
from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import textwrap

import psutil
import pytest

from local_runs import daemon
from local_runs.sim import endpoints, procs, registry

INFERENCE = textwrap.dedent('''
    import json, os
    from sagemaker_inference.errors import GenericInferenceToolkitError

    def model_fn(model_dir):
        if os.path.exists(os.path.join(model_dir, "broken")):
            raise RuntimeError("cannot load this model")
        return {"pid": os.getpid(), "name": json.load(open(os.path.join(model_dir, "model.json")))["name"]}

    def input_fn(body, content_type):
        if content_type == "text/csv":
            return {"csv": body, "type": type(body).__name__}
        data = json.loads(body)
        if "query" not in data:
            raise GenericInferenceToolkitError(400, "bad")
        if data.get("crash"):
            raise ValueError("boom")
        return {"query": data["query"], "type": type(body).__name__}

    def predict_fn(data, model):
        return {**data, "pid": model["pid"], "name": model["name"]}

    def output_fn(prediction, accept):
        return json.dumps(prediction), "application/x-sim"
''')


def _model_dir(tmp_path, broken=False, requirements=None):
    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    (model / "model.json").write_text('{"name": "tiny"}')
    (model / "code" / "inference.py").write_text(INFERENCE)
    if broken:
        (model / "broken").write_text("")
    if requirements is not None:
        (model / "code" / "requirements.txt").write_text(requirements)
    return model


def _start(tmp_path, name, workers=1, broken=False, requirements=None):
    model = _model_dir(tmp_path / name, broken, requirements)
    state = tmp_path / "state"
    registry.claim(state, name)
    env = procs.child_env({"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_BASE_DIR": str(model.parent),
                           "PYTHONPATH": str(model / "code"), **procs.owner_env()})
    argv = [sys.executable, "-m", "local_runs.sim.endpoint_server", "--name", name, "--model-dir", str(model),
            "--state-dir", str(state), "--workers", str(workers)]
    proc, pump, record = endpoints.launch(state, name, argv, env, cwd=tmp_path, detach=False, echo=False)
    return state, record


def _post(port, body, content_type="application/json"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def _assert_stopped(state, name, record, worker_pids=()):
    assert endpoints.stop_endpoint(state, name)
    for pid in (record["pid"], *worker_pids):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not daemon.port_accepts("127.0.0.1", record["port"])
    assert registry.read(state, name) is None


def test_endpoint_server_contract(tmp_path):
    state, record = _start(tmp_path, "tiny")
    port = record["port"]
    assert record["status"] == registry.IN_SERVICE and record["host"] == "127.0.0.1"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/ping")
    assert conn.getresponse().status == 200
    conn.close()

    status, ctype, body = _post(port, json.dumps({"query": "hi"}))
    assert (status, ctype) == (200, "application/x-sim")  # (body, content_type) from output_fn
    out = json.loads(body)
    worker, = psutil.Process(record["pid"]).children()  # the model runs in the supervised worker
    assert out["query"] == "hi" and out["type"] == "str" and out["pid"] == worker.pid
    status, _, body = _post(port, "a,b\n1,2\n", "text/csv")
    assert status == 200 and json.loads(body)["type"] == "str"

    status, _, body = _post(port, json.dumps({"nope": 1}))
    assert status == 400 and body.startswith(b"bad")  # toolkit error keeps its status
    status, _, body = _post(port, json.dumps({"query": "x", "crash": True}))
    assert status == 500 and b"boom" in body  # anything else is a 500
    status, _, _ = _post(port, b"x" * (6 * 1024 * 1024 + 1))
    assert status == 413
    status, _, _ = _post(port, json.dumps({"query": "still alive"}))
    assert status == 200
    _assert_stopped(state, "tiny", record)


def test_model_fn_runs_once_per_worker(tmp_path):
    state, record = _start(tmp_path, "two-workers", workers=2)
    workers = [p.pid for p in psutil.Process(record["pid"]).children()]
    assert len(workers) == 2
    seen = {json.loads(_post(record["port"], json.dumps({"query": str(i)}))[2])["pid"] for i in range(40)}
    assert seen <= set(workers) and len(seen) >= 1
    log = open(record["log_path"]).read()
    assert all(f"worker {pid}: model loaded" in log for pid in workers)  # model_fn once per worker
    _assert_stopped(state, "two-workers", record, workers)


def test_model_load_failure_is_reported(tmp_path):
    with pytest.raises(endpoints.EndpointStartFailed, match="cannot load this model"):
        _start(tmp_path, "broken", broken=True)
    assert registry.read(tmp_path / "state", "broken") is None


def test_serving_requirements_are_checked_not_installed(tmp_path):
    with pytest.raises(endpoints.EndpointStartFailed, match=r"not-installed-serving-pkg>=2 \(not installed\)"):
        _start(tmp_path, "needs-pkg", requirements="packaging\nnot-installed-serving-pkg>=2\n")
    state, record = _start(tmp_path, "has-pkgs", requirements="packaging\nboto3\n")
    _assert_stopped(state, "has-pkgs", record)


def test_workers_exit_if_the_supervisor_is_killed(tmp_path):
    state, record = _start(tmp_path, "orphans", workers=2)
    supervisor = psutil.Process(record["pid"])
    workers = supervisor.children()
    os.kill(record["pid"], signal.SIGKILL)
    _gone, alive = psutil.wait_procs([supervisor, *workers], timeout=10)
    assert not alive
    assert not daemon.port_accepts("127.0.0.1", record["port"])
    endpoints.stop_endpoint(state, "orphans")  # the stale record and temp dirs go
    assert registry.read(state, "orphans") is None
