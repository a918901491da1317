"""The user script (local_runs/job.py) is the same in all three backends: only the flag differs.

Every SageMaker SDK entry point the script reaches is spied on -- the PyTorch estimator and model,
fit, deploy (the estimator's and the model's), predict, delete, and the session calls beneath them
(upload_data, train, create_model, endpoint_from_production_variants) -- and the recorded calls are
compared across backends after replacing only what each backend supplies: its session, its role,
its instance type, its bucket, and the timestamped names the SDK generates.

* fast (default): the estimator and model job.py builds, for each backend;
* integration: `local-runs --backend X cycle` for each X -- sim for real (the real model is trained
  and served), docker through the SDK's local mode with the `docker` command faked, sagemaker as a
  dry run (requests answered locally, nothing sent).
"""
from __future__ import annotations

import functools
import re
import sys

import pytest

import fake_docker
from conftest import ROOT
from local_runs import job
from local_runs.backends import DUMMY_ROLE, LOCAL_BUCKET, open_backend
from local_runs.config import Settings

ROLE = "arn:aws:iam::210987654321:role/SageMakerExecution"
BUCKET = "review-search-tests"
BACKENDS = ("sim", "docker", "sagemaker")
# Below the SageMaker client: what runs the jobs locally (e.g. the local-mode artifact upload).
RUNTIMES = ("sagemaker.local", "local_runs.sim")
NAME = re.compile(r"(review-search|pytorch-(training|inference))-\d{4}(-\d{2}){5}-\d{3}")


def _inside_a_runtime() -> bool:
    """Called by a backend's runtime (the SDK's local mode, sim) rather than by the script's path."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(RUNTIMES):
            return True
        frame = frame.f_back
    return False


def _snapshot(value):
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_snapshot(v) for v in value]
    return value


def _spy(monkeypatch, calls: list):
    from sagemaker.base_predictor import Predictor
    from sagemaker.estimator import EstimatorBase
    from sagemaker.model import Model
    from sagemaker.pytorch import PyTorch, PyTorchModel
    from sagemaker.session import Session

    def wrap(cls, name):
        original = getattr(cls, name)

        @functools.wraps(original)
        def wrapper(self, *args, **kwargs):
            if not _inside_a_runtime():  # a snapshot: the local runtimes edit some of these dicts later
                calls.append((f"{cls.__name__}.{name}", _snapshot(args), _snapshot(kwargs)))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    for cls, name in [(PyTorch, "__init__"), (PyTorchModel, "__init__"), (EstimatorBase, "fit"),
                      (EstimatorBase, "deploy"), (Model, "deploy"), (Predictor, "predict"),
                      (Predictor, "delete_model"), (Predictor, "delete_endpoint"), (Session, "upload_data"),
                      (Session, "train"), (Session, "create_model"), (Session, "endpoint_from_production_variants")]:
        wrap(cls, name)


def _normalize(value, backend):
    """Replace what the backend (not the script) supplies, and the SDK's generated names."""
    from sagemaker.session import Session

    if isinstance(value, Session):
        return "<session>"
    if isinstance(value, dict):
        return {k: _normalize(v, backend) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalize(v, backend) for v in value]
    if isinstance(value, str):
        if value in (backend.role, DUMMY_ROLE):
            return "<role>"
        if value == backend.instance_type:
            return "<instance type>"
        value = value.replace(f"s3://{backend.bucket}/", "s3://<bucket>/").replace(backend.bucket, "<bucket>")
        return NAME.sub("<name>", value)
    if value is None or isinstance(value, (int, float, bool)):
        return value
    return f"<{type(value).__name__}>"


def _difference(a, b, path="calls"):
    """Where two recordings first differ, readably (None if equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"{path}[{key!r}]: only in {'first' if key in a else 'second'}"
            found = _difference(a[key], b[key], f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None if len(a) == len(b) else f"{path}: {len(a)} vs {len(b)} items"
    return None if a == b else f"{path}: {a!r} != {b!r}"


def _open(name, tmp_path, monkeypatch):
    if name == "docker":
        log_dir, s3, _ = fake_docker.activate(tmp_path / "docker", monkeypatch, LOCAL_BUCKET)
        settings = Settings(backend="docker", docker_s3_url=s3.url, state_dir=str(tmp_path / "docker-state"))
        backend = open_backend(settings)
        backend.closers.insert(0, s3.stop)
        return backend
    if name == "sagemaker":
        settings = Settings(backend="sagemaker", role=ROLE, bucket=BUCKET, dry_run=True)
        return open_backend(settings)
    return open_backend(Settings(backend="sim", state_dir=str(tmp_path / "sim-state")))


def test_job_builds_the_same_estimator_and_model_for_every_backend(tmp_path, monkeypatch):
    seen = {}
    for name in BACKENDS:
        calls = []
        with monkeypatch.context() as patch:
            _spy(patch, calls)
            with _open(name, tmp_path, patch) as backend:
                estimator = job.make_estimator(backend, {"index-kind": "exact"})
                model = job.make_model(backend, f"s3://{backend.bucket}/some-job/output/model.tar.gz")
                assert estimator.sagemaker_session is backend.session is model.sagemaker_session
                assert estimator.instance_type == backend.instance_type
                seen[name] = [(label, _normalize(args, backend), _normalize(kwargs, backend))
                              for label, args, kwargs in calls]
                raw = {label: kwargs for label, args, kwargs in calls}
                # what differs is exactly what the backend hands in
                assert raw["PyTorch.__init__"]["sagemaker_session"] is backend.session
                assert raw["PyTorch.__init__"]["role"] == backend.role
                assert raw["PyTorch.__init__"]["instance_type"] == backend.instance_type
    assert [c[0] for c in seen["sim"]] == ["PyTorch.__init__", "PyTorchModel.__init__"]
    assert _difference(seen["sim"], seen["docker"]) is None and _difference(seen["sim"], seen["sagemaker"]) is None
    kwargs = seen["sim"][0][2]
    assert kwargs["entry_point"] == "entry_point.py" and kwargs["source_dir"] == str(ROOT / "entry")
    assert kwargs["dependencies"] == [str(ROOT / "knn")]
    assert (kwargs["framework_version"], kwargs["py_version"]) == ("2.5", "py311")


@pytest.mark.integration
def test_cycle_command_differs_only_in_the_backend_flag(tmp_path, monkeypatch, capsys):
    """`local-runs --backend X cycle`: the same SDK calls, in the same order, with the same arguments."""
    from local_runs.cli import main

    log_dir, docker_s3, _ = fake_docker.activate(tmp_path / "docker", monkeypatch, LOCAL_BUCKET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOCAL_RUNS_DOCKER_S3_URL", docker_s3.url)
    monkeypatch.setenv("LOCAL_RUNS_ROLE", ROLE)
    monkeypatch.setenv("LOCAL_RUNS_BUCKET", BUCKET)
    seen, outputs = {}, {}
    try:
        for name in BACKENDS:
            calls = []
            with monkeypatch.context() as patch:
                _spy(patch, calls)
                if name == "sagemaker":
                    patch.setenv("LOCAL_RUNS_DRY_RUN", "1")  # nothing may reach AWS from a test
                argv = ["--backend", name, "--state-dir", str(tmp_path / f"{name}-state"), "cycle",
                        "--query", "a bath toy that floats", "--n-items", "2"]
                assert main(argv) == 0, capsys.readouterr()
            outputs[name] = capsys.readouterr().out
            settings = Settings(backend=name, role=ROLE if name == "sagemaker" else "",
                                bucket=BUCKET if name == "sagemaker" else "")
            backend = type("B", (), {"role": settings.role or DUMMY_ROLE, "bucket": settings.bucket or LOCAL_BUCKET,
                                     "instance_type": settings.resolved_instance_type})
            seen[name] = [(label, _normalize(args, backend), _normalize(kwargs, backend)) for label, args, kwargs in calls]
    finally:
        docker_s3.stop()

    labels = [c[0] for c in seen["sim"]]
    assert labels[:3] == ["Session.upload_data", "PyTorch.__init__", "EstimatorBase.fit"]
    assert {"Session.train", "EstimatorBase.deploy", "Model.deploy", "Session.create_model",
            "Session.endpoint_from_production_variants", "Predictor.predict", "Predictor.delete_model",
            "Predictor.delete_endpoint"} <= set(labels)
    assert _difference(seen["sim"], seen["docker"]) is None
    # One branch is the SDK's own, inside Estimator.deploy (EstimatorBase._model_source_dir): in local
    # mode the model it builds gets the local source_dir, on the service the uploaded sourcedir.tar.gz.
    differences = [d for d in (_difference(a, b) for a, b in zip(seen["sim"], seen["sagemaker"])) if d]
    assert len(seen["sim"]) == len(seen["sagemaker"])
    assert differences == ["calls[2]['source_dir']: '%s' != 's3://<bucket>/<name>/source/sourcedir.tar.gz'"
                           % (ROOT / "entry")]
    assert labels[labels.index("EstimatorBase.deploy") + 1] == "PyTorchModel.__init__"
    # sim really trained and served; docker's "container" and the dry run answer canned responses
    assert "Deep Sea Submarine Bath Toy" in outputs["sim"]
    assert "Fake Product" in outputs["docker"] and "(no products)" in outputs["sagemaker"]
    assert "[dry run] nothing was sent to AWS." in outputs["sagemaker"]
