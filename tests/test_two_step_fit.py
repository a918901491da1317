"""The two-step fit of a big catalogue: embed (a processing job on N instances) then index (the training job).

* knn level: split -> embed each part -> join gives the one-step model's answers (fixtures; the first
  2,500 toys-10k reviews with 200 of their headlines as queries, when ../shared/data/toys-10k is here);
* the sagemaker dry run: CreateProcessingJob with InstanceCount N and ShardedByS3Key over the part
  files, then CreateTrainingJob whose channel `embedded` is that job's output;
* sim (integration): `local-runs`-style two-step fit through the unchanged SDK, same answers as the
  one-step fit; a bad row names part, row and column; more instances than parts; a host killed
  mid-job fails the job naming it and uploads nothing.
"""
from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import threading
import time
from pathlib import Path

import pytest

from conftest import FIXTURES, ROOT, require_toys_10k

REVIEWS = FIXTURES / "reviews.csv"
QUERIES = [q["query"] for q in json.loads((FIXTURES / "queries.json").read_text())]


def _answers(search, queries, n_items=5):
    return [search.search(q, n_items=n_items) for q in queries]


def assert_same_answers(one, two, queries, n_items=5):
    """Equal product and review ids, in order; scores equal to 1e-5."""
    for query, a, b in zip(queries, _answers(one, queries, n_items), _answers(two, queries, n_items)):
        assert [(r["product_id"], r["review_id"]) for r in a] == [(r["product_id"], r["review_id"]) for r in b], query
        for x, y in zip(a, b):
            assert abs(x["product_search_score"] - y["product_search_score"]) <= 1e-5, query


def _two_step_model_dir(reviews, tmp_path, parts, index_kind="auto", threads=1):
    from knn.encoder import load_encoder
    from knn.shards import build_model_dir_from_shards, embed_part, encoder_path, split_reviews_file

    files = split_reviews_file(reviews, tmp_path / "parts", parts)
    encoder = load_encoder(encoder_path(), threads=threads, verify=False)
    for part in files:
        embed_part(part, tmp_path / "embedded", encoder)
    build_model_dir_from_shards(tmp_path / "embedded", tmp_path / "two", index_kind=index_kind)
    return tmp_path / "two"


# --- knn level ------------------------------------------------------------------------------------
def test_split_keeps_every_review_in_order(tmp_path):
    import pandas as pd

    from knn.reviews import read_reviews
    from knn.shards import split_reviews_file

    files = split_reviews_file(REVIEWS, tmp_path, 4)
    assert [f.name for f in files] == [f"part-0000{i}-of-00004.csv" for i in range(4)]
    joined = pd.concat([read_reviews(f) for f in files], ignore_index=True)
    pd.testing.assert_frame_equal(joined, read_reviews(REVIEWS))


def test_more_parts_than_reviews_gives_header_only_parts(tmp_path):
    from knn.shards import split_reviews_file

    small = tmp_path / "small.csv"
    small.write_text("\n".join(REVIEWS.read_text().splitlines()[:3]) + "\n")
    files = split_reviews_file(small, tmp_path / "parts", 4)
    assert sum(len(f.read_text().splitlines()) - 1 for f in files) == 2


def test_two_steps_answer_as_one_step_on_the_fixture_queries(fixture_search, tmp_path):
    from knn.model_dir import load_model_dir

    assert_same_answers(fixture_search, load_model_dir(_two_step_model_dir(REVIEWS, tmp_path, 3)), QUERIES)


def test_a_product_split_over_parts_keeps_its_first_reviews_title(tmp_path):
    """The joined titles are the one-step fit's: one per product, in product_id order, each its first
    review's title, also when a later review (in a later part) names the product differently."""
    import csv

    import numpy as np
    import pandas as pd

    from knn.encoder import load_encoder
    from knn.reviews import product_titles, read_reviews
    from knn.shards import embed_part, encoder_path, read_shards, split_reviews_file

    with open(REVIEWS, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    product = rows[12]["product_id"]
    later = [i for i, row in enumerate(rows) if row["product_id"] == product and i > 12]
    assert later, "the fixture has no product with several reviews"
    rows[later[-1]]["product_title"] = "A different title for the same product"
    reviews = tmp_path / "reviews.csv"
    with open(reviews, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    files = split_reviews_file(reviews, tmp_path / "parts", 20)  # ~6 reviews a part: the product spans two
    encoder = load_encoder(encoder_path(), threads=1, verify=False)
    for part in files:
        embed_part(part, tmp_path / "embedded", encoder)
    *_, titles, title_vectors, _ = read_shards(tmp_path / "embedded")
    expected = product_titles(read_reviews(reviews))
    pd.testing.assert_frame_equal(titles, expected)
    assert expected.loc[expected["product_id"] == product, "product_title"].item() == rows[12]["product_title"]
    np.testing.assert_allclose(title_vectors, encoder.encode(expected["product_title"].tolist()), atol=1e-5)


def test_a_missing_or_unfinished_part_fails_the_index_step_naming_it(tmp_path):
    import shutil

    from knn.encoder import load_encoder
    from knn.shards import ShardError, build_model_dir_from_shards, embed_part, encoder_path, split_reviews_file

    files = split_reviews_file(REVIEWS, tmp_path / "parts", 3)
    encoder = load_encoder(encoder_path(), threads=1, verify=False)
    for part in files:
        embed_part(part, tmp_path / "embedded", encoder)
    (tmp_path / "embedded" / "part-00001-of-00003" / "shard.json").unlink()
    with pytest.raises(ShardError, match="part-00001-of-00003 have no shard.json"):
        build_model_dir_from_shards(tmp_path / "embedded", tmp_path / "model")
    shutil.rmtree(tmp_path / "embedded" / "part-00001-of-00003")
    with pytest.raises(ShardError, match="part-00001-of-00003 of 3 are missing"):
        build_model_dir_from_shards(tmp_path / "embedded", tmp_path / "model")


def test_a_bad_row_names_the_part_the_row_and_the_column(tmp_path):
    from knn.errors import ReviewDataError
    from knn.shards import embed_part, split_reviews_file

    files = split_reviews_file(REVIEWS, tmp_path / "parts", 3)
    import pandas as pd

    frame = pd.read_csv(files[2], dtype=str, keep_default_na=False)
    frame.loc[4, "star_rating"] = "seven"  # data row 5
    frame.to_csv(files[2], index=False)
    with pytest.raises(ReviewDataError, match=r"part-00002-of-00003.csv: data row 5 .*star_rating 'seven'"):
        embed_part(files[2], tmp_path / "embedded", encoder=None)


@pytest.mark.integration
def test_two_steps_answer_as_one_step_on_150_toys_queries(tmp_path):
    """The first 700 toys-10k reviews (graph indexes, as bigger catalogues use), one step against four parts."""
    import pandas as pd

    from knn.build import build_model_dir
    from knn.model_dir import load_model_dir

    reviews = pd.read_csv(require_toys_10k(), dtype=str, keep_default_na=False).head(700)
    subset = tmp_path / "toys-700.csv"
    reviews.to_csv(subset, index=False)
    queries = [h for h in reviews["review_headline"] if len(h.split()) >= 3][:150]
    assert len(queries) == 150
    figures = build_model_dir(subset, tmp_path / "one", index_kind="graph", threads=2)
    assert figures["index_kind"] == "graph" and figures["sentences"] > 1500
    two = load_model_dir(_two_step_model_dir(subset, tmp_path, 4, index_kind="graph", threads=2))
    assert_same_answers(load_model_dir(tmp_path / "one"), two, queries)


# --- the sagemaker dry run ------------------------------------------------------------------------
def test_dry_run_two_step_fit_sends_a_sharded_processing_job_then_training_on_its_output(tmp_path, monkeypatch,
                                                                                         capsys):
    from test_backend_sagemaker import BUCKET, REGION, ROLE, TRAINING_IMAGE

    from local_runs.cli import main

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOCAL_RUNS_ROLE", ROLE)
    monkeypatch.setenv("LOCAL_RUNS_BUCKET", BUCKET)
    monkeypatch.setenv("LOCAL_RUNS_REGION", REGION)
    from local_runs.backends import dry_run

    opened = []
    real_open = dry_run.open_backend

    def keep(*args, **kwargs):
        backend = real_open(*args, **kwargs)
        opened.append(backend)
        return backend

    monkeypatch.setattr(dry_run, "open_backend", keep)
    assert main(["--backend", "sagemaker", "--dry-run", "--state-dir", str(tmp_path / "s"), "fit",
                 "--instances", "4", "--index-kind", "graph"]) == 0
    dry = opened[0].extra["dry_run"]
    assert dry.operations() == ["CreateProcessingJob", "CreateTrainingJob"]
    processing = dry.request("CreateProcessingJob")
    cluster = processing["ProcessingResources"]["ClusterConfig"]
    assert cluster["InstanceCount"] == 4 and cluster["InstanceType"] == "ml.m4.xlarge"
    assert processing["AppSpecification"]["ImageUri"] == TRAINING_IMAGE
    inputs = {i["InputName"]: i["S3Input"] for i in processing["ProcessingInputs"]}
    parts_uri = f"s3://{BUCKET}/review-search/data/reviews-4-parts"
    assert inputs["reviews"]["S3Uri"] == parts_uri
    assert inputs["reviews"]["S3DataDistributionType"] == "ShardedByS3Key"
    assert inputs["reviews"]["LocalPath"] == "/opt/ml/processing/input/reviews"
    assert inputs["code"]["S3DataDistributionType"] == "FullyReplicated"
    assert "--share-by-host" not in processing["AppSpecification"]["ContainerArguments"]
    output = processing["ProcessingOutputConfig"]["Outputs"][0]
    assert output["S3Output"]["LocalPath"] == "/opt/ml/processing/output/embedded"
    assert output["S3Output"]["S3UploadMode"] == "EndOfJob"
    assert sorted(u for u in dry.uploads if u.startswith(parts_uri)) == [
        f"{parts_uri}/part-0000{i}-of-00004.csv" for i in range(4)]

    training = dry.request("CreateTrainingJob")
    assert training["ResourceConfig"]["InstanceCount"] == 1
    [channel] = training["InputDataConfig"]
    assert channel["ChannelName"] == "embedded"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == output["S3Output"]["S3Uri"]
    assert json.loads(training["HyperParameters"]["index-kind"]) == "graph"
    code = inputs["code"]["S3Uri"]  # the embed job's sourcedir.tar.gz (entry/ + knn/) and runproc.sh, uploaded
    assert code.endswith("/source/sourcedir.tar.gz") and code in dry.uploads
    assert processing["AppSpecification"]["ContainerEntrypoint"] == [
        "/bin/bash", "/opt/ml/processing/input/entrypoint/runproc.sh"]
    assert "nothing was sent to AWS" in capsys.readouterr().out


def test_docker_backend_has_each_host_take_its_share():
    from local_runs.backends.docker import DockerBackend
    from local_runs.backends.sim import SimBackend

    assert DockerBackend.shards_inputs is False and SimBackend.shards_inputs is True


def test_embed_share_by_host_takes_parts_by_host_index(tmp_path, monkeypatch):
    import importlib

    base = tmp_path / "opt-ml"
    (base / "config").mkdir(parents=True)
    (base / "config" / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-2", "hosts": [
        "algo-1", "algo-2", "algo-3"]}))
    parts = tmp_path / "in"
    parts.mkdir()
    for i in range(5):
        (parts / f"part-{i:05d}-of-00005.csv").write_text("x")
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    import entry.embed as embed

    embed = importlib.reload(embed)
    taken = []
    monkeypatch.setattr("knn.shards.embed_part", lambda part, out, encoder, batch_size=64: taken.append(Path(part).name)
                        or {"sentences": 0, "headlines": 0, "reviews": 0, "embed_s": 0.0, "part": Path(part).name})
    monkeypatch.setattr("knn.encoder.load_encoder", lambda *a, **k: None)
    monkeypatch.setattr("knn.shards.encoder_path", lambda *a, **k: tmp_path)
    embed.run(["--input", str(parts), "--output", str(tmp_path / "out"), "--share-by-host"])
    assert taken == ["part-00001-of-00005.csv", "part-00004-of-00005.csv"]


# --- sim: the same job code through the unchanged SDK ---------------------------------------------
def _upload_parts(backend, reviews, parts, tmp_path, name):
    from knn.shards import split_reviews_file

    split_reviews_file(reviews, tmp_path / name, parts)
    return backend.upload_parts(tmp_path / name, name)


def _load_model(backend, model_data, tmp_path):
    from knn.model_dir import load_model_dir

    bucket, _, key = model_data[len("s3://"):].partition("/")
    body = backend.session.s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    target = tmp_path / "model"
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        tar.extractall(target, filter="data")
    return load_model_dir(target)


def _keys(backend, uri):
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    listing = backend.session.s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


@pytest.mark.integration
def test_sim_two_step_fit_answers_as_one_step(backend, fixture_search, tmp_path):
    from local_runs import job

    parts_uri = _upload_parts(backend, REVIEWS, 3, tmp_path, "fixture-3-parts")
    processor = job.embed(backend, parts_uri, 3)
    desc = processor.latest_job.describe()
    assert desc["ProcessingJobStatus"] == "Completed"
    assert desc["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 3
    embedded = job.embedded_uri(processor)
    keys = _keys(backend, embedded)
    assert sum(k.endswith("/shard.json") for k in keys) == 3
    assert sum("/host-" in k for k in keys) == 3  # each host's figures (sentences/s)
    estimator = job.fit_embedded(backend, embedded, {"index-kind": "exact"})
    assert_same_answers(fixture_search, _load_model(backend, estimator.model_data, tmp_path), QUERIES)


@pytest.mark.integration
def test_sim_more_instances_than_parts_idle_hosts_finish_and_the_model_is_right(backend, fixture_search, tmp_path):
    from local_runs import job

    parts_uri = _upload_parts(backend, REVIEWS, 2, tmp_path, "fixture-2-parts")
    processor = job.embed(backend, parts_uri, 4)
    embedded = job.embedded_uri(processor)
    assert sum("/host-" in k for k in _keys(backend, embedded)) == 2  # hosts 3 and 4 had nothing: no output
    estimator = job.fit_embedded(backend, embedded, {"index-kind": "exact"})
    assert_same_answers(fixture_search, _load_model(backend, estimator.model_data, tmp_path), QUERIES[:5])


@pytest.mark.integration
def test_sim_bad_row_fails_the_embed_job_naming_part_row_and_column(backend, tmp_path):
    import pandas as pd
    from sagemaker.exceptions import UnexpectedStatusException

    from knn.shards import split_reviews_file
    from local_runs import job

    files = split_reviews_file(REVIEWS, tmp_path / "bad-parts", 2)
    frame = pd.read_csv(files[1], dtype=str, keep_default_na=False)
    frame.loc[6, "star_rating"] = "seven"  # data row 7
    frame.to_csv(files[1], index=False)
    parts_uri = backend.upload_parts(tmp_path / "bad-parts", "bad-parts")
    processor = job.make_embed_processor(backend, 2)
    real = job.make_embed_processor
    try:
        job.make_embed_processor = lambda *_a, **_k: processor
        with pytest.raises(UnexpectedStatusException) as caught:
            job.embed(backend, parts_uri, 2)
    finally:
        job.make_embed_processor = real
    desc = processor.latest_job.describe()
    assert desc["ProcessingJobStatus"] == "Failed"
    for text in (str(caught.value), desc["FailureReason"], desc["ExitMessage"]):
        assert "part-00001-of-00002.csv: data row 7" in text and "star_rating 'seven'" in text
    assert _keys(backend, processor.latest_job.outputs[0].destination) == []


@pytest.mark.integration
def test_sim_host_killed_mid_job_fails_naming_it_and_uploads_nothing(backend, tmp_path):
    import psutil

    from local_runs import job

    parts_uri = _upload_parts(backend, REVIEWS, 2, tmp_path, "kill-parts")
    processor = job.make_embed_processor(backend, 2)
    real = job.make_embed_processor
    try:
        job.make_embed_processor = lambda *_a, **_k: processor
        job.embed(backend, parts_uri, 2, wait=False)
    finally:
        job.make_embed_processor = real
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:  # host 2's embed.py, once it runs
        for proc in psutil.Process().children(recursive=True):
            try:
                if "embed.py" in " ".join(proc.cmdline()) and "algo-2-" in (proc.cwd() + " ".join(proc.cmdline())
                                                                             + str(proc.environ().get("SAGEMAKER_BASE_DIR"))):
                    victim = proc
            except psutil.Error:
                continue
        time.sleep(0.2)
    assert victim is not None, "host 2's embed.py never started"
    os.kill(victim.pid, signal.SIGKILL)
    from sagemaker.exceptions import UnexpectedStatusException

    with pytest.raises(UnexpectedStatusException):
        processor.latest_job.wait(logs=False)
    desc = processor.latest_job.describe()
    assert desc["ProcessingJobStatus"] == "Failed"
    assert "algo-2-" in desc["FailureReason"] and "SIGKILL" in desc["FailureReason"]
    assert _keys(backend, processor.latest_job.outputs[0].destination) == []
