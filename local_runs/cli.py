"""Command line: `local-runs` / `python -m local_runs`.

    local-runs cycle [--reviews FILE] [--query Q ...]   start S3, upload, fit, deploy, query, delete
    local-runs fit [--reviews FILE]                     train; remembers the model for `deploy`
    local-runs deploy [--model-data S3URI] [--name N]   serve the last (or a given) model
    local-runs predict "query" [--endpoint N]           ask an endpoint; prints a table (or --json)
    local-runs delete [--endpoint N | --all]            stop an endpoint and free its port
    local-runs endpoints                                list endpoints and their health
    local-runs shutdown                                 sim: delete every endpoint, stop S3 and gateway
    local-runs ui [--endpoint N] [--port P]             a search page for an endpoint on 127.0.0.1

`--backend sim|docker|sagemaker` (or LOCAL_RUNS_BACKEND, or local_runs.toml) picks where it runs;
with sagemaker, `--dry-run` prints the requests a command would send and sends none.
Errors are one line on stderr and a non-zero exit; `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

from local_runs.config import BACKENDS, ConfigError, load_settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_REVIEWS = ROOT / "fixtures" / "reviews.csv"
EXAMPLE_QUERIES = [
    "My children liked it",
    "a bath toy that floats",
    "good for long car rides",
]
LAST_MODEL_FILE = "last_model.json"
DEFAULT_ENDPOINT = "review-search"


class UsageError(Exception):
    """The command was asked something it cannot do; the message says what to do instead."""


_interrupted = False


def _on_sigint(signum, frame):
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


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


def _phase(name: str, timings: dict):
    @contextmanager
    def timer():
        start = time.perf_counter()
        print(f"==> {name}", flush=True)
        yield
        timings[name] = time.perf_counter() - start
        print(f"<== {name}: {timings[name]:.1f} s", flush=True)
    return timer()


def format_results(query, response: dict) -> str:
    """A readable table of one query's products."""
    shown = query if isinstance(query, str) else " / ".join(query)
    lines = [f'\nQuery: "{shown}"']
    if not response:
        return "\n".join(lines + ["  (no products)"])
    lines.append(f"  {'#':>2}  {'score':>6}  {'stars':<5}  {'product':<42}  matched sentence")
    for rank, item in enumerate(response.values(), 1):
        title = item["product_title"] if len(item["product_title"]) <= 42 else item["product_title"][:41] + "…"
        stars = "*" * int(item["star_rating"])
        sentence = item["matched_sentence"] if len(item["matched_sentence"]) <= 70 else item["matched_sentence"][:69] + "…"
        lines.append(f"  {rank:>2}  {item['product_search_score']:6.3f}  {stars:<5}  {title:<42}  {sentence}")
    return "\n".join(lines)


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


def _hyperparameters(args) -> dict:
    return {"index-kind": args.index_kind} if getattr(args, "index_kind", None) else {}


def _reviews_path(args) -> Path:
    path = Path(args.reviews) if args.reviews else FIXTURE_REVIEWS
    if not path.is_file():
        raise UsageError(f"reviews file {path} does not exist; pass --reviews PATH to a reviews CSV/TSV")
    return path


# --- commands ------------------------------------------------------------------------------------
def cmd_cycle(settings, args) -> int:
    from local_runs import job
    from local_runs.backends import open_backend

    reviews = _reviews_path(args)
    queries = args.query or EXAMPLE_QUERIES
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with open_backend(settings) as backend:
        print(f"backend: {backend.name} (instance type {backend.instance_type})")
        with _phase("upload", timings):
            train_uri = backend.upload(reviews)
            print(f"training data: {train_uri}")
        with _phase("fit", timings):
            estimator = _fit(backend, train_uri, _hyperparameters(args))
            print(f"model: {estimator.model_data}")
        with _phase("deploy", timings):
            predictor = job.deploy(estimator, backend)
        try:
            with _phase("predict", timings):
                for query in queries:
                    print(format_results(query, job.predict(predictor, query, n_items=args.n_items)))
            if args.ui:  # the page stays up until Ctrl-C; the endpoint is deleted after it
                from local_runs import ui

                with _phase("search page", timings):
                    ui.serve_until_interrupted(backend, predictor.endpoint_name, port=args.ui_port,
                                               open_browser=args.open, after="stop the page and delete the endpoint")
        finally:
            with _phase("delete", timings):
                predictor.delete_model()  # first: it looks the model up through the endpoint config
                predictor.delete_endpoint(delete_endpoint_config=True)
    total = time.perf_counter() - start
    print("\ncycle: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + f"; total {total:.1f} s")
    return 0


def cmd_fit(settings, args) -> int:
    from local_runs import job
    from local_runs.backends import open_backend

    reviews = _reviews_path(args)
    with open_backend(settings, persistent=True) as backend:
        train_uri = backend.upload(reviews)
        estimator = _fit(backend, train_uri, _hyperparameters(args))
        if settings.dry_run:  # nothing was trained: remember nothing
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
        _require_sim_model(backend, model_data)
        predictor = job.deploy(job.make_model(backend, model_data), backend, endpoint_name=args.name)
        print(f"endpoint {predictor.endpoint_name} is in service\n"
              f"next: local-runs predict \"my kids loved it\" --endpoint {predictor.endpoint_name}")
        if args.ui:  # Ctrl-C stops the page; the endpoint keeps running
            from local_runs import ui

            ui.serve_until_interrupted(backend, predictor.endpoint_name, port=args.ui_port, open_browser=args.open,
                                       after=f"stop the page (endpoint {predictor.endpoint_name} keeps running)")
    return 0


def _require_sim_model(backend, model_data: str) -> None:
    """sim: say plainly when the model is not in the local S3 (it forgets everything when it stops)."""
    if backend.name != "sim" or not model_data.startswith("s3://"):
        return
    from botocore.exceptions import ClientError

    bucket, _, key = model_data[len("s3://"):].partition("/")
    try:
        backend.session.s3_client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NoSuchBucket"):
            raise
        raise UsageError(f"the model {model_data} is not in the local S3 at {backend.extra.get('s3_url')}: the sim "
                         "S3 keeps objects in memory and has been restarted since that fit; run `local-runs fit` "
                         "again") from None


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
        names = [args.endpoint] if not args.all else [e["name"] for e in _list_endpoints(backend)]
        if backend.name == "sagemaker":
            from local_runs.backends import delete_endpoint_and_resources

            # --all on the real service: only this project's endpoints, not every one in the account
            names = [n for n in names if not args.all or n.startswith(DEFAULT_ENDPOINT)]
            for name in names:
                print(f"deleted {', '.join(delete_endpoint_and_resources(backend.session, name))}")
            return 0
        for name in names:
            backend.session.delete_endpoint(name)
            print(f"endpoint {name} deleted")
    return 0


def _list_endpoints(backend) -> list[dict]:
    if backend.name == "sim":
        from local_runs.sim.endpoints import list_endpoints

        return list_endpoints(backend.session.state_dir)
    client = backend.session.sagemaker_client
    return [{"name": e["EndpointName"], "status": e["EndpointStatus"]}
            for e in client.list_endpoints().get("Endpoints", [])]


def cmd_endpoints(settings, args) -> int:
    from local_runs.backends import open_backend

    with open_backend(settings, persistent=True) as backend:
        endpoints = _list_endpoints(backend)
    if not endpoints:
        print("no endpoints")
    for e in endpoints:
        where = f"  {e.get('url', '')}" if e.get("url") else ""
        print(f"{e['name']:<32} {e.get('status', '?'):<12}{where}")
        if e.get("status") == "Failed" and e.get("failure_reason"):
            print(f"  {' '.join(str(e['failure_reason']).splitlines()[:1])[:300]}")
    return 0


def cmd_ui(settings, args) -> int:
    from local_runs import ui
    from local_runs.backends import open_backend

    with open_backend(settings, persistent=True) as backend:
        ui.serve_until_interrupted(backend, args.endpoint, port=args.port, open_browser=args.open)
    return 0


def cmd_shutdown(settings, args) -> int:
    if settings.backend != "sim":
        raise UsageError("shutdown stops the sim backend's local services; use `delete` for other backends")
    from local_runs import s3_server
    from local_runs.backends import state_dir
    from local_runs.sim import endpoints, gateway

    directory = state_dir(settings)
    for record in endpoints.list_endpoints(directory):
        endpoints.stop_endpoint(directory, record["name"])
        print(f"endpoint {record['name']} stopped")
    if gateway.stop_daemon(directory / "gateway.json"):
        print("runtime gateway stopped")
    if s3_server.stop_daemon(directory / "s3.json"):
        print("S3 server stopped (its objects are gone)")
    return 0


# --- parsing ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="local-runs", description="Review search on SageMaker, local-first.")
    parser.add_argument("--backend", choices=BACKENDS, help="where to run (default: sim; or LOCAL_RUNS_BACKEND)")
    parser.add_argument("--config", help="settings file (default: ./local_runs.toml if present)")
    parser.add_argument("--state-dir", help="where sim keeps endpoint state (default .local_runs)")
    parser.add_argument("--dry-run", action="store_true",
                        help="sagemaker: print the requests that would be sent, send nothing (or LOCAL_RUNS_DRY_RUN=1)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def reviews_options(p):
        p.add_argument("--reviews", help="reviews CSV/TSV (optionally .gz); default: fixtures/reviews.csv")
        p.add_argument("--index-kind", choices=["auto", "graph", "exact"], help="kNN index (default auto)")

    def ui_options(p, help_text):
        p.add_argument("--ui", action="store_true", help=help_text)
        p.add_argument("--ui-port", type=int, default=0, help="port of the search page on 127.0.0.1 (default: a free one)")
        p.add_argument("--open", action="store_true", help="open the search page in a web browser")

    p = commands.add_parser("cycle", help="fit, deploy, query and delete in one go (the main job)")
    reviews_options(p)
    p.add_argument("--query", action="append", help="a query to run (repeatable); default: examples")
    p.add_argument("--n-items", type=int, default=3)
    ui_options(p, "before deleting the endpoint, serve a search page for it until Ctrl-C")
    p.set_defaults(run=cmd_cycle)

    p = commands.add_parser("fit", help="train a model from a reviews file")
    reviews_options(p)
    p.set_defaults(run=cmd_fit)

    p = commands.add_parser("deploy", help="deploy the last trained model (or --model-data)")
    p.add_argument("--model-data", help="s3:// URI of a model.tar.gz (default: the last fit)")
    p.add_argument("--name", default=DEFAULT_ENDPOINT, help=f"endpoint name (default {DEFAULT_ENDPOINT})")
    ui_options(p, "then serve a search page for the endpoint until Ctrl-C (the endpoint keeps running)")
    p.set_defaults(run=cmd_deploy)

    p = commands.add_parser("predict", help="query an endpoint")
    p.add_argument("query", nargs="+", help="the query; several arguments = several query sentences")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    p.add_argument("--n-items", type=int, default=3)
    p.add_argument("--min-star-rating", type=int)
    p.add_argument("--offset", type=int)
    p.add_argument("--json", action="store_true", help="print the raw JSON response")
    p.set_defaults(run=cmd_predict)

    p = commands.add_parser("delete", help="delete an endpoint")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    group.add_argument("--all", action="store_true",
                       help=f"every endpoint of this backend (sagemaker: those named {DEFAULT_ENDPOINT}*)")
    p.set_defaults(run=cmd_delete)

    p = commands.add_parser("endpoints", help="list endpoints")
    p.set_defaults(run=cmd_endpoints)

    p = commands.add_parser("ui", help="serve a search page for an endpoint on 127.0.0.1 until Ctrl-C")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    p.set_defaults(run=cmd_ui)

    p = commands.add_parser("shutdown", help="sim: stop every endpoint and the local S3 and gateway")
    p.set_defaults(run=cmd_shutdown)
    return parser


def _one_line(exc: BaseException) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        message = exc.response.get("OriginalMessage") or error.get("Message") or str(exc)
        try:
            message = json.loads(message)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
        return f"{error.get('Code', 'error')}: {message}"
    if isinstance(exc, BotoCoreError):
        return f"AWS client: {exc}"
    text = str(exc) or type(exc).__name__
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.debug:
        # The SDK logs where it looked for defaults files, on stdout, unless a level is already set.
        logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
    import signal
    import threading

    own_handler = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if own_handler:
        signal.signal(signal.SIGINT, _on_sigint)  # as Python's own handler, but remembered (see _fit)
    try:
        settings = load_settings(
            cli={"backend": args.backend, "state_dir": args.state_dir, "dry_run": args.dry_run or None},
            config_path=args.config)
        return args.run(settings, args)
    except KeyboardInterrupt:
        print("interrupted: stopping what was started", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure becomes one line unless --debug
        if args.debug:
            raise
        message = " ".join(_one_line(exc).split())
        print(f"local-runs {args.command}: error: {message[:2000]}", file=sys.stderr)
        return 1
    finally:
        if own_handler:
            signal.signal(signal.SIGINT, signal.default_int_handler)
