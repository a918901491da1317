"""Chaos for the supervised endpoint workers: kill -9 one of two workers under load, SIGSTOP a worker
in the middle of a request. Requests go through the runtime gateway, so clients see what SageMaker
callers see (ModelError). A tiny handler stands in for the model (it loads in a fraction of a second
and can be told to take its time), so each test is bounded to a few seconds of waiting.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
import time

import psutil
import pytest
from botocore.exceptions import ClientError

from local_runs import s3_server
from local_runs.sim import endpoints, procs, registry
from local_runs.sim.gateway import RuntimeGateway

pytestmark = pytest.mark.integration

INFERENCE = textwrap.dedent('''
    import json, os, time

    def model_fn(model_dir):
        if os.path.exists(os.environ.get("CHAOS_BROKEN_FLAG", "/nonexistent")):
            raise RuntimeError("the model file is gone")
        return {"pid": os.getpid()}

    def input_fn(body, content_type):
        return json.loads(body)

    def predict_fn(data, model):
        if data.get("mark"):
            open(data["mark"], "w").close()  # tells the test the request is running
        time.sleep(float(data.get("sleep", 0)))
        return {"pid": model["pid"], "i": data.get("i")}

    def output_fn(prediction, accept):
        return json.dumps(prediction), "application/json"
''')


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {timeout} s: {what}")


def start(tmp_path, name: str, workers: int, extra_env: dict | None = None):
    model = tmp_path / name / "model"
    (model / "code").mkdir(parents=True)
    (model / "code" / "inference.py").write_text(INFERENCE)
    state = tmp_path / "state"
    registry.claim(state, name)
    env = procs.child_env({"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_BASE_DIR": str(model.parent),
                           "PYTHONPATH": str(model / "code"), **procs.owner_env(), **(extra_env or {})})
    argv = [sys.executable, "-m", "local_runs.sim.endpoint_server", "--name", name, "--model-dir", str(model),
            "--state-dir", str(state), "--workers", str(workers)]
    endpoints.launch(state, name, argv, env, cwd=tmp_path, detach=False, echo=False)
    return state


def worker_pids(state, name) -> list[int]:
    record = registry.read(state, name)
    try:
        return sorted(p.pid for p in psutil.Process(record["pid"]).children()
                      if p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return []


def runtime_client(gateway: RuntimeGateway):
    return s3_server.boto_session().client("sagemaker-runtime", endpoint_url=gateway.url)


def invoke(client, name: str, payload: dict) -> dict:
    response = client.invoke_endpoint(EndpointName=name, Body=json.dumps(payload), ContentType="application/json")
    return json.loads(response["Body"].read())


def test_kill_9_one_of_two_workers_under_load(tmp_path):
    name = "chaos-kill"
    state = start(tmp_path, name, workers=2)
    before = worker_pids(state, name)
    assert len(before) == 2
    results: list[tuple[float, float, object]] = []  # (start, end, pid or the ModelError)
    lock = threading.Lock()
    stop = threading.Event()
    killed: dict = {}

    with RuntimeGateway(state, invoke_timeout=30) as gateway:
        def client_loop(k: int):
            client = runtime_client(gateway)
            i = 0
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    outcome = invoke(client, name, {"i": f"{k}-{i}", "sleep": 0.03})["pid"]
                except ClientError as exc:
                    outcome = exc
                with lock:
                    results.append((t0, time.monotonic(), outcome))
                i += 1

        threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(results) >= 40, 30, "40 requests answered before the kill")
        victim = before[0]
        with lock:
            answered_before = len(results)
        killed["at"] = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        # within 10 s there are two workers again, and the replacement serves. One listing of the
        # workers per try: the victim is listed until it is a zombie, and "workers_serving" still says 2
        # until the supervisor notices the kill, so two listings could see [victim, other], then [other].
        listed: list[list[int]] = []

        def two_serving_without_the_victim() -> bool:
            listed.append(worker_pids(state, name))
            return (len(listed[-1]) == 2 and victim not in listed[-1]
                    and (registry.read(state, name) or {}).get("workers_serving") == 2)

        wait_for(two_serving_without_the_victim, 10, "two serving workers again")
        replacement, = set(listed[-1]) - set(before)
        wait_for(lambda: any(r[2] == replacement for r in results), 10, "the replacement answers a request")
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    failures = [r for r in results if not isinstance(r[2], int)]
    successes = [r for r in results if isinstance(r[2], int)]
    # only requests in flight at the kill failed, each a ModelError (the container could not answer)
    assert len(failures) <= 4, failures
    for t0, t1, exc in failures:
        assert exc.response["Error"]["Code"] == "ModelError", exc.response
        assert exc.response["OriginalStatusCode"] == 0
        assert t0 <= killed["at"] <= t1
    assert len(successes) > answered_before and {r[2] for r in successes} <= set(before) | {replacement}
    record = registry.read(state, name)
    assert record["status"] == registry.IN_SERVICE and record["restarts"] == 1
    assert f"killed by signal SIGKILL" in record["last_restart"]["reason"] and record["last_restart"]["pid"] == victim
    log = open(record["log_path"]).read()
    assert f"worker {victim} (slot 0) exited (killed by signal SIGKILL); starting a replacement" in log
    assert f"worker {replacement}: model loaded" in log
    print(f"requests: {len(results)}, failed: {len(failures)} (in flight on the killed worker)")
    assert endpoints.stop_endpoint(state, name)


def test_sigstop_worker_times_out_and_is_replaced(tmp_path):
    name = "chaos-stop"
    timeout = 3
    state = start(tmp_path, name, workers=1, extra_env={"LOCAL_RUNS_SIM_INVOKE_TIMEOUT": str(timeout)})
    assert registry.read(state, name)["model_timeout"] == timeout
    stuck, = worker_pids(state, name)
    outcome: dict = {}
    entered = tmp_path / "entered"
    with RuntimeGateway(state, invoke_timeout=timeout) as gateway:
        client = runtime_client(gateway)
        assert invoke(client, name, {"i": 0})["pid"] == stuck

        def slow_request():
            t0 = time.monotonic()
            try:
                outcome["answer"] = invoke(client, name, {"i": 1, "sleep": 1.0, "mark": str(entered)})
            except ClientError as exc:
                outcome["error"] = exc
            outcome["seconds"] = time.monotonic() - t0

        thread = threading.Thread(target=slow_request)
        thread.start()
        wait_for(entered.exists, 10, "the request to be inside predict_fn (it sleeps 1 s there)")
        os.kill(stuck, signal.SIGSTOP)
        statuses = set()
        wait_for(lambda: statuses.add(registry.read(state, name)["status"])
                 or registry.read(state, name).get("restarts") == 1, timeout + 10, "the stopped worker is replaced")
        thread.join(timeout=timeout + 5)
        assert "answer" not in outcome
        error = outcome["error"].response
        assert error["Error"]["Code"] == "ModelError" and error["OriginalStatusCode"] == 0
        assert "timed out" in error["Error"]["Message"] and outcome["seconds"] < timeout + 2
        replacement, = wait_for(lambda: [p for p in worker_pids(state, name) if p != stuck] or None, 10,
                                "a new worker")
        wait_for(lambda: statuses.add(registry.read(state, name)["status"])
                 or registry.read(state, name).get("workers_serving") == 1, 30, "the new worker has loaded the model")
        assert not psutil.pid_exists(stuck) or psutil.Process(stuck).status() == psutil.STATUS_ZOMBIE
        # later requests succeed, served by the replacement; the endpoint never left InService
        assert invoke(client, name, {"i": 2})["pid"] == replacement
        statuses.add(registry.read(state, name)["status"])
        assert statuses == {registry.IN_SERVICE}
    record = registry.read(state, name)
    assert "past the model timeout of 3 s" in record["last_restart"]["reason"]
    assert "killing it" in open(record["log_path"]).read()
    assert endpoints.stop_endpoint(state, name)


def test_worker_that_cannot_load_again_is_retried_then_endpoint_fails(tmp_path):
    """A worker whose model no longer loads after a crash: retried with back-off while another serves; once
    every worker has failed MAX_LOAD_FAILURES loads in a row the endpoint is Failed, naming the error."""
    from local_runs.sim import endpoint_server

    name = "chaos-reload"
    broken = tmp_path / "broken"
    state = start(tmp_path, name, workers=2, extra_env={"LOCAL_RUNS_SIM_RESTART_BACKOFF": "0.05",
                                                        "CHAOS_BROKEN_FLAG": str(broken)})
    record = registry.read(state, name)
    first, second = worker_pids(state, name)
    broken.write_text("")  # from now on model_fn raises
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: "could not load the model (2 time(s) in a row)" in open(record["log_path"]).read(), 60,
             "the replacement to fail twice")
    with RuntimeGateway(state, invoke_timeout=30) as gateway:  # the other worker still serves
        assert invoke(runtime_client(gateway), name, {"i": 1})["pid"] == second
    assert registry.read(state, name)["status"] == registry.IN_SERVICE
    os.kill(second, signal.SIGKILL)
    wait_for(lambda: registry.read(state, name)["status"] == registry.FAILED, 120, "the endpoint to fail")
    reason = registry.read(state, name)["failure_reason"]
    assert f"{endpoint_server.MAX_LOAD_FAILURES} times in a row" in reason and "model file is gone" in reason
    wait_for(lambda: not registry.is_live(registry.read(state, name)), 15, "the server to exit")
    endpoints.stop_endpoint(state, name)
