"""What each `local-runs` command does, for any backend: the command line parses, this runs.

Every backend difference is behind `local_runs.backends` (listing and deleting endpoints, checking a
model before deploy, what stays running); the jobs are the user's script, `local_runs/job.py`.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from local_runs import resources
from local_runs.errors import UsageError
from local_runs.results_table import format_results

EXAMPLE_QUERIES = [
    "My children liked it",
    "a bath toy that floats",
    "good for long car rides",
]
LAST_MODEL_FILE = "last_model.json"
DEFAULT_ENDPOINT = "review-search"

_interrupted = False


def note_interrupt() -> None:
    """Called by the command line's SIGINT handler (see `_fit`)."""
    global _interrupted
    _interrupted = True


def _fit(backend, train_uri: str, hyperparameters: dict):
    """job.fit, but Ctrl-C stays Ctrl-C.

    The SDK v2 wraps Estimator.fit in a telemetry decorator whose `finally: return` swallows a
    KeyboardInterrupt: fit would return as if it had finished. Re-raise it here.
    """
    from local_runs import job

    global _interrupted
    _interrupted = False
    estimator = job.fit(backend, train_uri, hyperparameters)
    if _interrupted:
        raise KeyboardInterrupt
    return estimator


@contextmanager
def _phase(name: str, timings: dict):
    start = time.perf_counter()
    print(f"==> {name}", flush=True)
    yield
    timings[name] = time.perf_counter() - start
    print(f"<== {name}: {timings[name]:.1f} s", flush=True)


def _state_file(settings, name: str) -> Path:
    from local_runs.backends import state_dir

    return state_dir(settings) / name


def _remember_model(settings, backend_name: str, model_data: str, job_name: str) -> None:
    from local_runs.daemon import write_json_atomic

    # atomic (temp + rename): an interrupted fit never leaves a half-written pointer behind
    write_json_atomic(_state_file(settings, LAST_MODEL_FILE),
                      {"backend": backend_name, "model_data": model_data, "job_name": job_name})


def _last_model(settings) -> dict:
    path = _state_file(settings, LAST_MODEL_FILE)
    if not path.is_file():
        raise UsageError("no trained model yet: run `local-runs fit` first, or pass --model-data s3://.../model.tar.gz")
    return json.loads(path.read_text())


def _fit_any(backend, reviews: Path, args, timings: dict | None = None):
    """`--instances 1`: upload the reviews file and fit (one training job). N > 1: the two-step fit."""
    instances = getattr(args, "instances", 1) or 1
    if instances < 1:
        raise UsageError(f"--instances must be at least 1, got {instances}")
    if instances == 1:
        if timings is None:  # `fit`: as before, no phases
            return _fit(backend, backend.upload(reviews), _hyperparameters(args))
        with _phase("upload", timings):
            train_uri = backend.upload(reviews)
            print(f"training data: {train_uri}")
        with _phase("fit", timings):
            return _fit(backend, train_uri, _hyperparameters(args))
    return _fit_two_steps(backend, reviews, instances, _hyperparameters(args), timings if timings is not None else {})


def _fit_two_steps(backend, reviews: Path, instances: int, hyperparameters: dict, timings: dict):
    """Split the reviews into `instances` part files, embed them on `instances` instances, index on one."""
    import tempfile

    from knn.shards import split_reviews_file
    from local_runs import job

    global _interrupted
    with _phase("upload", timings), tempfile.TemporaryDirectory(prefix="review-parts-") as parts_dir:
        parts = split_reviews_file(reviews, parts_dir, instances)
        parts_uri = backend.upload_parts(parts_dir, f"{reviews.name.split('.')[0]}-{len(parts)}-parts")
        print(f"review parts: {parts_uri} ({len(parts)} files)")
    _interrupted = False
    with _phase(f"embed ({instances} instances)", timings):
        processor = job.embed(backend, parts_uri, instances, precision=hyperparameters.get("precision", "float32"))
        if _interrupted:
            raise KeyboardInterrupt
        embedded = job.embedded_uri(processor)
        print(f"embedded parts: {embedded}")
    with _phase("index (1 instance)", timings):
        estimator = job.fit_embedded(backend, embedded, hyperparameters)
        if _interrupted:
            raise KeyboardInterrupt
    return estimator


def _hyperparameters(args) -> dict:
    wanted = {"index-kind": getattr(args, "index_kind", None), "precision": getattr(args, "precision", None)}
    return {name: value for name, value in wanted.items() if value}


def _reviews_path(args) -> Path:
    path = Path(args.reviews) if args.reviews else resources.fixture_reviews()
    if not path.is_file():
        raise UsageError(f"reviews file {path} does not exist; pass --reviews PATH to a reviews CSV/TSV")
    return path


def cmd_cycle(settings, args) -> int:
    from local_runs import job
    from local_runs.backends import open_backend

    reviews = _reviews_path(args)
    queries = args.query or EXAMPLE_QUERIES
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with open_backend(settings) as backend:
        print(f"backend: {backend.name} (instance type {backend.instance_type})")
        estimator = _fit_any(backend, reviews, args, timings)
        print(f"model: {estimator.model_data}")
        with _phase("deploy", timings):
            predictor = job.deploy(estimator, backend)
        try:
            with _phase("predict", timings):
                for query in queries:
                    print(format_results(query, job.predict(predictor, query, n_items=args.n_items)))
            if args.ui:  # the page stays up until Ctrl-C; the endpoint is deleted after it
                from local_runs.ui import serve_until_interrupted

                with _phase("search page", timings):
                    serve_until_interrupted(backend, predictor.endpoint_name, port=args.ui_port,
                                            open_browser=args.open, after="stop the page and delete the endpoint")
        finally:
            with _phase("delete", timings):
                predictor.delete_model()  # first: it looks the model up through the endpoint config
                predictor.delete_endpoint(delete_endpoint_config=True)
    total = time.perf_counter() - start
    print("\ncycle: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + f"; total {total:.1f} s")
    return 0


def cmd_fit(settings, args) -> int:
    from local_runs.backends import open_backend

    reviews = _reviews_path(args)
    with open_backend(settings, persistent=True) as backend:
        estimator = _fit_any(backend, reviews, args)
        if not backend.remembers_models:  # a dry run trained nothing: remember nothing
            print(f"model (dry run, not trained): {estimator.model_data}")
            return 0
        _remember_model(settings, backend.name, estimator.model_data, estimator.latest_training_job.name)
        print(f"model: {estimator.model_data}\nnext: local-runs deploy")
    return 0


def cmd_deploy(settings, args) -> int:
    from local_runs import job
    from local_runs.backends import open_backend

    model_data = args.model_data or _last_model(settings)["model_data"]
    with open_backend(settings, persistent=True) as backend:
        backend.check_model(model_data)
        print(f"deploying {model_data} as endpoint {args.name}: waiting until the model is loaded and answers "
              f"/ping ({backend.endpoint_log_hint(args.name)})", flush=True)
        predictor = job.deploy(job.make_model(backend, model_data), backend, endpoint_name=args.name)
        print(f"endpoint {predictor.endpoint_name} is in service\n"
              f"next: local-runs predict \"my kids loved it\" --endpoint {predictor.endpoint_name}")
        if args.ui:  # Ctrl-C stops the page; the endpoint keeps running
            from local_runs.ui import serve_until_interrupted

            serve_until_interrupted(backend, predictor.endpoint_name, port=args.ui_port, open_browser=args.open,
                                    after=f"stop the page (endpoint {predictor.endpoint_name} keeps running)")
    return 0


def _check_queries_file(path: Path) -> int:
    """The number of request lines in a jsonlines queries file; UsageError naming a line that is not JSON."""
    if not path.is_file():
        raise UsageError(f"queries file {path} does not exist; give a .jsonl file with one request per line, "
                         'e.g. {"query": "my kids loved it", "n_items": 3}')
    count = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except ValueError as exc:
                raise UsageError(f"{path}, line {number}: not JSON ({exc}); each line is one request such as "
                                 '{"query": "my kids loved it", "n_items": 3}') from None
            count += 1
    if not count:
        raise UsageError(f"queries file {path} has no request lines")
    return count


LINES_PER_OBJECT = 1000  # `transform` uploads the queries in parts of at most this many lines


def _split_for_instances(path: Path, parts: int, directory: Path) -> list[Path]:
    """`parts` files of consecutive lines (named after the lines they hold), so that N instances share the work."""
    lines = path.read_bytes().splitlines(keepends=True)
    parts = max(1, min(parts, len(lines)))
    size = -(-len(lines) // parts)
    files = []
    for number, start in enumerate(range(0, len(lines), size), 1):
        chunk = lines[start:start + size]
        stem = path.name.split(".")[0]
        target = directory / f"{stem}.part-{number:05d}-lines-{start + 1}-{start + len(chunk)}.jsonl"
        target.write_bytes(b"".join(chunk))
        files.append(target)
    return files


def cmd_transform(settings, args) -> int:
    """Batch transform: every line of QUERIES.jsonl through the serving code, the answers in RESULTS.jsonl."""
    import datetime
    import os
    import tempfile

    from local_runs import job
    from local_runs.backends import open_backend

    queries, out = Path(args.queries), Path(args.out)
    count = _check_queries_file(queries)
    model_data = args.model_data or _last_model(settings)["model_data"]
    run = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H-%M-%S-%f")[:-3]
    if args.instances < 1:
        raise UsageError(f"--instances must be at least 1, got {args.instances}")
    with open_backend(settings, persistent=True) as backend, tempfile.TemporaryDirectory() as scratch:
        backend.check_model(model_data)
        # SageMaker deals whole objects across instances, and a MultiRecord request never spans two objects:
        # at least one part per instance, and at most LINES_PER_OBJECT lines in each (one request stays short).
        lines = len(queries.read_bytes().splitlines())
        wanted = max(args.instances, -(-lines // LINES_PER_OBJECT))
        parts = _split_for_instances(queries, wanted, Path(scratch)) if wanted > 1 else [queries]
        for part in parts:
            input_uri = backend.upload(part, prefix=f"review-search/transform/{run}/input")
        output_uri = backend.transform_output_uri(run)
        print(f"transforming {count} queries from {queries} with {model_data} on {args.instances} instance(s) "
              f"({args.strategy})", flush=True)
        started = time.perf_counter()
        transformer = job.transform(backend, model_data, input_uri, output_uri, instance_count=args.instances,
                                    strategy=args.strategy, max_payload=args.max_payload,
                                    max_concurrent_transforms=args.max_concurrent)
        elapsed = time.perf_counter() - started
        name = transformer.latest_transform_job.name
        if not backend.runs_jobs:
            print(f"transform job {name} (dry run, nothing ran): no results to write to {out}")
            return 0
        results_uri = backend.transform_results_uri(output_uri, name)
        bucket, _, prefix = results_uri[len("s3://"):].partition("/")
        keys = [f"{prefix}/{part.name}.out" for part in parts]
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        os.close(handle)
        try:
            with open(temp, "wb") as whole:
                for key in keys:  # the parts' answers, in the parts' order
                    whole.write(backend.session.s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
            os.replace(temp, out)  # RESULTS.jsonl appears only whole
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
    answers = sum(1 for line in out.read_bytes().splitlines() if line.strip())
    print(f"transform job {name}: {answers} answers for {count} queries in {elapsed:.1f} s "
          f"({count / elapsed:.1f} queries/s) -> {out} (from s3://{bucket}/{prefix}/)")
    return 0


def cmd_predict(settings, args) -> int:
    from local_runs import job
    from local_runs.backends import open_backend

    filters = {k: v for k, v in (("min_star_rating", args.min_star_rating), ("offset", args.offset)) if v is not None}
    with open_backend(settings, persistent=True) as backend:
        predictor = job.predictor_for(backend, args.endpoint)
        query = args.query if len(args.query) > 1 else args.query[0]
        response = job.predict(predictor, query, n_items=args.n_items, **filters)
    print(json.dumps(response, indent=1, ensure_ascii=False) if args.json else format_results(query, response))
    return 0


def cmd_delete(settings, args) -> int:
    from local_runs.backends import open_backend

    with open_backend(settings, persistent=True) as backend:
        names = backend.endpoints_to_delete_all() if args.all else [args.endpoint]
        if args.all and not names:
            print("no endpoints to delete")
        for name in names:
            for line in backend.delete_endpoint(name):
                print(line)
    return 0


def cmd_endpoints(settings, args) -> int:
    from local_runs.backends import open_backend

    with open_backend(settings, persistent=True) as backend:
        found = backend.list_endpoints()
    if not found:
        print("no endpoints")
        return 0
    restarts = any("restarts" in e for e in found)  # sim counts replaced workers
    print(f"{'NAME':<32} {'STATUS':<12} " + (f"{'RESTARTS':>8}  " if restarts else "") + "URL")
    for e in found:
        count = f"{e.get('restarts') or 0:>8}  " if restarts else ""
        print(f"{e['name']:<32} {e.get('status', '?'):<12} {count}{e.get('url', '')}".rstrip())
        if e.get("status") == "Failed" and e.get("failure_reason"):
            print(f"  {' '.join(str(e['failure_reason']).splitlines()[:1])[:300]}")
    return 0


def cmd_ui(settings, args) -> int:
    from local_runs.backends import open_backend
    from local_runs.ui import serve_until_interrupted

    with open_backend(settings, persistent=True) as backend:
        serve_until_interrupted(backend, args.endpoint, port=args.port, open_browser=args.open)
    return 0


def cmd_shutdown(settings, args) -> int:
    from local_runs.backends import backend_class

    for line in backend_class(settings).shutdown(settings, purge=args.purge):
        print(line)
    return 0
