"""The docker backend: the SDK's own local mode, with S3 from docker-compose.yml.

Always run (fast, no Docker): the compose file names what the backend expects; the image choice;
the local-mode config and credentials; the checks' messages; and the whole job through the SDK's
real local mode with only the `docker` command faked (tests/fake_docker.py), which shows what the
SDK would hand Docker. Marked `docker`: checks against a real Docker (skipped where none answers);
the full cycle is also `integration` (it pulls the AWS images and pip-installs in them).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from urllib.parse import urlsplit

import pytest
import yaml

import fake_docker
from conftest import ROOT
from local_runs import job
from local_runs.backends import docker as docker_mode
from local_runs.backends import DUMMY_ROLE, LOCAL_BUCKET, open_backend
from local_runs.config import ConfigError, Settings

TRAINING_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-cpu-py311"
INFERENCE_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.5-cpu-py311"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(docker_mode.COMPOSE_FILE.read_text())


# --- the compose file ----------------------------------------------------------------------------
def test_compose_file_names_what_the_backend_expects(compose):
    service = compose["services"][docker_mode.S3_SERVICE]
    image, tag = service["image"].rsplit(":", 1)
    assert image == "motoserver/moto" and tag[0].isdigit(), "pin a real moto release, not latest"
    # published on loopback only, at the port the backend's default S3 URL names
    default_url = urlsplit(Settings().docker_s3_url)
    assert service["ports"] == [f"127.0.0.1:{default_url.port}:{docker_mode.S3_PORT}"]
    assert default_url.hostname == "127.0.0.1"
    # listens on every interface inside the container, on the port the containers are told
    assert service["entrypoint"][-4:] == ["-H", "0.0.0.0", "-p", str(docker_mode.S3_PORT)]
    # on the SDK's network, under the alias the backend gives the containers
    assert compose["networks"] == {docker_mode.NETWORK: {"name": docker_mode.NETWORK}}
    assert docker_mode.S3_ALIAS in service["networks"][docker_mode.NETWORK]["aliases"]
    assert docker_mode.CONTAINER_S3_URL == f"http://{docker_mode.S3_ALIAS}:{docker_mode.S3_PORT}"
    assert "." not in docker_mode.S3_ALIAS  # moto would read a dotted host as <bucket>.<endpoint>
    assert f"127.0.0.1:{docker_mode.S3_PORT}/" in service["healthcheck"]["test"][-1]


def test_compose_network_is_declared_like_the_sdks(tmp_path, compose):
    """Compose reuses a network only if its key matches: ours must equal the SDK's generated one."""
    from sagemaker.local.image import _SageMakerContainer

    class Session:  # just what _generate_compose_file reads
        boto_session = None
        config = {"local": {"container_root": str(tmp_path)}}
        sagemaker_config = {}

    container = _SageMakerContainer.__new__(_SageMakerContainer)
    container.sagemaker_session, container.hosts, container.image = Session(), ["algo-1-abcde"], TRAINING_IMAGE
    container.container_root, container.is_studio, container.instance_type = str(tmp_path), False, "local"
    container.container_entrypoint = container.container_arguments = None
    generated = container._generate_compose_file("train")
    assert generated["networks"] == compose["networks"]
    assert docker_mode.NETWORK in generated["services"]["algo-1-abcde"]["networks"]


# --- the image -----------------------------------------------------------------------------------
def test_images_are_the_newest_pytorch_with_both_cpu_images_on_py311():
    from sagemaker import image_uris

    settings = Settings(backend="docker")
    assert docker_mode.image_uris(settings) == {"training": TRAINING_IMAGE, "inference": INFERENCE_IMAGE}
    config = image_uris.config_for_framework("pytorch")
    both = [v for v in config["training"]["versions"]
            if "py311" in config["training"]["versions"][v].get("py_versions", [])
            and "py311" in config["inference"]["versions"].get(v, {}).get("py_versions", [])]
    newest = max(both, key=lambda v: [int(x) for x in v.split(".")])
    assert config["training"]["version_aliases"][settings.framework_version] == newest  # 2.5 -> 2.5.1
    assert settings.py_version == "py311"


# --- config and credentials ----------------------------------------------------------------------
def test_local_mode_config_keeps_the_users_and_adds_the_env_file(tmp_path):
    import jsonschema
    from sagemaker.config.config_schema import SAGEMAKER_PYTHON_SDK_LOCAL_MODE_CONFIG_SCHEMA

    env_file = docker_mode.write_env_file(tmp_path)
    assert f"S3_ENDPOINT_URL={docker_mode.CONTAINER_S3_URL}" in env_file.read_text().splitlines()
    user = {"local": {"local_code": True, "serving_port": 9090,
                      "container_config": {"env_file": "/home/me/x.env", "shm_size": "1g"}}}
    config = docker_mode.local_mode_config(user, env_file)
    jsonschema.validate(config, SAGEMAKER_PYTHON_SDK_LOCAL_MODE_CONFIG_SCHEMA)
    local = config["local"]
    assert local["local_code"] is False  # code (with knn) must travel as sourcedir.tar.gz
    assert local["serving_port"] == 9090 and local["container_config"]["shm_size"] == "1g"
    assert local["container_config"]["env_file"] == ["/home/me/x.env", str(env_file)]
    assert docker_mode.local_mode_config(None, env_file)["local"]["container_config"]["env_file"] == [str(env_file)]


def test_boto_session_sends_s3_to_compose_and_only_ecr_with_the_users_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUSERSOWNKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "users-own-secret")
    session = docker_mode.boto_session("eu-west-1", "http://127.0.0.1:4566")
    assert session.client("s3").meta.endpoint_url == "http://127.0.0.1:4566"
    assert session.resource("s3").meta.client.meta.endpoint_url == "http://127.0.0.1:4566"
    assert session.get_credentials().access_key == docker_mode.DUMMY_ACCESS_KEY_ID  # S3 and containers
    ecr = session.client("ecr")
    assert ecr.meta.region_name == "eu-west-1" and "127.0.0.1" not in ecr.meta.endpoint_url
    assert ecr._request_signer._credentials.access_key == "AKIAUSERSOWNKEY"  # only for the ECR login


# --- checks before anything starts ---------------------------------------------------------------
def _fake_path(tmp_path, monkeypatch, **env):
    fake_docker.install(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(tmp_path / "log"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_no_engine_is_a_clear_error(tmp_path, monkeypatch):
    _fake_path(tmp_path, monkeypatch, FAKE_DOCKER_ENGINE="down")
    with pytest.raises(ConfigError, match=r"no Docker engine answers .*Cannot connect to the Docker daemon.*--backend sim"):
        open_backend(Settings(backend="docker", state_dir=str(tmp_path / "state")))


def test_cloud_instance_type_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="'ml.m4.xlarge' .* is for the sagemaker backend"):
        open_backend(Settings(backend="docker", instance_type="ml.m4.xlarge", state_dir=str(tmp_path)))


def test_no_docker_command_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "not on PATH" in docker_mode.engine_problem()


def test_missing_images_without_credentials_say_how_to_pull(tmp_path, monkeypatch):
    _fake_path(tmp_path, monkeypatch, FAKE_DOCKER_IMAGES="missing")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError) as info:
        docker_mode.preflight(Settings(backend="docker"))
    message = str(info.value)
    assert "no AWS credentials" in message and f"docker pull {TRAINING_IMAGE}" in message
    assert "aws ecr get-login-password --region us-east-1 | docker login --username AWS --password-stdin " \
           "763104351884.dkr.ecr.us-east-1.amazonaws.com" in message
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUSERSOWNKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "users-own-secret")
    assert docker_mode.preflight(Settings(backend="docker"))["training"] == TRAINING_IMAGE  # the SDK will pull


def test_s3_not_started_says_how_to_start_it(tmp_path):
    url = f"http://127.0.0.1:{fake_docker.free_port()}"
    settings = Settings(backend="docker", docker_s3_url=url)
    with pytest.raises(ConfigError, match=rf"S3 at {url} does not answer .*docker compose up -d"):
        docker_mode.open_session(settings, tmp_path, LOCAL_BUCKET, check=False)


# --- the job through the SDK's local mode, docker faked -------------------------------------------
@pytest.fixture
def faked(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUSERSOWNKEY")  # must not reach compose files or containers
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "users-own-secret")
    log_dir, s3, port = fake_docker.activate(tmp_path, monkeypatch, LOCAL_BUCKET)
    yield log_dir, s3, port
    s3.stop()


@pytest.mark.parametrize("compose_version", ["Docker Compose version v2.29.7", "Docker Compose version v5.0.2"])
def test_job_runs_through_the_sdks_local_mode(faked, tmp_path, monkeypatch, compose_version):
    monkeypatch.setenv("FAKE_DOCKER_COMPOSE_VERSION", compose_version)
    log_dir, s3, port = faked
    state = tmp_path / "state"
    settings = Settings(backend="docker", docker_s3_url=s3.url, state_dir=str(state))
    with open_backend(settings) as backend:
        assert type(backend.session).__module__ == "sagemaker.local.local_session"  # the SDK's own LocalSession
        assert backend.instance_type == "local" and backend.role == DUMMY_ROLE
        train_uri = backend.upload(ROOT / "fixtures" / "reviews.csv")
        estimator = job.fit(backend, train_uri, {"index-kind": "exact"})
        predictor = job.deploy(estimator, backend)
        answer = job.predict(predictor, "My children liked it", n_items=2)
        predictor.delete_model()
        predictor.delete_endpoint(delete_endpoint_config=True)

    (train,), (serve,) = fake_docker.records(log_dir, "train"), fake_docker.records(log_dir, "serve")
    env_file = str(state.resolve() / docker_mode.ENV_FILE_NAME)
    for run, image in ((train, TRAINING_IMAGE), (serve, INFERENCE_IMAGE)):
        (service,) = run["compose"]["services"].values()
        environment = dict(item.split("=", 1) for item in service["environment"])
        assert service["image"] == image
        assert run["compose"]["networks"] == {"sagemaker-local": {"name": "sagemaker-local"}}
        assert env_file in service["env_file"]
        assert f"S3_ENDPOINT_URL={docker_mode.CONTAINER_S3_URL}" in run["env_files"][env_file]
        assert environment["AWS_ACCESS_KEY_ID"] == docker_mode.DUMMY_ACCESS_KEY_ID  # never the user's
        assert "users-own-secret" not in json.dumps(run)

    # training: code (with knn) from the compose S3, data mounted, the SDK's S3 URL for the host
    (service,) = train["compose"]["services"].values()
    assert dict(item.split("=", 1) for item in service["environment"])["AWS_ENDPOINT_URL_S3"] == s3.url
    hyper = {k: json.loads(v) for k, v in train["hyperparameters"].items()}
    assert hyper["sagemaker_program"] == "entry_point.py" and hyper["index-kind"] == "exact"
    bucket, key = hyper["sagemaker_submit_directory"][len("s3://"):].split("/", 1)
    assert bucket == LOCAL_BUCKET and key.endswith("/source/sourcedir.tar.gz")
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    names = set(tarfile.open(fileobj=io.BytesIO(body)).getnames())
    assert {"entry_point.py", "requirements.txt", "knn/__init__.py", "knn/search.py"} <= names
    assert train["input_files"] == ["train/reviews.csv"]

    # serving: the repacked model (the fake's model.json + code/ with knn under lib/) mounted
    assert {"model.json", "code/entry_point.py", "code/requirements.txt", "code/lib/knn/__init__.py"} <= set(serve["model_files"])
    (service,) = serve["compose"]["services"].values()
    environment = dict(item.split("=", 1) for item in service["environment"])
    assert environment["SAGEMAKER_PROGRAM"] == "entry_point.py"
    assert service["ports"] == [f"{port}:8080"]
    assert answer["pred0"]["matched_sentence"] == str({"query": "My children liked it", "n_items": 2})

    # what the SDK asked the docker command: no pull or login (the images are "present")
    calls = fake_docker.calls(log_dir)
    assert not [c for c in calls if c[0] in ("pull", "login")]
    ups = [c for c in calls if c[0] == "compose" and "up" in c]
    assert len(ups) == 2 and "--abort-on-container-exit" in ups[0]


@pytest.mark.parametrize("output, major", [("Docker Compose version v2.29.7", 2), ("Docker Compose version v5.0.2", 5),
                                           ("Docker Compose version 2.20.2+ds1-0ubuntu1", 2), ("nonsense", None)])
def test_compose_major_version(output, major):
    assert docker_mode.compose_major_version(output) == major


def test_compose_v5_is_refused_by_the_sdk_alone_and_accepted_with_the_backend(faked, monkeypatch):
    from sagemaker.local.image import _SageMakerContainer

    monkeypatch.setenv("FAKE_DOCKER_COMPOSE_VERSION", "Docker Compose version v5.0.2")
    monkeypatch.setattr("shutil.which", lambda name, *a, **k: None if name == "docker-compose" else original_which(name))
    docker_mode.accept_compose_v2_and_later()
    sdk_check = _SageMakerContainer.__dict__["_sdk_get_compose_cmd_prefix"]
    assert sdk_check.__func__.__module__ == "sagemaker.local.image"
    with pytest.raises(ImportError, match="Docker Compose is not installed"):
        sdk_check.__func__()  # the SDK's own check refuses Compose v5
    assert _SageMakerContainer._get_compose_cmd_prefix() == ["docker", "compose"]
    assert docker_mode.compose_problem() is None
    monkeypatch.setenv("FAKE_DOCKER_COMPOSE_VERSION", "Docker Compose version v1.29.2")
    with pytest.raises(ImportError, match="Docker Compose is not installed"):
        _SageMakerContainer._get_compose_cmd_prefix()
    assert "v2 or later is not installed" in docker_mode.compose_problem()


original_which = shutil.which


# --- with a real Docker engine --------------------------------------------------------------------
def _require_docker():
    problem = docker_mode.engine_problem() or docker_mode.compose_problem()
    if problem:
        pytest.skip(f"docker backend not testable here: {problem}")


@pytest.mark.docker
def test_compose_file_is_valid_for_docker_compose():
    _require_docker()
    result = subprocess.run(["docker", "compose", "-f", str(docker_mode.COMPOSE_FILE), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.docker
@pytest.mark.integration
def test_full_cycle_in_docker(tmp_path, capsys):
    """`docker compose up -d --wait`, then `local-runs --backend docker cycle` (pulls the AWS images)."""
    _require_docker()
    from local_runs.cli import main

    compose = ["docker", "compose", "-f", str(docker_mode.COMPOSE_FILE)]
    running = subprocess.run([*compose, "ps", "-q", docker_mode.S3_SERVICE], capture_output=True, text=True, timeout=60)
    was_running = running.returncode == 0 and bool(running.stdout.strip())
    started = subprocess.run([*compose, "up", "-d", "--wait"], capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, started.stderr
    try:
        settings = Settings(backend="docker")
        try:
            docker_mode.preflight(settings)
        except ConfigError as exc:  # an engine, but no way to get the AWS images: not this test's failure
            pytest.skip(str(exc))
        code = main(["--backend", "docker", "--state-dir", str(tmp_path / "state"), "cycle",
                     "--query", "a bath toy that floats"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "Deep Sea Submarine Bath Toy" in out
    finally:
        if not was_running:  # leave a user's own S3 as it was
            subprocess.run([*compose, "down"], capture_output=True, text=True, timeout=300)
