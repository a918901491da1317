"""Separate processes sharing one local S3 daemon, one runtime gateway daemon and the registry.

This is how the CLI works: one command deploys a detached endpoint and exits, later
commands find it by name (registry), call it through the gateway with plain boto3, and
delete it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import psutil
import pytest

from local_runs import daemon, s3_server
from local_runs.sim import SimSession, gateway, registry

from sagemaker.deserializers import JSONDeserializer  # noqa: E402
from sagemaker.predictor import Predictor  # noqa: E402
from sagemaker.serializers import JSONSerializer  # noqa: E402

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
BUCKET = "sim-daemon-tests"

DEPLOY = textwrap.dedent('''
    import json, sys
    from local_runs import s3_server
    from local_runs.sim import SimSession
    from sagemaker.pytorch import PyTorch
    s3_port_file, state_dir, entry, dep, name = sys.argv[1:6]
    s3 = s3_server.discover_daemon(s3_port_file)
    session = SimSession(s3_endpoint_url=s3["url"], default_bucket=s3["bucket"], state_dir=state_dir,
                         detach_endpoints=True)
    est = PyTorch(entry_point="entry_point.py", source_dir=entry, dependencies=[dep],
                  role="arn:aws:iam::111111111111:role/R", framework_version="2.6", py_version="py312",
                  instance_count=1, instance_type="local", hyperparameters={"greeting": "detached"},
                  sagemaker_session=session)
    est.fit({"train": f"s3://{s3['bucket']}/data/train"})
    est.deploy(initial_instance_count=1, instance_type="local", endpoint_name=name)
    print("RECORD " + json.dumps(session.endpoint_record(name)), flush=True)
''')


@pytest.fixture()
def daemons(tmp_path):
    state = tmp_path / "state"
    s3_file, gw_file = state / "s3.json", state / "gateway.json"
    s3 = s3_server.ensure_daemon(s3_file, bucket=BUCKET)
    gw = gateway.ensure_daemon(gw_file, state)
    yield state, s3_file, gw_file, s3, gw
    for record in registry.list_records(state):
        from local_runs.sim.endpoints import stop_endpoint

        stop_endpoint(state, record["name"])
    gateway.stop_daemon(gw_file)
    s3_server.stop_daemon(s3_file)


def test_daemons_are_reused_and_stopped(daemons):
    state, s3_file, gw_file, s3, gw = daemons
    assert s3_server.ensure_daemon(s3_file, bucket=BUCKET)["pid"] == s3["pid"]  # reused, not restarted
    assert gateway.ensure_daemon(gw_file, state)["pid"] == gw["pid"]
    assert s3["url"].startswith("http://127.0.0.1:") and gw["url"].startswith("http://127.0.0.1:")
    assert "secret" not in s3_file.read_text().lower() and s3_server.DUMMY_SECRET_ACCESS_KEY not in s3_file.read_text()
    client = s3_server.boto_session().client("s3", endpoint_url=s3["url"])
    assert BUCKET in [b["Name"] for b in client.list_buckets()["Buckets"]]
    assert s3_server.stop_daemon(s3_file) and gateway.stop_daemon(gw_file)
    assert not s3_file.exists() and not gw_file.exists()
    assert not psutil.pid_exists(s3["pid"]) and not psutil.pid_exists(gw["pid"])


def test_detached_endpoint_outlives_deployer_and_is_used_by_name(daemons, tmp_path, monkeypatch):
    state, s3_file, _gw_file, s3, gw = daemons
    s3_server.boto_session().client("s3", endpoint_url=s3["url"]).put_object(
        Bucket=BUCKET, Key="data/train/a.txt", Body=b"x\ny\n")
    script = tmp_path / "deploy.py"
    script.write_text(DEPLOY)
    done = subprocess.run(
        [sys.executable, str(script), str(s3_file), str(state), str(HERE / "sim_entry"),
         str(HERE / "sim_deps" / "echo_lib"), "detached-ep"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads(done.stdout.split("RECORD ", 1)[1].splitlines()[0])
    assert record["detached"] and registry.live_record(state, "detached-ep")["pid"] == record["pid"]

    # a plain boto3 client, pointed at the gateway by the standard variable, finds it by name
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", gw["url"])
    runtime = boto3.client("sagemaker-runtime", region_name="us-east-1", aws_access_key_id="x",
                           aws_secret_access_key="y")
    out = runtime.invoke_endpoint(EndpointName="detached-ep", ContentType="application/json",
                                  Body=json.dumps({"query": "from another process"}))
    answer = json.loads(out["Body"].read())
    assert answer["echo"] == "FROM ANOTHER PROCESS" and answer["greeting"] == "detached"

    # and the SDK in this (third) process can predict and delete it by name
    session = SimSession(s3_endpoint_url=s3["url"], default_bucket=BUCKET, state_dir=state,
                         runtime_endpoint_url=gw["url"])
    predictor = Predictor("detached-ep", sagemaker_session=session, serializer=JSONSerializer(),
                          deserializer=JSONDeserializer())
    assert predictor.predict({"query": "sdk"})["echo"] == "SDK"
    processes = [psutil.Process(record["pid"])] + psutil.Process(record["pid"]).children(recursive=True)
    predictor.delete_endpoint()
    _gone, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive
    assert not daemon.port_accepts("127.0.0.1", record["port"])
    assert registry.read(state, "detached-ep") is None
    assert not any(os.path.exists(d) for d in record["cleanup_dirs"])


def test_concurrent_ensure_starts_one_daemon(tmp_path):
    import threading

    pids: list[int] = []
    port_file = tmp_path / "gateway.json"
    threads = [threading.Thread(target=lambda: pids.append(gateway.ensure_daemon(port_file, tmp_path)["pid"]))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(pids) == 3 and len(set(pids)) == 1
    finally:
        gateway.stop_daemon(port_file)
    assert not psutil.pid_exists(pids[0])


def test_s3_daemon_keeps_objects_on_disk_across_kill_and_restart(tmp_path):
    """What the S3 daemon acknowledged survives kill -9 and a new daemon; a delete does too; purge empties it."""
    import signal

    from boto3.s3.transfer import TransferConfig

    state = tmp_path / "state"
    port_file = state / "s3.json"
    info = s3_server.ensure_daemon(port_file, bucket=BUCKET)
    client = s3_server.boto_session().client("s3", endpoint_url=info["url"])
    big = os.urandom(6 * 1024 * 1024)  # a multipart upload (5 MiB parts)
    (tmp_path / "big.bin").write_bytes(big)
    client.upload_file(str(tmp_path / "big.bin"), BUCKET, "model/model.tar.gz",
                       Config=TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024))
    client.put_object(Bucket=BUCKET, Key="data/ünïcode key.csv", Body=b"a,b\n1,2\n", ContentType="text/csv",
                      Metadata={"origin": "test"})
    client.put_object(Bucket=BUCKET, Key="to-delete", Body=b"x")
    client.copy_object(Bucket=BUCKET, Key="copy/of.csv", CopySource={"Bucket": BUCKET, "Key": "data/ünïcode key.csv"})
    client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "to-delete"}]})
    client.create_bucket(Bucket="second-bucket")
    client.put_object(Bucket="second-bucket", Key="k", Body=b"v")
    store = s3_server.store_dir(state)
    assert sorted(p.name for p in store.iterdir()) == sorted([BUCKET, "second-bucket"])
    assert not list(store.rglob("*.tmp"))

    os.kill(info["pid"], signal.SIGKILL)  # no clean shutdown
    try:
        psutil.wait_procs([psutil.Process(info["pid"])], timeout=10)
    except psutil.NoSuchProcess:
        pass
    again = s3_server.ensure_daemon(port_file, bucket=BUCKET)
    try:
        assert again["pid"] != info["pid"]
        client = s3_server.boto_session().client("s3", endpoint_url=again["url"])
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"])
        assert keys == ["copy/of.csv", "data/ünïcode key.csv", "model/model.tar.gz"]
        assert client.get_object(Bucket=BUCKET, Key="model/model.tar.gz")["Body"].read() == big
        csv = client.get_object(Bucket=BUCKET, Key="data/ünïcode key.csv")
        assert csv["Body"].read() == b"a,b\n1,2\n" and csv["ContentType"] == "text/csv"
        assert csv["Metadata"] == {"origin": "test"}
        assert client.get_object(Bucket="second-bucket", Key="k")["Body"].read() == b"v"
        client.delete_object(Bucket="second-bucket", Key="k")
        client.delete_bucket(Bucket="second-bucket")
        assert sorted(p.name for p in store.iterdir()) == [BUCKET]
        log = (state / "s3.log").read_text()
        assert "(4 loaded)" in log
    finally:
        assert s3_server.stop_daemon(port_file)  # a clean stop keeps them too
    assert s3_server.purge(state) and not store.exists() and not s3_server.purge(state)
    fresh = s3_server.ensure_daemon(port_file, bucket=BUCKET)
    try:
        client = s3_server.boto_session().client("s3", endpoint_url=fresh["url"])
        assert client.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    finally:
        s3_server.stop_daemon(port_file)


def test_disk_store_never_shows_a_cut_off_object(tmp_path):
    """A write killed half-way leaves only a temp file, which the next load removes; an object
    whose size does not match its header is skipped, not served cut off."""
    store = s3_server.DiskStore(tmp_path / "s3")
    store.put_bucket("b", "us-east-1")
    store.put_object("b", "good", b"12345", "text/plain", {}, '"etag"')
    (tmp_path / "s3" / "b" / ".abc.obj.1.2.tmp").write_bytes(b'{"key": "half"}\n12')
    cut = store._object_path("b", "cut")
    cut.write_bytes(json.dumps({"key": "cut", "size": 10}).encode() + b"\n12345")
    objects = list(store.objects("b"))
    assert [(h["key"], body) for h, body in objects] == [("good", b"12345")]
    assert not list((tmp_path / "s3" / "b").glob("*.tmp"))
