"""The benchmark harness (bench/common.py, bench/plot.py) and the encoder, cold start, fit, cycle and
endpoint benchmarks, run at tiny sizes on the fixtures: they measure, write the JSON shape that
bench/plot.py reads, and the plot renders. The ones that run sim jobs are marked integration."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _module(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_document(path: Path, name: str) -> dict:
    document = json.loads(path.read_text())
    assert document["name"] == name and document["date"] and document["machine"]["cpus"] >= 1
    assert document["targets"], "every benchmark states its targets"
    for entry in document["targets"]:
        assert {"name", "target", "measured", "unit", "pass", "limit", "higher_is_better"} <= set(entry)
        assert entry["measured"] is not None and isinstance(entry["pass"], bool)
    return document


def test_target_direction_and_report(tmp_path, capsys):
    common = _module("common")
    at_most = common.target("latency", 12.0, 10.0, "ms")
    at_least = common.target("throughput", 120.0, 100.0, "req/s", higher_is_better=True)
    assert at_most["pass"] is False and at_least["pass"] is True
    assert common.target("zero errors", 0, 0, "errors")["pass"] is True
    assert common.percentiles([0.001, 0.002, 0.003])["p50_ms"] == pytest.approx(2.0)
    path = common.report("sample", {"x": 1}, [at_most, at_least], tmp_path / "sample.json")
    assert "FALLS SHORT" in capsys.readouterr().out
    _check_document(path, "sample")


def test_plot_renders_every_target(tmp_path):
    common, plot = _module("common"), _module("plot")
    common.report("one", {}, [common.target("a", 5.0, 10.0, "ms")], tmp_path / "one.json")
    common.report("two", {}, [common.target("b", 50.0, 100.0, "req/s", higher_is_better=True)], tmp_path / "two-big.json")
    (tmp_path / "not-a-result.json").write_text("[1, 2]")
    documents = plot.load_results(tmp_path)
    assert [d["name"] for d in documents] == ["one", "two"]
    assert [d["results_file"] for d in documents] == ["one", "two-big"]  # a bar is named by its file
    assert plot.share_of_target(documents[0]["targets"][0]) == pytest.approx(0.5)
    assert plot.share_of_target(documents[1]["targets"][0]) == pytest.approx(2.0)  # short of "at least"
    out = plot.render(documents, tmp_path / "plot.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_output_parsers():
    cycle, fit = _module("cycle_bench"), _module("fit_bench")
    output = "...\ncycle: upload 0.0 s, fit 7.4 s, deploy 8.9 s, predict 0.8 s, delete 0.3 s; total 19.2 s\n"
    assert cycle.parse_cycle_line(output) == {"upload": 0.0, "fit": 7.4, "deploy": 8.9, "predict": 0.8,
                                              "delete": 0.3, "total": 19.2}
    with pytest.raises(ValueError):
        cycle.parse_cycle_line("cycle failed")
    log = 'INFO entry_point: model written: {"reviews": 111, "sentences": 300, "index_s": 0.1}'
    assert fit.parse_model_written(log)["sentences"] == 300


def test_encoder_bench_compares_with_sentence_transformers(tmp_path):
    encoder_bench = _module("encoder_bench")
    out = tmp_path / "encoder.json"
    encoder_bench.main(["--reviews", str(FIXTURES / "reviews.csv"), "--sentences", "60", "--rounds", "1",
                        "--threads", "1", "--out", str(out)])
    row = _check_document(out, "encoder")["results"]["by_threads"]["1"]
    assert row["float32_sentences_per_s"] > 0 and row["int8_sentences_per_s"] > 0 and row["bare_sentences_per_s"] > 0
    assert row["int8_vs_float32"] > 0 and row["float32_vs_bare"] > 0
    # float32 equals sentence-transformers (tests/test_encoder.py); int8 is compared with float32 here
    assert 0.9 < _check_document(out, "encoder")["results"]["quality"]["cosine_mean"] <= 1.0


def test_cold_start_bench_answers_from_a_fresh_process(tmp_path, graph_model_dir):
    """Warm, then cold: the shipped kernels apply (nothing compiled); on another CPU they do not (the
    walk compiles), to the same answer."""
    cold_start = _module("cold_start_bench")
    out = tmp_path / "cold.json"
    cold_start.main(["--model-dir", str(graph_model_dir), "--work-dir", str(tmp_path / "work"), "--runs", "1",
                     "--cold-runs", "1", "--out", str(out)])
    results = _check_document(out, "cold_start")["results"]
    run = results["warm_runs"][0]
    assert 0 < run["import_s"] + run["model_fn_s"] + run["first_query_s"] <= run["total_s"]
    assert results["cold"][0]["walk_compiled"] is False and results["cold_other_cpu"][0]["walk_compiled"] is True
    assert results["cold_answers_equal_warm"] is True


@pytest.mark.integration
def test_endpoint_bench_on_a_sim_endpoint(tmp_path, fixture_model_dir):
    endpoint = _module("endpoint_bench")
    out = tmp_path / "endpoint.json"
    endpoint.main(["--model-dir", str(fixture_model_dir), "--reviews", str(FIXTURES / "reviews.csv"),
                   "--requests", "10", "--clients", "1", "4", "--workers", "2", "--out", str(out)])
    results = _check_document(out, "endpoint")["results"]
    assert [row["clients"] for row in results["direct"]] == [1, 4]
    assert all(row["errors"] == 0 and row["requests"] == 10 * row["clients"] for row in results["direct"])
    assert results["runtime_api"]["errors"] == 0 and results["workers"] == 2
    assert "LOCAL_RUNS_SIM_WORKERS" not in os.environ  # the setting did not leak into later tests


@pytest.mark.integration
def test_fit_and_cycle_benches_run_the_command_line(tmp_path):
    fit, cycle = _module("fit_bench"), _module("cycle_bench")
    fit.main(["--reviews", str(FIXTURES / "reviews.csv"), "--out", str(tmp_path / "fit.json")])
    run = _check_document(tmp_path / "fit.json", "fit")["results"]["runs"][0]
    assert run["reviews"] == 111 and run["sentences"] > 111 and run["wall_s"] > run["total_s"]
    cycle.main(["--runs", "1", "--warm-ups", "0", "--out", str(tmp_path / "cycle.json")])  # the fit above warmed up
    median = _check_document(tmp_path / "cycle.json", "cycle")["results"]["median"]
    assert {"upload", "fit", "deploy", "predict", "delete", "total"} <= set(median)
