"""The real entry point through the sim backend, with the user's unchanged SDK code (local_runs/job.py).

Fit on the fixtures, deploy, query through the SDK predictor and through plain boto3, bad requests,
a broken reviews file, and nothing left running afterwards. One cycle on a toys-10k subset.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time

import boto3
import pandas as pd
import psutil
import pytest
from botocore.exceptions import ClientError

from conftest import FIXTURES, ROOT, require_toys_10k
from local_runs import job
from local_runs.backends import open_backend
from local_runs.config import load_settings

pytestmark = pytest.mark.integration

QUERIES = json.loads((FIXTURES / "queries.json").read_text())


def children(pid=None, settle=5.0):
    """Live descendants of this process (zombies waiting to be reaped do not count), after up to
    `settle` seconds for stopped ones to go."""
    deadline = time.monotonic() + settle
    while True:
        live = set()
        for p in psutil.Process(pid or os.getpid()).children(recursive=True):
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    live.add(p.pid)
            except psutil.NoSuchProcess:
                pass
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.1)


def listening_ports(pids):
    ports = set()
    for pid in pids:
        try:
            ports |= {c.laddr.port for c in psutil.Process(pid).net_connections() if c.status == "LISTEN"}
        except psutil.NoSuchProcess:
            pass
    return ports


@pytest.fixture(scope="module")
def deployed(backend):
    before = children()
    estimator = job.fit(backend, backend.upload(FIXTURES / "reviews.csv"))
    predictor = job.deploy(estimator, backend)
    yield estimator, predictor
    predictor.delete_model()
    predictor.delete_endpoint()
    assert children() - before == set()


def s3_keys(backend):
    client = backend.session.boto_session.client("s3", endpoint_url=backend.extra["s3_url"])
    return client, [o["Key"] for o in client.list_objects_v2(Bucket=backend.bucket).get("Contents", [])]


def test_artifacts_in_s3(backend, deployed):
    estimator, _ = deployed
    client, keys = s3_keys(backend)
    job_name = estimator.latest_training_job.name
    assert f"{job_name}/source/sourcedir.tar.gz" in keys
    assert f"{job_name}/output/model.tar.gz" in keys
    body = client.get_object(Bucket=backend.bucket, Key=f"{job_name}/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        names = set(tar.getnames())
    assert {"manifest.json", "vectors.npy", "catalog.parquet", "encoder/model.onnx"} <= names
    # deploy repacked the model with the code: code/entry_point.py and knn under code/lib
    # (moto keeps one store per process, so other tests' uploads may be listed too: */output/model.tar.gz)
    repacked = [k for k in keys if k.endswith("/model.tar.gz") and "/output/" not in k]
    assert repacked, keys
    body = client.get_object(Bucket=backend.bucket, Key=repacked[0])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        names = set(tar.getnames())
    assert "code/entry_point.py" in names and "code/lib/knn/search.py" in names and "manifest.json" in names


@pytest.mark.parametrize("case", [q for q in QUERIES if q["kind"] == "exact"][:2] + [QUERIES[0]],
                         ids=lambda c: c["query"][:30])
def test_known_query_brings_its_product_first(deployed, case):
    _, predictor = deployed
    response = job.predict(predictor, case["query"], n_items=3)
    assert list(response) == ["pred0", "pred1", "pred2"]
    assert response["pred0"]["product_id"] == case["product_id"]
    assert set(response["pred0"]) >= {"review_id", "product_id", "product_title", "star_rating", "review_headline",
                                      "review_body", "product_search_score", "matched_sentence"}


def test_boto3_runtime_path_by_name(backend, deployed):
    _, predictor = deployed
    env = {**os.environ, "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": backend.session.runtime_url,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    code = (
        "import boto3, json, sys\n"
        "rt = boto3.client('sagemaker-runtime')\n"
        "r = rt.invoke_endpoint(EndpointName=sys.argv[1], ContentType='application/json',\n"
        "    Body=json.dumps({'query': sys.argv[2], 'n_items': 1}))\n"
        "print(json.loads(r['Body'].read())['pred0']['product_id'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code, predictor.endpoint_name, QUERIES[0]["query"]],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == QUERIES[0]["product_id"]


@pytest.mark.parametrize(
    "body, content_type, accept, status, fragment",
    [
        (b'{"query": ""}', "application/json", "application/json", 400, "no letters or digits"),
        (b"{not json", "application/json", "application/json", 400, "not valid JSON"),
        (b'{"query": "kite", "n_items": 0}', "application/json", "application/json", 400, "n_items"),
        (b"query=kite", "text/plain", "application/json", 415, "Content-Type"),
        (b'{"query": "kite"}', "application/json", "text/csv", 406, "Accept"),
    ],
)
def test_bad_requests_raise_model_error_and_endpoint_keeps_serving(backend, deployed, body, content_type, accept,
                                                                    status, fragment):
    _, predictor = deployed
    runtime = backend.session.sagemaker_runtime_client
    with pytest.raises(ClientError) as info:
        runtime.invoke_endpoint(EndpointName=predictor.endpoint_name, Body=body, ContentType=content_type,
                                Accept=accept)
    error = info.value.response
    assert error["Error"]["Code"] == "ModelError"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error["OriginalStatusCode"] == status
    assert fragment in json.loads(error["OriginalMessage"])["error"]["message"]
    assert job.predict(predictor, QUERIES[0]["query"], n_items=1)["pred0"]["product_id"] == QUERIES[0]["product_id"]


def test_broken_reviews_file_fails_training_with_reason(backend, tmp_path):
    broken = tmp_path / "broken.csv"
    broken.write_text("review_id,product_id,star_rating,review_body\nR1,P1,7,Nice\n")
    from sagemaker.exceptions import UnexpectedStatusException

    _, before = s3_keys(backend)
    with pytest.raises(UnexpectedStatusException) as info:
        job.fit(backend, backend.upload(broken, prefix="broken"))
    assert "star_rating '7'" in str(info.value) and "whole numbers from 1 to 5" in str(info.value)
    _, after = s3_keys(backend)
    new_models = [k for k in set(after) - set(before) if k.endswith("model.tar.gz")]
    assert new_models == []


def test_cli_cycle_leaves_nothing_running(tmp_path):
    before = children()
    out = subprocess.run([sys.executable, "-m", "local_runs", "--state-dir", str(tmp_path / "state"), "cycle",
                          "--query", QUERIES[0]["query"]], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Query:" in out.stdout and "cycle: upload" in out.stdout
    title = pd.read_csv(FIXTURES / "reviews.csv").set_index("product_id").loc[QUERIES[0]["product_id"], "product_title"]
    title = title.iloc[0] if hasattr(title, "iloc") else title
    first_row = out.stdout.split("matched sentence", 1)[1].splitlines()[1]
    assert title[:30] in first_row
    assert children() == before
    assert not list((tmp_path / "state").glob("endpoints/*.json"))


def test_cli_step_by_step_across_processes(tmp_path):
    state = str(tmp_path / "state")

    def cli(*args):
        result = subprocess.run([sys.executable, "-m", "local_runs", "--state-dir", state, *args],
                                capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    try:
        assert "model: s3://" in cli("fit")
        assert "in service" in cli("deploy", "--name", "steps")
        listing = cli("endpoints")
        assert "steps" in listing and "InService" in listing
        response = json.loads(cli("predict", QUERIES[0]["query"], "--endpoint", "steps", "--json", "--n-items", "2"))
        assert response["pred0"]["product_id"] == QUERIES[0]["product_id"] and len(response) == 2
        assert "deleted" in cli("delete", "--endpoint", "steps")
        assert "no endpoints" in cli("endpoints")
    finally:
        subprocess.run([sys.executable, "-m", "local_runs", "--state-dir", state, "shutdown"], cwd=ROOT,
                       capture_output=True, timeout=60)


def test_toys_10k_subset_cycle(tmp_path_factory):
    path = require_toys_10k()
    # the first 600 real reviews: real text through the whole sim cycle (the toys-10k model itself is tested on knn)
    reviews = pd.read_csv(path, dtype=str, keep_default_na=False).head(600)
    subset = tmp_path_factory.mktemp("toys") / "toys-600.csv"
    reviews.to_csv(subset, index=False)
    settings = load_settings(cli={"backend": "sim", "state_dir": str(tmp_path_factory.mktemp("state"))}, environ={})
    from knn.sentences import split_sentences

    # a long sentence that occurs in exactly one review
    target = None
    for _, row in reviews.sample(frac=1.0, random_state=3).iterrows():
        for sentence in split_sentences(row["review_body"]):
            if len(sentence.split()) >= 10 and (reviews["review_body"].str.contains(sentence, regex=False)).sum() == 1:
                target = (sentence, row["product_id"])
                break
        if target:
            break
    with open_backend(settings) as backend:
        estimator = job.fit(backend, backend.upload(subset))
        predictor = job.deploy(estimator, backend)
        try:
            response = job.predict(predictor, target[0], n_items=3)
        finally:
            predictor.delete_model()
            predictor.delete_endpoint()
    assert response["pred0"]["product_id"] == target[1]
    assert response["pred0"]["product_search_score"] >= 0.99
