"""Command line: `local-runs` / `python -m local_runs`. It parses and dispatches; `commands.py` does the work.

    local-runs cycle [--reviews FILE] [--query Q ...]   start S3, upload, fit, deploy, query, delete
    local-runs fit [--reviews FILE]                     train; remembers the model for `deploy`
    local-runs deploy [--model-data S3URI] [--name N]   serve the last (or a given) model
    local-runs predict "query" [--endpoint N]           ask an endpoint; prints a table (or --json)
    local-runs transform Q.jsonl --out R.jsonl          batch transform a file of queries (the last fit)
    local-runs delete [--endpoint N | --all]            delete an endpoint (and its config and model on sagemaker)
    local-runs endpoints                                list endpoints and their health
    local-runs shutdown [--purge]                       sim: stop every endpoint, the S3 and the gateway
    local-runs ui [--endpoint N] [--port P]             a search page for an endpoint on 127.0.0.1

`--backend sim|docker|sagemaker` (or LOCAL_RUNS_BACKEND, or local_runs.toml) picks where it runs;
with sagemaker, `--dry-run` prints the requests a command would send and sends none. The global
options may come before or after the command. Errors are one line on stderr and a non-zero exit;
`--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

from local_runs import commands  # noqa: E402
from local_runs.commands import DEFAULT_ENDPOINT  # noqa: E402
from local_runs.config import BACKENDS, load_settings  # noqa: E402
from local_runs.errors import UsageError  # noqa: E402
from local_runs.results_table import format_results  # noqa: E402

__all__ = ["UsageError", "build_parser", "format_results", "main"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("review-search")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every command takes; on a command's own parser they default to 'not given'."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    parser.add_argument("--backend", choices=BACKENDS, **default,
                        help="where to run: sim (default), docker or sagemaker (or LOCAL_RUNS_BACKEND)")
    parser.add_argument("--config", metavar="FILE", **default,
                        help="settings file (default: ./local_runs.toml if present; or LOCAL_RUNS_CONFIG)")
    parser.add_argument("--state-dir", metavar="DIR", **default,
                        help="where sim keeps endpoints, its S3 and the last model (default .local_runs)")
    parser.add_argument("--region", **default, help="AWS region (default us-east-1; or LOCAL_RUNS_REGION)")
    parser.add_argument("--dry-run", action="store_true", **default,
                        help="sagemaker: print the requests that would be sent, send nothing (or LOCAL_RUNS_DRY_RUN=1)")
    parser.add_argument("--debug", action="store_true", **default, help="show tracebacks and INFO logs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="local-runs", description="Review search on SageMaker, local-first.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    commands_ = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, run):
        p = commands_.add_parser(name, help=help_text, description=help_text, parents=[common])
        p.set_defaults(run=run)
        return p

    def reviews_options(p):
        p.add_argument("--reviews", metavar="FILE",
                       help="reviews CSV/TSV, optionally .gz (default: the 111 fixture reviews shipped with the package)")
        p.add_argument("--index-kind", choices=["auto", "graph", "exact", "ivf"],
                       help="kNN index: graph (pynndescent), exact, ivf (inverted file), or auto (graph from "
                            "5,000 vectors, ivf from 1,000,000; default)")
        p.add_argument("--precision", choices=["float32", "int8"],
                       help="encoder precision for the whole model (default float32; int8 embeds faster, "
                            "measured slightly lower search quality: see README Performance)")
        p.add_argument("--instances", type=int, default=1, metavar="N",
                       help="1 (default): one training job; N > 1: a big catalogue's two-step fit, an embed "
                            "processing job on N instances (reviews split into N part files, dealt by S3 key), "
                            "then the index training job on one")

    def n_items_option(p):
        p.add_argument("--n-items", type=int, default=3, metavar="N", help="products per query, 1-100 (default 3)")

    def ui_options(p, help_text):
        p.add_argument("--ui", action="store_true", help=help_text)
        p.add_argument("--ui-port", type=int, default=0, metavar="PORT",
                       help="port of the search page on 127.0.0.1 (default: a free one)")
        p.add_argument("--open", action="store_true", help="open the search page in a web browser")

    p = command("cycle", "fit, deploy, query and delete in one go (the main job)", commands.cmd_cycle)
    reviews_options(p)
    p.add_argument("--query", action="append", metavar="TEXT",
                   help="a query to run (repeatable; default: three example queries)")
    n_items_option(p)
    ui_options(p, "before deleting the endpoint, serve a search page for it until Ctrl-C")

    p = command("fit", "train a model from a reviews file; `deploy` then serves it", commands.cmd_fit)
    reviews_options(p)

    p = command("deploy", "deploy the last trained model (or --model-data) as an endpoint", commands.cmd_deploy)
    p.add_argument("--model-data", metavar="S3URI", help="s3:// URI of a model.tar.gz (default: the last fit)")
    p.add_argument("--name", default=DEFAULT_ENDPOINT, help=f"endpoint name (default {DEFAULT_ENDPOINT})")
    ui_options(p, "then serve a search page for the endpoint until Ctrl-C (the endpoint keeps running)")

    p = command("predict", "query an endpoint and print the products", commands.cmd_predict)
    p.add_argument("query", nargs="+", help="the query; several arguments = several query sentences")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, metavar="NAME", help=f"endpoint (default {DEFAULT_ENDPOINT})")
    n_items_option(p)
    p.add_argument("--min-star-rating", type=int, metavar="STARS", help="only reviews rated at least this (1-5)")
    p.add_argument("--offset", type=int, metavar="N", help="skip this many products (paging, 0-1000)")
    p.add_argument("--json", action="store_true", help="print the raw JSON response")

    p = command("transform", "batch transform: every line of a jsonlines file through the serving code (the "
                "last fit, or --model-data), answers in order in --out", commands.cmd_transform)
    p.add_argument("queries", metavar="QUERIES.jsonl",
                   help='one request per line, e.g. {"query": "my kids loved it", "n_items": 3}')
    p.add_argument("--out", required=True, metavar="RESULTS.jsonl",
                   help="where to write the answers: one JSON line per query line, in the same order")
    p.add_argument("--model-data", metavar="S3URI", help="s3:// URI of a model.tar.gz (default: the last fit)")
    p.add_argument("--instances", type=int, default=1, metavar="N",
                   help="instances (serving processes) to deal the input objects across (default 1)")
    p.add_argument("--strategy", choices=["MultiRecord", "SingleRecord"], default="MultiRecord",
                   help="MultiRecord: as many lines per request as fit in --max-payload (default); "
                        "SingleRecord: one line per request")
    p.add_argument("--max-payload", type=int, metavar="MB",
                   help="largest request body in MB, 0-100 (default: the container's, else 6)")
    p.add_argument("--max-concurrent", type=int, metavar="N",
                   help="requests in flight per instance (default: the container's, else 1)")

    p = command("delete", "delete an endpoint (on sagemaker also its endpoint config and model)", commands.cmd_delete)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--endpoint", default=DEFAULT_ENDPOINT, metavar="NAME",
                       help=f"the endpoint to delete (default {DEFAULT_ENDPOINT})")
    group.add_argument("--all", action="store_true",
                       help=f"every endpoint of this backend (sagemaker: those named {DEFAULT_ENDPOINT}*)")

    command("endpoints", "list endpoints and their status", commands.cmd_endpoints)

    p = command("ui", "serve a search page for an endpoint on 127.0.0.1 until Ctrl-C", commands.cmd_ui)
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, metavar="NAME", help=f"endpoint (default {DEFAULT_ENDPOINT})")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--open", action="store_true", help="open the page in a web browser")

    p = command("shutdown", "sim: stop every endpoint and the local S3 and runtime gateway", commands.cmd_shutdown)
    p.add_argument("--purge", action="store_true", help="also delete the local S3's data (every fitted model)")
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
    return str(exc) or type(exc).__name__


def _on_sigint(signum, frame):
    commands.note_interrupt()
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.debug:
        # The SDK logs where it looked for defaults files, on stdout, unless a level is already set.
        logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
    own_handler = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if own_handler:
        signal.signal(signal.SIGINT, _on_sigint)  # as Python's own handler, but remembered (see commands._fit)
    try:
        settings = load_settings(
            cli={"backend": args.backend, "state_dir": args.state_dir, "region": args.region,
                 "dry_run": args.dry_run or None},
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
