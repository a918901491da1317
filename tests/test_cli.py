"""local_runs.cli: one-line errors without tracebacks, table formatting, argument handling."""
import subprocess
import sys

import pytest

from conftest import ROOT
from local_runs.cli import format_results, main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "local_runs", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=120)


def test_missing_reviews_file_is_one_line(tmp_path):
    result = run_cli("--state-dir", str(tmp_path / "state"), "fit", "--reviews", str(tmp_path / "nope.csv"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "nope.csv does not exist" in result.stderr and "Traceback" not in result.stderr


def test_bad_backend_setting_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "local_runs", "endpoints"], capture_output=True, text=True,
                            cwd=ROOT, env={"PATH": "", "LOCAL_RUNS_BACKEND": "k8s", "HOME": str(tmp_path)}, timeout=120)
    assert result.returncode == 1
    assert "LOCAL_RUNS_BACKEND" in result.stderr and "Traceback" not in result.stderr


def test_sagemaker_backend_without_role(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOCAL_RUNS_ROLE", raising=False)
    assert main(["--backend", "sagemaker", "endpoints"]) == 1
    assert "needs an IAM role" in capsys.readouterr().err


def test_deploy_without_fit_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--state-dir", str(tmp_path / "s"), "deploy"]) == 1
    assert "run `local-runs fit` first" in capsys.readouterr().err


def test_format_results_table():
    response = {"pred0": {"product_title": "Deep Sea Submarine Bath Toy", "star_rating": 5,
                          "product_search_score": 0.61234, "matched_sentence": "It floats."}}
    text = format_results("a bath toy", response)
    assert 'Query: "a bath toy"' in text and "0.612" in text and "*****" in text and "It floats." in text
    assert "(no products)" in format_results("x", {})


@pytest.mark.parametrize("argv", [["predict"], ["nonsense"], ["--backend", "cloud", "endpoints"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


# --- command-line conventions ----------------------------------------------------------------------
def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("local-runs ") and out.split()[1][0].isdigit(), out


def test_every_option_has_help():
    from local_runs.cli import build_parser

    parser = build_parser()
    missing = [f"{name}: {'/'.join(a.option_strings) or a.dest}"
               for name, p in [("local-runs", parser), *_subparsers(parser).items()]
               for a in p._actions if not a.help and a.dest not in ("command",)]
    assert not missing, missing


@pytest.mark.parametrize("argv", [
    ["--debug", "--backend", "sagemaker", "--region", "eu-west-1", "predict", "a query"],
    ["predict", "--debug", "--backend", "sagemaker", "--region", "eu-west-1", "a query"],
    ["--backend", "sim", "predict", "a query", "--debug", "--backend", "sagemaker", "--region", "eu-west-1"],
])
def test_global_options_before_or_after_the_command(argv):
    from local_runs.cli import build_parser

    args = build_parser().parse_args(argv)
    assert (args.debug, args.backend, args.region, args.query) == (True, "sagemaker", "eu-west-1", ["a query"])


def test_global_options_default_when_not_given():
    from local_runs.cli import build_parser

    args = build_parser().parse_args(["endpoints"])
    assert (args.debug, args.backend, args.region, args.dry_run, args.state_dir) == (False, None, None, False, None)


def test_region_reaches_the_backend(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["endpoints", "--backend", "sagemaker", "--dry-run", "--region", "eu-west-1"]) == 0
    out = capsys.readouterr().out
    assert "[dry run] sagemaker backend, region eu-west-1" in out and "no endpoints" in out


def test_endpoints_prints_a_header_row(monkeypatch, capsys, tmp_path):
    from local_runs import backends, commands

    class Listing:
        name = "sim"

        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def list_endpoints(self):
            return [{"name": "review-search", "status": "InService", "url": "http://127.0.0.1:1234", "restarts": 2},
                    {"name": "broken", "status": "Failed", "failure_reason": "the model did not load\nmore"}]

    monkeypatch.setattr(backends, "open_backend", lambda settings, persistent=False: Listing())
    assert main(["--state-dir", str(tmp_path), "endpoints"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "RESTARTS", "URL"]
    assert lines[1].split() == ["review-search", "InService", "2", "http://127.0.0.1:1234"]
    assert lines[2].split()[:3] == ["broken", "Failed", "0"] and lines[3].strip() == "the model did not load"
    assert lines[0].index("STATUS") == lines[1].index("InService")


def test_predict_table_stays_aligned_with_wide_characters():
    from local_runs.results_table import display_width

    response = {
        "pred0": {"product_title": "木製の汽車セット 🚂 デラックス版 (子供用) 木製の汽車セット", "star_rating": 5,
                  "product_search_score": 0.9, "matched_sentence": "子供が大好きです。"},
        "pred1": {"product_title": "Plain wooden train", "star_rating": 4, "product_search_score": 0.8,
                  "matched_sentence": "My kids love it."},
        "pred2": {"product_title": "Cafe\u0301 play set", "star_rating": 3, "product_search_score": 0.7,
                  "matched_sentence": "x" * 200},
    }
    lines = format_results("kids", response).splitlines()[3:]
    starts = []
    for line, item in zip(lines, response.values()):
        sentence_start = line.index(item["matched_sentence"][:5])
        starts.append(display_width(line[:sentence_start]))
    assert len(set(starts)) == 1, lines  # the sentence column starts at the same screen column
    assert "…" in lines[0] and lines[2].endswith("…")


def test_shutdown_keeps_the_s3_data_and_purge_removes_it(tmp_path, capsys):
    from local_runs import s3_server

    state = tmp_path / "state"
    state.mkdir()
    info = s3_server.ensure_daemon(state / "s3.json", bucket="review-search-local")
    s3_server.boto_session(s3_url=info["url"]).client("s3", endpoint_url=info["url"]).put_object(
        Bucket="review-search-local", Key="model.tar.gz", Body=b"a model")
    assert main(["shutdown", "--state-dir", str(state)]) == 0
    assert "S3 server stopped (its objects stay in" in capsys.readouterr().out
    assert any(s3_server.store_dir(state).rglob("*.obj"))

    info = s3_server.ensure_daemon(state / "s3.json", bucket="review-search-local")  # a new daemon has it back
    body = s3_server.boto_session(s3_url=info["url"]).client("s3", endpoint_url=info["url"]).get_object(
        Bucket="review-search-local", Key="model.tar.gz")["Body"].read()
    assert body == b"a model"
    assert main(["shutdown", "--purge", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "S3 server stopped" in out and "S3 data removed" in out
    assert not s3_server.store_dir(state).exists()


def test_shutdown_is_for_sim_only(capsys):
    assert main(["shutdown", "--backend", "sagemaker", "--dry-run"]) == 1
    assert "shutdown stops the sim backend's local services" in capsys.readouterr().err
