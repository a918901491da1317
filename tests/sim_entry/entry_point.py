"""Dummy SageMaker entry point for the sim tests (training main + inference handlers).

Training reads the ``train`` channel and writes ``model.json`` into SM_MODEL_DIR; the
``fail_with`` hyperparameter makes it fail with that message. Serving echoes the query
upper-cased (through ``echo_lib``, shipped with ``dependencies=[...]``); a body without
``query`` is a 400 (toolkit error), ``{"crash": true}`` a plain exception (500).
"""
import argparse
import json
import os
import sys

# Training gets `dependencies` beside this file; the serving repack puts them in code/lib,
# which the inference toolkit does not put on the path (true on SageMaker as well).
_LIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib")
if os.path.isdir(_LIB) and _LIB not in sys.path:
    sys.path.insert(0, _LIB)

from echo_lib import shout  # noqa: E402
from sagemaker_inference.errors import GenericInferenceToolkitError


def train():
    parser = argparse.ArgumentParser()
    parser.add_argument("--greeting", default="hello")
    parser.add_argument("--fail_with", default="")
    parser.add_argument("--sleep", type=float, default=0)
    args, _unknown = parser.parse_known_args()
    if args.sleep:
        import time

        time.sleep(args.sleep)
    if args.fail_with:
        raise ValueError(args.fail_with)
    train_dir = os.environ["SM_CHANNEL_TRAIN"]
    files = sorted(os.listdir(train_dir))
    lines = sum(1 for name in files for _ in open(os.path.join(train_dir, name)))
    model = {"greeting": args.greeting, "files": files, "lines": lines,
             "hps": json.loads(os.environ["SM_HPS"]), "program": os.environ.get("SM_USER_ENTRY_POINT")}
    with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.json"), "w") as handle:
        json.dump(model, handle)
    print(f"trained on {lines} lines from {files}")


def model_fn(model_dir):
    with open(os.path.join(model_dir, "model.json")) as handle:
        model = json.load(handle)
    model["pid"] = os.getpid()
    model["code_files"] = sorted(os.listdir(os.path.join(model_dir, "code")))
    return model


def input_fn(body, content_type):
    if content_type != "application/json":
        raise GenericInferenceToolkitError(415, f"unsupported content type {content_type}")
    data = json.loads(body)
    if not isinstance(data, dict) or "query" not in data:
        raise GenericInferenceToolkitError(400, "bad")
    data["body_type"] = type(body).__name__
    return data


def predict_fn(data, model):
    if data.get("crash"):
        raise RuntimeError("boom")
    return {"echo": shout(data["query"]), "greeting": model["greeting"], "pid": model["pid"],
            "n_items": data.get("n_items"), "body_type": data["body_type"], "lines": model["lines"]}


def output_fn(prediction, accept):
    return json.dumps(prediction), "application/json"


if __name__ == "__main__":
    train()
