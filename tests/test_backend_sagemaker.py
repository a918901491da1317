"""The sagemaker backend, offline: settings and their errors, the real code path under moto's
`mock_aws`, and the dry run (requests printed and answered locally, nothing sent).

What a real run would send is checked request by request: CreateTrainingJob, CreateModel,
CreateEndpointConfig and CreateEndpoint carry the instance type and count, the framework image URI
for the region, the hyperparameters, the S3 input and output URIs, SAGEMAKER_PROGRAM and the code
location; `delete` removes the endpoint, its endpoint config and its model.
"""
from __future__ import annotations

import io
import json
import socket
import tarfile
import time

import pytest

from conftest import ROOT
from local_runs import job
from local_runs.backends import (PLACEHOLDER_BUCKET, PLACEHOLDER_ROLE, delete_endpoint_and_resources,
                                 open_backend)
from local_runs.cli import main
from local_runs.config import ConfigError, Settings

ROLE = "arn:aws:iam::210987654321:role/SageMakerExecution"
BUCKET = "review-search-tests"
REGION = "eu-west-1"
TRAINING_IMAGE = f"763104351884.dkr.ecr.{REGION}.amazonaws.com/pytorch-training:2.5-cpu-py311"
INFERENCE_IMAGE = f"763104351884.dkr.ecr.{REGION}.amazonaws.com/pytorch-inference:2.5-cpu-py311"
REVIEWS = ROOT / "fixtures" / "reviews.csv"


def cloud(**overrides) -> Settings:
    values = {"backend": "sagemaker", "role": ROLE, "bucket": BUCKET, "region": REGION}
    return Settings(**{**values, **overrides})


@pytest.fixture
def no_aws_credentials(tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def dummy_aws_credentials(no_aws_credentials, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def offline(monkeypatch):
    """Record (and refuse) every attempt to resolve or connect to anything but this machine."""
    attempts = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect
    local_names = {"localhost", "127.0.0.1", "::1", None}

    def getaddrinfo(host, *args, **kwargs):
        if host not in local_names and not str(host).startswith("127."):
            attempts.append(f"resolve {host}")
            raise socket.gaierror(f"offline test: {host} may not be resolved")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(address, tuple) and host not in local_names and not str(host).startswith("127."):
            attempts.append(f"connect {address}")
            raise OSError(f"offline test: no connection to {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def _hp(value: str):
    return json.loads(value)


def _tar_names(client, uri: str) -> set[str]:
    bucket, key = uri[len("s3://"):].split("/", 1)
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return set(tarfile.open(fileobj=io.BytesIO(body)).getnames())


# --- settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, fragment", [
    ({"role": ""}, "needs an IAM role: set LOCAL_RUNS_ROLE"),
    ({"bucket": ""}, "needs an S3 bucket: set LOCAL_RUNS_BUCKET"),
    ({"role": "SageMakerExecution"}, "is not an IAM role ARN"),
    ({"bucket": "s3://review-search-tests/data"}, "without s3:// or a path"),
    ({"bucket": "Bad_Bucket"}, "is not an S3 bucket name"),
    ({"instance_type": "local"}, "'local' is for sim and docker"),
])
def test_settings_errors_say_what_to_set(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        open_backend(cloud(**overrides))


def test_missing_credentials_is_a_clear_error(no_aws_credentials):
    with pytest.raises(ConfigError, match="found no AWS credentials.*--dry-run"):
        open_backend(cloud())


def test_real_session_and_instance_type(dummy_aws_credentials, offline):
    import sagemaker

    with open_backend(cloud()) as backend:
        assert type(backend.session) is sagemaker.Session and not backend.session.local_mode
        assert backend.instance_type == "ml.m4.xlarge" and backend.role == ROLE and backend.bucket == BUCKET
        assert backend.session.boto_region_name == REGION and backend.session._default_bucket_name_override == BUCKET
    with open_backend(cloud(instance_type="ml.c5.xlarge")) as backend:
        assert backend.instance_type == "ml.c5.xlarge"
    assert offline == []


# --- the real code path against moto ----------------------------------------------------------------
@pytest.fixture
def fast_waits(monkeypatch):
    """The SDK sleeps before its first status look (5 s for a job, 30 s for an endpoint)."""
    import sagemaker.session

    def wait_until(fn, poll=5):
        while (result := fn()) is None:
            time.sleep(0.01)
        return result

    monkeypatch.setattr(sagemaker.session, "_wait_until", wait_until)


def test_requests_and_delete_against_moto(dummy_aws_credentials, fast_waits, offline):
    import boto3
    from moto import mock_aws

    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        with open_backend(cloud()) as backend:
            sent = []  # what the SDK hands botocore, recorded on the way to moto
            backend.session.sagemaker_client.meta.events.register(
                "before-parameter-build.sagemaker", lambda params, model, **_: sent.append((model.name, dict(params))))
            train_uri = backend.upload(REVIEWS)
            estimator = job.fit(backend, train_uri, {"index-kind": "exact"})
            bucket, key = estimator.model_data[len("s3://"):].split("/", 1)
            empty = io.BytesIO()
            tarfile.open(fileobj=empty, mode="w:gz").close()
            s3.put_object(Bucket=bucket, Key=key, Body=empty.getvalue())  # moto trains nothing
            predictor = job.deploy(estimator, backend)
            client = backend.session.sagemaker_client
            assert len(client.list_endpoints()["Endpoints"]) == 1
            deleted = delete_endpoint_and_resources(backend.session, predictor.endpoint_name)
            assert client.list_endpoints()["Endpoints"] == []
            assert client.list_endpoint_configs()["EndpointConfigs"] == []
            assert client.list_models()["Models"] == []

        requests = {name: params for name, params in sent}
        training = requests["CreateTrainingJob"]
        assert training["ResourceConfig"]["InstanceType"] == "ml.m4.xlarge"
        assert training["ResourceConfig"]["InstanceCount"] == 1
        assert training["AlgorithmSpecification"]["TrainingImage"] == TRAINING_IMAGE
        assert training["RoleArn"] == ROLE
        assert training["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == \
            f"s3://{BUCKET}/review-search/data/reviews"
        assert training["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/"
        hyper = {k: _hp(v) for k, v in training["HyperParameters"].items()}
        assert hyper["index-kind"] == "exact" and hyper["sagemaker_program"] == "entry_point.py"
        assert {"entry_point.py", "requirements.txt", "knn/__init__.py"} <= _tar_names(s3, hyper["sagemaker_submit_directory"])
        model = requests["CreateModel"]
        assert model["PrimaryContainer"]["Image"] == INFERENCE_IMAGE
        assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "entry_point.py"
        assert {"code/entry_point.py", "code/lib/knn/__init__.py"} <= _tar_names(s3, model["PrimaryContainer"]["ModelDataUrl"])
        variant = requests["CreateEndpointConfig"]["ProductionVariants"][0]
        assert (variant["InstanceType"], variant["InitialInstanceCount"], variant["ModelName"]) == \
            ("ml.m4.xlarge", 1, model["ModelName"])
        assert requests["CreateEndpoint"]["EndpointConfigName"] == requests["CreateEndpointConfig"]["EndpointConfigName"]
        assert deleted == [f"endpoint {predictor.endpoint_name}",
                           f"endpoint config {requests['CreateEndpointConfig']['EndpointConfigName']}",
                           f"model {model['ModelName']}"]
    assert offline == []


# --- the dry run -------------------------------------------------------------------------------------
def test_dry_run_records_every_request_and_sends_nothing(no_aws_credentials, offline):
    printed = []
    settings = cloud(dry_run=True)
    from local_runs.backends import dry_run

    with dry_run.open_backend(settings, ROLE, BUCKET, out=printed.append) as backend:
        dry = backend.extra["dry_run"]
        train_uri = backend.upload(REVIEWS)
        estimator = job.fit(backend, train_uri, {"index-kind": "exact"})
        predictor = job.deploy(estimator, backend)
        assert job.predict(predictor, "My children liked it", n_items=2) == {}
        predictor.delete_model()
        predictor.delete_endpoint(delete_endpoint_config=True)
        local_s3 = dry._local_s3()

        assert dry.operations() == ["CreateTrainingJob", "CreateModel", "CreateEndpointConfig", "CreateEndpoint",
                                    "InvokeEndpoint", "DeleteModel", "DeleteEndpointConfig", "DeleteEndpoint"]
        training = dry.request("CreateTrainingJob")
        assert training["ResourceConfig"] == {"VolumeSizeInGB": 30, "InstanceCount": 1, "InstanceType": "ml.m4.xlarge"}
        assert training["AlgorithmSpecification"]["TrainingImage"] == TRAINING_IMAGE
        assert training["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == train_uri
        assert train_uri == f"s3://{BUCKET}/review-search/data/reviews"
        assert training["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/"
        hyper = {k: _hp(v) for k, v in training["HyperParameters"].items()}
        job_name = training["TrainingJobName"]
        assert hyper == {"index-kind": "exact", "sagemaker_program": "entry_point.py",
                         "sagemaker_submit_directory": f"s3://{BUCKET}/{job_name}/source/sourcedir.tar.gz",
                         "sagemaker_container_log_level": 20, "sagemaker_job_name": job_name,
                         "sagemaker_region": REGION}
        assert {"entry_point.py", "requirements.txt", "knn/__init__.py"} <= \
            _tar_names(local_s3, hyper["sagemaker_submit_directory"])
        assert estimator.model_data == f"s3://{BUCKET}/{job_name}/output/model.tar.gz"

        model = dry.request("CreateModel")
        container = model["PrimaryContainer"]
        assert container["Image"] == INFERENCE_IMAGE and model["ExecutionRoleArn"] == ROLE
        assert container["Environment"]["SAGEMAKER_PROGRAM"] == "entry_point.py"
        assert container["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
        assert container["ModelDataUrl"].startswith(f"s3://{BUCKET}/") and container["ModelDataUrl"].endswith("/model.tar.gz")
        assert {"code/entry_point.py", "code/requirements.txt", "code/lib/knn/__init__.py"} <= \
            _tar_names(local_s3, container["ModelDataUrl"])
        config = dry.request("CreateEndpointConfig")
        assert config["ProductionVariants"] == [{"VariantName": "AllTraffic", "ModelName": model["ModelName"],
                                                 "InitialVariantWeight": 1, "InitialInstanceCount": 1,
                                                 "InstanceType": "ml.m4.xlarge"}]
        endpoint = dry.request("CreateEndpoint")
        assert endpoint["EndpointConfigName"] == config["EndpointConfigName"]
        assert dry.request("InvokeEndpoint")["Body"] == {"query": "My children liked it", "n_items": 2}
        assert dry.request("DeleteModel") == {"ModelName": model["ModelName"]}
        assert dry.request("DeleteEndpointConfig") == {"EndpointConfigName": config["EndpointConfigName"]}
        assert dry.request("DeleteEndpoint") == {"EndpointName": endpoint["EndpointName"]}
        assert dry.uploads == [f"{train_uri}/reviews.csv", hyper["sagemaker_submit_directory"], container["ModelDataUrl"]]
    text = "\n".join(printed)
    assert "[dry run] would send sagemaker CreateTrainingJob:" in text and "nothing was sent to AWS" in text
    assert offline == []


def test_dry_run_cli_cycle_prints_the_requests(no_aws_credentials, offline, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOCAL_RUNS_ROLE", ROLE)
    monkeypatch.setenv("LOCAL_RUNS_BUCKET", BUCKET)
    monkeypatch.setenv("LOCAL_RUNS_REGION", REGION)
    monkeypatch.setenv("LOCAL_RUNS_INSTANCE_TYPE", "ml.c5.xlarge")
    assert main(["--backend", "sagemaker", "--dry-run", "--state-dir", str(tmp_path / "s"), "cycle",
                 "--query", "a bath toy that floats"]) == 0
    out = capsys.readouterr().out
    for operation in ("CreateTrainingJob", "CreateModel", "CreateEndpointConfig", "CreateEndpoint",
                      "InvokeEndpoint", "DeleteModel", "DeleteEndpointConfig", "DeleteEndpoint"):
        assert f"[dry run] would send sagemaker{'-runtime' if operation == 'InvokeEndpoint' else ''} {operation}:" in out
    assert f'"TrainingImage": "{TRAINING_IMAGE}"' in out and '"InstanceType": "ml.c5.xlarge"' in out
    assert f"[dry run] would upload s3://{BUCKET}/review-search/data/reviews/reviews.csv" in out
    assert "[dry run] nothing was sent to AWS." in out and "(no products)" in out
    assert offline == []


def test_dry_run_without_role_or_bucket_uses_marked_placeholders(no_aws_credentials, offline, tmp_path,
                                                                 monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("LOCAL_RUNS_ROLE", "LOCAL_RUNS_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCAL_RUNS_DRY_RUN", "1")
    assert main(["--backend", "sagemaker", "--state-dir", str(tmp_path / "s"), "fit"]) == 0
    out = capsys.readouterr().out
    assert f"no role set: {PLACEHOLDER_ROLE} stands in" in out and f"no bucket set: {PLACEHOLDER_BUCKET}" in out
    assert f'"RoleArn": "{PLACEHOLDER_ROLE}"' in out
    assert "model (dry run, not trained)" in out
    assert not (tmp_path / "s" / "last_model.json").exists()  # a later real deploy must not pick it up
    assert offline == []


def test_dry_run_delete_names_endpoint_config_and_model(no_aws_credentials, offline, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOCAL_RUNS_ROLE", ROLE)
    monkeypatch.setenv("LOCAL_RUNS_BUCKET", BUCKET)
    assert main(["--backend", "sagemaker", "--dry-run", "delete", "--endpoint", "review-search"]) == 0
    out = capsys.readouterr().out
    assert out.index("would send sagemaker DeleteEndpoint:") < out.index("would send sagemaker DeleteEndpointConfig:") \
        < out.index("would send sagemaker DeleteModel:")
    assert "deleted endpoint review-search, endpoint config review-search, model review-search" in out
    assert "was not created in this dry run; answered as if it existed" in out
    assert offline == []


def test_dry_run_refuses_what_it_does_not_model(no_aws_credentials, offline):
    from local_runs.backends import dry_run

    with dry_run.open_backend(cloud(dry_run=True), ROLE, BUCKET, out=lambda _: None) as backend:
        with pytest.raises(dry_run.DryRunError, match="does not send sts:GetCallerIdentity"):
            backend.session.boto_session.client("sts").get_caller_identity()
        with pytest.raises(dry_run.DryRunError, match="blocked a request to"):
            backend.session.boto_session.client("s3", endpoint_url="https://s3.amazonaws.com").list_buckets()
    assert offline == []


@pytest.mark.parametrize("backend", ["sim", "docker"])
def test_dry_run_is_for_the_sagemaker_backend_only(backend, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--backend", backend, "--dry-run", "endpoints"]) == 1
    assert "applies to the sagemaker backend only" in capsys.readouterr().err


def test_dry_run_never_loads_the_users_credentials(monkeypatch, offline):
    from local_runs import s3_server
    from local_runs.backends import dry_run

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUSERSOWNKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "users-own-secret")
    with dry_run.open_backend(cloud(dry_run=True), ROLE, BUCKET, out=lambda _: None) as backend:
        credentials = backend.session.boto_session.get_credentials()
        assert credentials.access_key == s3_server.DUMMY_ACCESS_KEY_ID
        assert backend.session.sagemaker_client._request_signer._credentials.access_key == s3_server.DUMMY_ACCESS_KEY_ID
    assert offline == []


# --- batch transform ---------------------------------------------------------------------------------
def test_dry_run_transform_sends_create_model_and_create_transform_job(no_aws_credentials, offline, monkeypatch):
    printed = []
    import sagemaker.session

    from local_runs.backends import dry_run

    def no_polling(*args, **kwargs):
        raise AssertionError("the dry run polled a job (the SDK sleeps 10 s before its first look)")

    monkeypatch.setattr(sagemaker.session, "_wait_until", no_polling)

    model_data = f"s3://{BUCKET}/review-search-2026-11-30-12-00-00-000/output/model.tar.gz"
    input_uri = f"s3://{BUCKET}/review-search/transform/run/input/queries"
    output_uri = f"s3://{BUCKET}/review-search/transform/run/output"
    with dry_run.open_backend(cloud(dry_run=True), ROLE, BUCKET, out=printed.append) as backend:
        dry = backend.extra["dry_run"]
        transformer = job.transform(backend, model_data, input_uri, output_uri, instance_count=2,
                                    strategy="SingleRecord", max_payload=1, max_concurrent_transforms=2)
        assert dry.operations() == ["CreateModel", "CreateTransformJob"]
        model = dry.request("CreateModel")
        assert model["PrimaryContainer"]["Image"] == INFERENCE_IMAGE
        assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "entry_point.py"
        request = dry.request("CreateTransformJob")
        assert request["TransformJobName"] == transformer.latest_transform_job.name
        assert request["ModelName"] == model["ModelName"]
        assert request["TransformInput"] == {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": "application/jsonlines", "SplitType": "Line"}
        assert request["TransformOutput"] == {"S3OutputPath": output_uri, "Accept": "application/jsonlines",
                                              "AssembleWith": "Line"}
        assert request["TransformResources"] == {"InstanceCount": 2, "InstanceType": "ml.m4.xlarge"}
        assert (request["BatchStrategy"], request["MaxPayloadInMB"], request["MaxConcurrentTransforms"]) == \
            ("SingleRecord", 1, 2)
        description = backend.session.sagemaker_client.describe_transform_job(
            TransformJobName=request["TransformJobName"])
        assert description["TransformJobStatus"] == "Completed"
    assert "[dry run] would send sagemaker CreateTransformJob:" in "\n".join(printed)
    assert offline == []


def test_dry_run_cli_transform_prints_the_request_and_writes_nothing(no_aws_credentials, offline, tmp_path,
                                                                     monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOCAL_RUNS_ROLE", ROLE)
    monkeypatch.setenv("LOCAL_RUNS_BUCKET", BUCKET)
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"query": "a kite for windy days"}\n{"query": "a bath toy that floats", "n_items": 5}\n')
    results = tmp_path / "results.jsonl"
    assert main(["--backend", "sagemaker", "--dry-run", "--state-dir", str(tmp_path / "s"), "transform", str(queries),
                 "--out", str(results), "--model-data", f"s3://{BUCKET}/m/output/model.tar.gz"]) == 0
    out = capsys.readouterr().out
    assert "[dry run] would send sagemaker CreateTransformJob:" in out and '"SplitType": "Line"' in out
    assert f"[dry run] would upload s3://{BUCKET}/review-search/transform/" in out and "queries.jsonl" in out
    assert "(dry run, nothing ran): no results" in out and not results.exists()
    assert offline == []
