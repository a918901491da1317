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
