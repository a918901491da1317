"""Fast checks of the sim building blocks (no SageMaker SDK cycle, no training)."""
from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from botocore.exceptions import ClientError

from local_runs import daemon, s3_server
from local_runs.http_base import Handler, Server
from local_runs.sim import registry
from local_runs.sim.gateway import RuntimeGateway
from local_runs.netguard import NonLocalEndpointError, install_request_guard, is_loopback_url
from local_runs.sim.requirements import RequirementsNotSatisfied, ensure_satisfied, unsatisfied


# --- netguard ------------------------------------------------------------------------------

@pytest.mark.parametrize("url, local", [
    ("http://127.0.0.1:9000", True), ("http://127.1.2.3", True), ("http://localhost:80", True),
    ("http://[::1]:5000", True), ("https://s3.amazonaws.com", False), ("http://10.0.0.1", False),
    ("http://0.0.0.0:9000", False), ("http://localhost.evil.com", False), ("", False), (None, False),
])
def test_loopback_urls(url, local):
    assert is_loopback_url(url) is local


def test_session_refuses_non_local_s3(tmp_path):
    from local_runs.sim import SimSession

    with pytest.raises(NonLocalEndpointError, match="not local"):
        SimSession(s3_endpoint_url="https://s3.us-east-1.amazonaws.com", default_bucket="b", state_dir=tmp_path)
    with pytest.raises(NonLocalEndpointError, match="runtime"):
        SimSession(s3_endpoint_url="http://127.0.0.1:1", default_bucket="b", state_dir=tmp_path,
                   runtime_endpoint_url="https://runtime.sagemaker.us-east-1.amazonaws.com")


def test_session_wiring_and_endpoint_api_errors(tmp_path):
    from local_runs.sim import SimSession
    from local_runs.sim.runtime import SimRuntimeClient

    session = SimSession("http://127.0.0.1:9", "bucket", state_dir=tmp_path)  # nothing is contacted yet
    client = session.sagemaker_client
    assert isinstance(session.sagemaker_runtime_client, SimRuntimeClient)
    assert session.config["local"]["container_root"] == str(tmp_path / "work")
    assert session.sagemaker_config["SageMaker"]["PythonSDK"]["Modules"]["TelemetryOptOut"] is True
    assert os.environ["SAGEMAKER_SUPPRESS_V2_WARNING"]
    with pytest.raises(ClientError, match="Could not find"):
        client.delete_endpoint(EndpointName="no-such-endpoint")
    with pytest.raises(ClientError, match="invalid endpoint name"):
        client.delete_endpoint(EndpointName="bad_name")
    with pytest.raises(ClientError):
        client.describe_endpoint(EndpointName="no-such-endpoint")


def test_request_guard_blocks_calls_off_this_machine():
    session = s3_server.boto_session()
    install_request_guard(session)
    sts = session.client("sts")
    with pytest.raises(NonLocalEndpointError, match="blocked"):
        sts.get_caller_identity()


# --- requirements check --------------------------------------------------------------------

def test_requirements_check(tmp_path):
    (tmp_path / "more.txt").write_text("packaging>=1  # comment\n")
    req = tmp_path / "requirements.txt"
    req.write_text(
        "--index-url https://example.invalid/simple\n"
        "boto3\n"
        "-r more.txt\n"
        "definitely-not-installed-xyz==1.0\n"
        "packaging<1\n"
        "also-missing; python_version < '3'\n"  # marker false: skipped
    )
    problems = unsatisfied(req)
    assert any("definitely-not-installed-xyz" in p and "not installed" in p for p in problems)
    assert any(p.startswith("packaging<1") and "installed:" in p for p in problems)
    assert not any("also-missing" in p or "boto3" in p for p in problems)
    with pytest.raises(RequirementsNotSatisfied, match="definitely-not-installed-xyz"):
        ensure_satisfied(req)
    ok = tmp_path / "ok.txt"
    ok.write_text("boto3\npackaging>=20\n")
    ensure_satisfied(ok)


# --- registry --------------------------------------------------------------------------------

def test_registry_claim_and_staleness(tmp_path):
    record = registry.claim(tmp_path, "ep-1", config_name="c")
    assert record["status"] == registry.CREATING and registry.is_live(record)
    with pytest.raises(registry.EndpointExistsError):
        registry.claim(tmp_path, "ep-1")
    registry.update(tmp_path, "ep-1", pid=999_999_999)  # a process that does not exist
    assert registry.live_record(tmp_path, "ep-1") is None
    assert registry.claim(tmp_path, "ep-1")["owner_pid"] == os.getpid()  # stale record replaced
    for bad in ("../etc", "a_b", "-x", "x" * 64, ""):
        with pytest.raises(ValueError):
            registry.record_path(tmp_path, bad)


# --- local S3 --------------------------------------------------------------------------------

def test_local_s3_context(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with s3_server.LocalS3(bucket="unit-bucket") as s3:
        assert s3.port and s3.url.startswith("http://127.0.0.1:")
        assert os.environ["AWS_ENDPOINT_URL_S3"] == s3.url
        client = s3.client()
        assert "unit-bucket" in [b["Name"] for b in client.list_buckets()["Buckets"]]
        client.put_object(Bucket="unit-bucket", Key="k", Body=b"v")
        assert client.get_object(Bucket="unit-bucket", Key="k")["Body"].read() == b"v"
        port = s3.port
    assert "AWS_ENDPOINT_URL_S3" not in os.environ
    assert not daemon.port_accepts("127.0.0.1", port)


# --- the runtime gateway against a fake container -------------------------------------------

class _FakeContainer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = int(json.loads(body or b"{}").get("status", 200))
        if status == 0:
            time.sleep(2)
            status = 200
        if status == -1:  # dies mid-answer: headers promise a body that never comes
            self.send_response(200)
            self.send_header("Content-Length", "1433")
            self.end_headers()
            self.wfile.flush()
            self.close_connection = True
            return
        payload = b"bad request from model" if status >= 400 else body
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except BrokenPipeError:  # the gateway gave up waiting (timeout case)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_endpoint(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeContainer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    registry.update(tmp_path, "fake-ep", status=registry.IN_SERVICE, pid=os.getpid(),
                    create_time=daemon.process_create_time(os.getpid()), host="127.0.0.1",
                    port=server.server_address[1], log_path=str(tmp_path / "fake.log"))
    yield tmp_path
    server.shutdown()
    server.server_close()


def _runtime(url):
    return s3_server.boto_session().client("sagemaker-runtime", endpoint_url=url)


def test_gateway_maps_container_errors_to_model_error(fake_endpoint):
    with RuntimeGateway(fake_endpoint, invoke_timeout=0.5) as gateway:
        runtime = _runtime(gateway.url)
        ok = runtime.invoke_endpoint(EndpointName="fake-ep", Body=b'{"x": 1}', ContentType="application/json")
        assert json.loads(ok["Body"].read()) == {"x": 1}
        assert ok["ContentType"] == "application/json" and ok["InvokedProductionVariant"] == "AllTraffic"

        for status in (400, 500, 503):
            with pytest.raises(ClientError) as info:
                runtime.invoke_endpoint(EndpointName="fake-ep", Body=json.dumps({"status": status}),
                                        ContentType="application/json")
            error = info.value
            assert isinstance(error, runtime.exceptions.ModelError)
            assert error.response["Error"]["Code"] == "ModelError"
            assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 424
            assert error.response["OriginalStatusCode"] == status
            assert error.response["OriginalMessage"] == "bad request from model"
            kind = "client" if status < 500 else "server"
            assert f"Received {kind} error ({status}) from primary" in str(error)

        with pytest.raises(runtime.exceptions.ModelError) as info:  # container too slow
            runtime.invoke_endpoint(EndpointName="fake-ep", Body=b'{"status": 0}', ContentType="application/json")
        assert info.value.response["OriginalStatusCode"] == 0
        assert "timed out" in info.value.response["OriginalMessage"]

        with pytest.raises(runtime.exceptions.ModelError) as info:  # container gone mid-answer
            runtime.invoke_endpoint(EndpointName="fake-ep", Body=b'{"status": -1}', ContentType="application/json")
        assert info.value.response["OriginalStatusCode"] == 0
        assert "closed the connection before its answer was complete" in info.value.response["OriginalMessage"]
        assert "IncompleteRead" in info.value.response["OriginalMessage"]

        with pytest.raises(runtime.exceptions.ValidationError, match="not found"):
            runtime.invoke_endpoint(EndpointName="no-such-ep", Body=b"{}", ContentType="application/json")

        with pytest.raises(ClientError) as info:
            runtime.invoke_endpoint(EndpointName="fake-ep", Body=b"x" * (6 * 1024 * 1024 + 1))
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


def test_gateway_reached_through_env_var(fake_endpoint, monkeypatch):
    with RuntimeGateway(fake_endpoint) as gateway:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", gateway.url)
        runtime = boto3.client("sagemaker-runtime", region_name="us-east-1",
                               aws_access_key_id="x", aws_secret_access_key="y")
        out = runtime.invoke_endpoint(EndpointName="fake-ep", Body=b'{"y": 2}', ContentType="application/json")
        assert json.loads(out["Body"].read()) == {"y": 2}


def test_port_file_round_trip(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    path = tmp_path / "d.json"
    info = daemon.write_port_file(path, "127.0.0.1", listener.getsockname()[1], extra="x")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert daemon.discover(path)["extra"] == "x" and info["pid"] == os.getpid()
    listener.close()
    assert daemon.discover(path) is None  # not listening any more
    daemon.remove_port_file(path)
    assert not path.exists()
    assert sys.executable == daemon.python()


def test_sdk_config_is_validated_once_and_invalid_configs_still_fail(monkeypatch):
    import jsonschema
    import sagemaker.utils

    from local_runs import sdk_config

    calls = []
    monkeypatch.setattr(sagemaker.utils, "validate_sagemaker_config",
                        lambda config=None: calls.append(config) or jsonschema.validate(config, {"type": "object"}))
    sdk_config.memoize_config_validation()
    sdk_config.memoize_config_validation()  # idempotent: not wrapped twice
    config = sdk_config.with_telemetry_opt_out({})
    for _ in range(5):
        sagemaker.utils.validate_sagemaker_config(config)
    assert len(calls) == 1
    for _ in range(2):
        with pytest.raises(jsonschema.ValidationError):
            sagemaker.utils.validate_sagemaker_config(["not", "a", "config"])
    assert len(calls) == 3  # a failing config is checked every time


def test_sdk_repack_in_sim_stores_the_model_uncompressed_with_the_same_members(tmp_path, monkeypatch):
    """The deploy's repack (`sagemaker.utils.repack_model`, unchanged) writes a gzip at level 0 once sim
    patched the SDK's tarfile: the model's bytes and the entry point, readable by any gzip reader."""
    import tarfile
    from types import SimpleNamespace

    import sagemaker.utils

    from local_runs import sdk_config

    monkeypatch.setattr(sagemaker.utils, "tarfile", tarfile)  # undone after the test
    model = tmp_path / "model"
    model.mkdir()
    (model / "zeros.bin").write_bytes(bytes(2_000_000))  # level 9 would make this a few kB
    with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as archive:
        archive.add(model / "zeros.bin", arcname="zeros.bin")
    (tmp_path / "entry.py").write_text("def model_fn(model_dir):\n    return model_dir\n")

    def repack(name):
        sagemaker.utils.repack_model(inference_script=str(tmp_path / "entry.py"), source_directory=None,
                                     dependencies=[], model_uri=f"file://{tmp_path / 'model.tar.gz'}",
                                     repacked_model_uri=f"file://{tmp_path / name}",
                                     sagemaker_session=SimpleNamespace(settings=None))
        with tarfile.open(tmp_path / name) as archive:
            members = {m.name: (m.size, archive.extractfile(m).read() if m.isfile() else None)
                       for m in archive.getmembers()}
        return (tmp_path / name).stat().st_size, members

    size_9, members_9 = repack("level-9.tar.gz")
    sdk_config.store_sdk_archives_uncompressed()
    sdk_config.store_sdk_archives_uncompressed()  # idempotent
    size_0, members_0 = repack("level-0.tar.gz")
    assert members_0 == members_9 and "code/entry.py" in members_0 and members_0["zeros.bin"][0] == 2_000_000
    assert size_9 < 100_000 < 2_000_000 < size_0
    assert sagemaker.utils.tarfile.TarFile is tarfile.TarFile  # the rest of the module as it is


def test_artifacts_pack_every_host_into_one_readable_gzip(tmp_path):
    import gzip
    import tarfile

    from local_runs.sim import artifacts

    hosts = {}
    for host, files in (("algo-1", {"a.txt": "one", "shards/p0.npy": "x"}), ("algo-2", {"shards/p1.npy": "y"})):
        root = tmp_path / host / "model"
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        (tmp_path / host / "output").mkdir()
        hosts[host] = {"volumes": [f"{root}:/opt/ml/model", f"{tmp_path / host / 'output'}:/opt/ml/output"]}
    out = tmp_path / "out"
    uri = artifacts.retrieve(str(tmp_path), list(hosts), {"services": hosts}, {"S3OutputPath": f"file://{out}"},
                             "job", None)
    assert uri == f"file://{out}/model.tar.gz"
    with gzip.open(out / "model.tar.gz") as stream:
        assert stream.read(1)  # a real gzip stream, whatever its level
    with tarfile.open(out / "model.tar.gz", "r:gz") as archive:
        archive.extractall(tmp_path / "x", filter="data")
    got = {p.relative_to(tmp_path / "x").as_posix(): p.read_text() for p in (tmp_path / "x").rglob("*") if p.is_file()}
    assert got == {"a.txt": "one", "shards/p0.npy": "x", "shards/p1.npy": "y"}
    assert (out / "output.tar.gz").is_file()


def test_a_failing_request_is_logged_in_one_line_not_printed_as_a_traceback(capfd, caplog):
    class Failing(Handler):
        def do_GET(self):  # noqa: N802
            raise ValueError("something unexpected")

    server = Server(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with caplog.at_level(logging.ERROR, logger="local_runs.http"):
            conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
            conn.request("GET", "/")
            with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
                conn.getresponse()
            conn.close()
            deadline = time.monotonic() + 10
            while not caplog.records and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        server.shutdown()
        server.server_close()
    (record,) = caplog.records
    assert "failed: ValueError: something unexpected" in record.getMessage()
    assert "Traceback" not in capfd.readouterr().err
