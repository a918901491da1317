"""The user's SageMaker script: the same code for every backend, only the session and instance differ.

    est = PyTorch(entry_point='entry_point.py', source_dir='entry', dependencies=['knn'], ...)
    est.fit({'train': s3_uri}); predictor = est.deploy(...); predictor.predict({...}); predictor.delete_endpoint()

Nothing here knows which backend runs it: `backend` carries the session, role and instance type.
"""
from __future__ import annotations

import os

from local_runs import resources

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

SOURCE_DIR = resources.entry_source_dir()  # entry/ (entry_point.py, requirements.txt)
DEPENDENCIES = [str(resources.knn_dir())]  # knn/, shipped beside it
ENTRY_POINT = "entry_point.py"


def make_estimator(backend, hyperparameters: dict | None = None):
    from sagemaker.pytorch import PyTorch

    return PyTorch(
        entry_point=ENTRY_POINT, source_dir=str(SOURCE_DIR), dependencies=DEPENDENCIES,
        role=backend.role, framework_version=backend.settings.framework_version,
        py_version=backend.settings.py_version, instance_count=1, instance_type=backend.instance_type,
        hyperparameters=hyperparameters or {}, sagemaker_session=backend.session,
        base_job_name="review-search", disable_profiler=True,
    )


def make_model(backend, model_data: str):
    """A deployable model from a training job's model.tar.gz (for deploy in a later process)."""
    from sagemaker.pytorch import PyTorchModel

    return PyTorchModel(
        model_data=model_data, entry_point=ENTRY_POINT, source_dir=str(SOURCE_DIR), dependencies=DEPENDENCIES,
        role=backend.role, framework_version=backend.settings.framework_version,
        py_version=backend.settings.py_version, sagemaker_session=backend.session,
    )


def fit(backend, train_uri: str, hyperparameters: dict | None = None):
    estimator = make_estimator(backend, hyperparameters)
    estimator.fit({"train": train_uri}, logs=True)
    return estimator


def deploy(deployable, backend, endpoint_name: str | None = None):
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.serializers import JSONSerializer

    return deployable.deploy(
        initial_instance_count=1, instance_type=backend.instance_type, endpoint_name=endpoint_name,
        serializer=JSONSerializer(), deserializer=JSONDeserializer(),
    )


def predictor_for(backend, endpoint_name: str):
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import JSONSerializer

    return Predictor(endpoint_name, sagemaker_session=backend.session,
                     serializer=JSONSerializer(), deserializer=JSONDeserializer())


def predict(predictor, query, n_items: int = 3, **filters) -> dict:
    return predictor.predict({"query": query, "n_items": n_items, **filters})


JSONLINES = "application/jsonlines"


def transform(backend, model_data: str, input_uri: str, output_uri: str | None = None, instance_count: int = 1,
              strategy: str | None = "MultiRecord", max_payload: int | None = None,
              max_concurrent_transforms: int | None = None, wait: bool = True):
    """Batch transform: every line of every object under `input_uri` is a request; answers land in `x.out`."""
    transformer = make_model(backend, model_data).transformer(
        instance_count=instance_count, instance_type=backend.instance_type, strategy=strategy,
        assemble_with="Line", output_path=output_uri, accept=JSONLINES, max_payload=max_payload,
        max_concurrent_transforms=max_concurrent_transforms,
    )
    transformer.transform(input_uri, content_type=JSONLINES, split_type="Line", wait=wait,
                          logs=backend.tails_transform_logs)
    return transformer
