"""Faults with the step-by-step (persistent) sim backend and the CLI: a killed endpoint, a dead or hung S3,
Ctrl-C during `local-runs cycle`. Each must lose nothing, say clearly what happened, and leave no
process, port or temp dir behind.

The model is the fixture model dir (knn, built once per test session) packed as a training job
packs it, so no training job is needed here (test_reliability_training.py kills those).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from botocore.exceptions import BotoCoreError, ClientError

from conftest import FIXTURES, ROOT
from local_runs import daemon, job, s3_server
from local_runs.backends import open_backend
from local_runs.config import load_settings
from local_runs.sim import registry

pytestmark = pytest.mark.integration

QUERIES = json.loads((FIXTURES / "queries.json").read_text())
KNOWN = QUERIES[0]
SECRETS = (s3_server.DUMMY_ACCESS_KEY_ID, s3_server.DUMMY_SECRET_ACCESS_KEY)


def cli(state: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "local_runs", "--state-dir", str(state), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, env=env)


def assert_no_secrets(state: Path, *texts: str) -> None:
    found = [str(p) for p in state.rglob("*") if p.is_file() and not p.is_symlink()
             and any(s.encode() in p.read_bytes() for s in SECRETS)]
    found += [f"output {i}" for i, text in enumerate(texts) if any(s in text for s in SECRETS)]
    assert found == [], found


def listening(pids) -> list[tuple[int, str, int]]:
    out = []
    for pid in pids:
        try:
            out += [(pid, c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            pass
    return out


def tree(pid: int) -> list[psutil.Process]:
    try:
        main = psutil.Process(pid)
        return [main] + main.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cmdline(process: psutil.Process) -> list[str]:
    """A process's command line, or [] once it has exited (or is a zombie awaiting its parent)."""
    try:
        return process.cmdline()
    except psutil.Error:
        return []


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def persistent_backend(state):
    """The step-by-step sim backend (S3 and gateway daemons) of this module; not conftest's `backend`."""
    settings = load_settings(cli={"backend": "sim", "state_dir": str(state)}, environ={})
    saved = os.environ.get(s3_server.ENDPOINT_ENV)
    try:
        with open_backend(settings, persistent=True) as opened:
            yield opened
    finally:
        cli(state, "shutdown", timeout=120)
        if saved is None:  # the persistent backend points this process at its S3 daemon
            os.environ.pop(s3_server.ENDPOINT_ENV, None)
        else:
            os.environ[s3_server.ENDPOINT_ENV] = saved


@pytest.fixture(scope="module")
def model_data(persistent_backend, fixture_model_dir, tmp_path_factory) -> str:
    archive = tmp_path_factory.mktemp("archive") / "model.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for path in sorted(Path(fixture_model_dir).iterdir()):
            tar.add(path, arcname=path.name)
    return persistent_backend.session.upload_data(str(archive), bucket=persistent_backend.bucket,
                                                  key_prefix="faults/output")


def test_killed_endpoint_is_reported_failed_and_deploy_again_works(persistent_backend, state, model_data, monkeypatch):
    name = "doomed"
    predictor = job.deploy(job.make_model(persistent_backend, model_data), persistent_backend, endpoint_name=name)
    record = persistent_backend.session.endpoint_record(name)
    assert job.predict(predictor, KNOWN["query"], n_items=1)["pred0"]["product_id"] == KNOWN["product_id"]

    # requests keep flowing while the serving process is killed
    outcomes, stop = [], threading.Event()

    def traffic():
        while not stop.is_set():
            started = time.monotonic()
            try:
                job.predict(predictor, KNOWN["query"], n_items=1)
                outcomes.append(("ok", time.monotonic() - started, ""))
            except ClientError as exc:
                outcomes.append(("error", time.monotonic() - started, str(exc)))

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    _wait_for(lambda: sum(o[0] == "ok" for o in outcomes) >= 3, 30, "requests answered before the kill")
    processes = tree(record["pid"])
    os.kill(record["pid"], signal.SIGKILL)
    psutil.wait_procs(processes, timeout=10)
    _wait_for(lambda: any("is in status Failed" in o[2] for o in outcomes[-3:]), 30,
              "requests after the kill told the endpoint is Failed")
    stop.set()
    sender.join(timeout=30)
    errors = [o for o in outcomes if o[0] == "error"]
    assert any(o[0] == "ok" for o in outcomes) and errors, outcomes[-5:]
    assert max(o[1] for o in outcomes) < 10, "a request hung"
    for _kind, _elapsed, message in errors:  # each one says what happened
        assert ("is in status Failed" in message and "no longer running" in message) or \
            "could not be reached" in message, message
    assert "is in status Failed" in errors[-1][2] and str(record["log_path"]) in errors[-1][2]
    assert not daemon.port_accepts("127.0.0.1", record["port"])

    listing = cli(state, "endpoints")
    assert listing.returncode == 0, listing.stderr
    line = next(line for line in listing.stdout.splitlines() if line.startswith(name))
    assert line.split()[1] == "Failed" and "no longer running" in listing.stdout
    asked = cli(state, "predict", KNOWN["query"], "--endpoint", name)
    assert asked.returncode == 1 and len(asked.stderr.strip().splitlines()) == 1, asked.stderr
    assert "is in status Failed" in asked.stderr and "Traceback" not in asked.stderr

    # deploy again, by name, from the CLI: two workers this time (the worker count is a setting)
    again = cli(state, "deploy", "--model-data", model_data, "--name", name,
                env={**os.environ, "LOCAL_RUNS_SIM_WORKERS": "2"})
    assert again.returncode == 0 and "is in service" in again.stdout, again.stderr[-2000:]
    new = persistent_backend.session.endpoint_record(name)
    assert new["pid"] != record["pid"] and new["workers"] == 2 and len(psutil.Process(new["pid"]).children()) == 2
    assert not any(Path(d).exists() for d in record.get("cleanup_dirs") or [])  # the dead one's files are gone
    assert job.predict(predictor, KNOWN["query"], n_items=1)["pred0"]["product_id"] == KNOWN["product_id"]
    assert "InService" in cli(state, "endpoints").stdout

    # every server of the step-by-step backend listens on 127.0.0.1 only
    s3_info, gateway_info = (daemon.read_json(state / f) for f in ("s3.json", "gateway.json"))
    sockets = listening([s3_info["pid"], gateway_info["pid"]] + [p.pid for p in tree(new["pid"])])
    assert {s3_info["port"], gateway_info["port"], new["port"]} <= {port for _, _, port in sockets}, sockets
    assert all(ip == "127.0.0.1" for _, ip, _ in sockets), sockets

    deleted = cli(state, "delete", "--endpoint", name)
    assert deleted.returncode == 0 and registry.read(state, name) is None
    assert_no_secrets(state, listing.stdout, asked.stderr, again.stdout, again.stderr)


SLOW_TO_START = """
import os, time
from sagemaker_pytorch_serving_container.handler_service import HandlerService


class SlowToStart(HandlerService):
    def initialize(self, context):
        super().initialize(context)
        open(os.environ["RELIABILITY_MODEL_LOADED"], "w").close()
        # loaded, not yet in service: the window in which the deploy is interrupted (the test never
        # releases it; the bound only keeps a forgotten server from waiting for ever)
        deadline = time.monotonic() + 120
        while not os.path.exists(os.environ["RELIABILITY_MODEL_LOADED"] + ".release") and time.monotonic() < deadline:
            time.sleep(0.05)
"""


def test_ctrl_c_during_cli_deploy_leaves_no_endpoint_process(persistent_backend, state, model_data, tmp_path):
    """`local-runs deploy` starts a detached server: Ctrl-C before it is in service must stop it.

    The server here has loaded the model and waits before going in service, so if the CLI did not stop
    it, it would go on serving under a name nobody deployed.
    """
    name = "interrupted-deploy"
    (tmp_path / "slow_handler.py").write_text(SLOW_TO_START)
    loaded = tmp_path / "loaded"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
           "LOCAL_RUNS_SIM_HANDLER_SERVICE": "slow_handler:SlowToStart", "RELIABILITY_MODEL_LOADED": str(loaded)}
    proc = subprocess.Popen([sys.executable, "-m", "local_runs", "--state-dir", str(state), "deploy", "--model-data",
                             model_data, "--name", name], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=env)
    try:
        _wait_for(loaded.exists, 120, "the endpoint to load its model")
        record = registry.read(state, name)
        assert record["status"] == registry.CREATING
        server = tree(record["pid"])
        os.killpg(proc.pid, signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err[-2000:]
    _gone, alive = psutil.wait_procs(server, timeout=10)
    assert not alive, alive
    assert registry.read(state, name) is None
    assert name not in cli(state, "endpoints").stdout
    assert not any(Path(d).exists() for d in record.get("cleanup_dirs") or [])


def test_s3_gone_is_a_clear_error_not_a_hang(persistent_backend, state, model_data, tmp_path, monkeypatch):
    info = daemon.read_json(state / "s3.json")
    os.kill(info["pid"], signal.SIGKILL)  # the S3 daemon dies (its objects are on disk)
    psutil.wait_procs(tree(info["pid"]), timeout=10)
    started = time.monotonic()
    with pytest.raises(BotoCoreError) as error:
        persistent_backend.upload(FIXTURES / "reviews.csv", prefix="after-s3-died")
    assert info["url"] in str(error.value) and time.monotonic() - started < 15, str(error.value)

    # the next command starts a fresh S3 daemon, which loads the objects back: the model deploys
    deployed = cli(state, "deploy", "--model-data", model_data, "--name", "after-s3")
    assert deployed.returncode == 0 and "is in service" in deployed.stdout, deployed.stderr[-2000:]
    assert daemon.read_json(state / "s3.json")["pid"] != info["pid"]
    assert cli(state, "delete", "--endpoint", "after-s3").returncode == 0

    # only a purged store has no model: one line saying what to do
    assert s3_server.stop_daemon(state / "s3.json") and s3_server.purge(state)
    deployed = cli(state, "deploy", "--model-data", model_data, "--name", "after-s3")
    assert deployed.returncode == 1 and len(deployed.stderr.strip().splitlines()) == 1, deployed.stderr
    assert "is not in the local S3" in deployed.stderr and "local-runs fit" in deployed.stderr
    assert registry.read(state, "after-s3") is None

    # a hung S3 (accepts, never answers): the short local timeouts end the call
    hole = socket.create_server(("127.0.0.1", 0))
    held = []
    threading.Thread(target=lambda: [held.append(hole.accept()) for _ in range(10)], daemon=True).start()
    url = f"http://127.0.0.1:{hole.getsockname()[1]}"
    monkeypatch.setenv(s3_server.TIMEOUT_ENV, "1")
    from local_runs.sim import SimSession

    session = SimSession(url, "hung-bucket", state_dir=tmp_path / "hung")
    started = time.monotonic()
    with pytest.raises(BotoCoreError) as error:
        session.upload_data(str(FIXTURES / "reviews.csv"), bucket="hung-bucket", key_prefix="x")
    elapsed = time.monotonic() - started
    assert "Read timeout" in str(error.value) and url in str(error.value) and elapsed < 15, (elapsed, str(error.value))
    hole.close()
    for conn, _ in held:
        conn.close()


def test_s3_killed_during_fit_fails_clearly_and_a_fitted_model_survives_it(persistent_backend, state):
    """kill -9 of the S3 daemon while the training script runs: the fit fails with one clear line. A fit
    that completed survives the next kill: deploy loads it from the objects the S3 daemon kept on disk."""
    proc = subprocess.Popen([sys.executable, "-m", "local_runs", "--state-dir", str(state), "fit"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: any("entry_point.py" in " ".join(_cmdline(p)) for p in tree(proc.pid)[1:]),
                  180, "the training script")
        info = daemon.read_json(state / "s3.json")
        os.kill(info["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]  # (the SDK logs one "check the troubleshooting guide" line before it)
    assert last.startswith("local-runs fit: error:") and "Could not connect to the endpoint URL" in last, err[-3000:]
    assert info["url"] in last
    failed_job = last.split(info["url"], 1)[1].split("/")[2]

    fitted = cli(state, "fit")
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    info = daemon.read_json(state / "s3.json")
    client = s3_server.boto_session().client("s3", endpoint_url=info["url"])
    bucket = info["bucket"]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not [k for k in keys if k.startswith(failed_job) and k.endswith("model.tar.gz")], keys  # nothing partial
    os.kill(info["pid"], signal.SIGKILL)
    psutil.wait_procs(tree(info["pid"]), timeout=10)
    deployed = cli(state, "deploy", "--name", "from-disk")  # the last fit, from a new S3 daemon
    assert deployed.returncode == 0 and "is in service" in deployed.stdout, deployed.stderr[-3000:]
    asked = cli(state, "predict", KNOWN["query"], "--endpoint", "from-disk")
    first = next(line for line in asked.stdout.splitlines() if line.strip().startswith("1 "))
    assert asked.returncode == 0 and "Deep Sea Submarine Bath Toy" in first, asked.stdout + asked.stderr[-3000:]
    assert cli(state, "delete", "--endpoint", "from-disk").returncode == 0
    assert not list(s3_server.store_dir(state).rglob("*.tmp"))


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.parametrize("phase", ["fit", "predict"])
def test_ctrl_c_during_cli_cycle_releases_everything(tmp_path, phase):
    state = tmp_path / "state"
    argv = [sys.executable, "-m", "local_runs", "--state-dir", str(state), "cycle"]
    for _ in range(300 if phase == "predict" else 1):  # enough queries to be caught predicting
        argv += ["--query", KNOWN["query"]]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # like a terminal: Ctrl-C goes to the CLI's group
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        if phase == "fit":
            _wait_for(lambda: any("entry_point.py" in " ".join(_cmdline(p)) for p in tree(proc.pid)[1:]),
                      120, "the training script")
        else:
            _wait_for(lambda: any(line.startswith("==> predict") for line in out), 300, "the predict phase")
            assert proc.poll() is None, "the cycle ended before Ctrl-C"
        processes = tree(proc.pid)
        ports = {port for _, _, port in listening([p.pid for p in processes])}
        assert ports, "nothing was listening"
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr[-2000:]
    _gone, alive = psutil.wait_procs(processes[1:], timeout=15)
    assert not alive, alive
    assert not any(daemon.port_accepts("127.0.0.1", port) for port in ports), ports
    assert not list(state.glob("endpoints/*.json"))
    work = state / "work"
    assert not work.is_dir() or not list(work.iterdir()), list(work.iterdir())
    assert_no_secrets(state, "".join(out), stderr)
