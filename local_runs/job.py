"""The user's SageMaker script: the same code for every backend, only the session and instance differ.

    est = PyTorch(entry_point='entry_point.py', source_dir='entry', dependencies=['knn'], ...)
    est.fit({'train': s3_uri}); predictor = est.deploy(...); predictor.predict({...}); predictor.delete_endpoint()

A big catalogue is fitted in two steps: `embed` (a PyTorchProcessor job running entry/embed.py on N
instances over review part files) and `fit_embedded` (the training job reading its output).

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


EMBED_ENTRY = "embed.py"  # the two-step fit's first step: a processing job (entry/embed.py)
EMBED_INPUT = "/opt/ml/processing/input/reviews"
EMBED_OUTPUT = "/opt/ml/processing/output/embedded"


def make_embed_processor(backend, instances: int):
    from sagemaker.pytorch.processing import PyTorchProcessor

    return PyTorchProcessor(
        framework_version=backend.settings.framework_version, py_version=backend.settings.py_version,
        role=backend.role, instance_count=instances, instance_type=backend.instance_type,
        sagemaker_session=backend.session, base_job_name="review-search-embed",
    )


def embed(backend, parts_uri: str, instances: int, wait: bool = True, precision: str = "float32"):
    """Step 1 of a big fit: embed the review parts under `parts_uri` on `instances` instances.

    The parts are dealt to the instances by S3 key (ShardedByS3Key). Where the service refuses that
    (the SDK's local mode: `backend.shards_inputs` is False) every instance gets every part and
    embed.py takes its own share by host index. Returns the processor; its job's output (one shard per
    part) is `embedded_uri(processor)`."""
    from sagemaker.processing import ProcessingInput, ProcessingOutput

    processor = make_embed_processor(backend, instances)
    sharded = backend.shards_inputs or instances == 1
    processor.run(
        code=EMBED_ENTRY, source_dir=str(SOURCE_DIR), dependencies=DEPENDENCIES,
        inputs=[ProcessingInput(source=parts_uri, destination=EMBED_INPUT, input_name="reviews",
                                s3_data_distribution_type="ShardedByS3Key" if sharded else "FullyReplicated")],
        outputs=[ProcessingOutput(source=EMBED_OUTPUT, output_name="embedded")],
        arguments=["--input", EMBED_INPUT, "--output", EMBED_OUTPUT, "--precision", precision]
        + ([] if sharded else ["--share-by-host"]),
        wait=wait, logs=wait,
    )
    return processor


def embedded_uri(processor) -> str:
    return processor.latest_job.outputs[0].destination


def fit_embedded(backend, embedded: str, hyperparameters: dict | None = None):
    """Step 2 of a big fit: the training job, on one instance, joins step 1's output and builds the index."""
    estimator = make_estimator(backend, hyperparameters)
    estimator.fit({"embedded": embedded}, logs=True)
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
