"""Smoke tests of bench/knn_bench.py and bench/scale_bench.py at tiny sizes: they run, write the JSON
the issue asks for, and measure sane things (exact recall is 1, the graph and hnswlib find most
neighbours, held-out queries are not corpus rows, memory and latency figures are filled in).

The knn and scale runs are marked integration: on a machine whose numba cache is empty (every CI
run) they compiled pynndescent's build and search for 102 s and 39 s, over half of the default run's
5 minutes; the integration run comes after the default one, whose graph builds have filled the cache."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _module(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def knn_bench():
    return _module("knn_bench")


def test_generator_is_a_reproducible_clustered_stream(knn_bench):
    corpus = knn_bench.clustered_unit_vectors(3000)
    assert corpus.shape == (3000, 384) and corpus.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(corpus, axis=1), 1.0, atol=1e-5)
    # rows past a corpus are the same stream's continuation: held-out, same distribution
    tail = knn_bench.clustered_unit_vectors(500, skip=2800)
    np.testing.assert_array_equal(tail[:200], corpus[2800:])
    assert not np.isin(tail[200:, 0], corpus[:, 0]).any()
    sims = corpus[:300] @ corpus.T
    nearest = np.sort(sims, axis=1)[:, -2]  # the best other row
    assert 0.05 < sims.mean() < 0.25  # a shared direction, as sentence embeddings have
    assert nearest.mean() > sims.mean() + 0.3  # clustered: neighbours much closer than average


@pytest.mark.integration
def test_knn_bench_tiny_run_writes_sane_json(knn_bench, tmp_path):
    out = tmp_path / "knn.json"
    knn_bench.main(["--sizes", "2000", "--queries", "100", "--epsilons", "0.0", "0.5",
                    "--efs", "10", "100", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["machine"]["cpus"] >= 1
    (result,) = data["results"]["datasets"]
    assert result["n"] == 2000 and result["queries"] == 100 and result["k"] == 10
    methods = result["methods"]
    assert set(methods) == {"exact", "graph", "hnswlib"}
    assert methods["exact"]["curve"][0]["recall"] == 1.0
    graph = {point["setting"]: point for point in methods["graph"]["curve"]}
    assert graph[0.5]["recall"] >= 0.95 and graph[0.5]["recall"] >= graph[0.0]["recall"]
    hnsw = {point["setting"]: point for point in methods["hnswlib"]["curve"]}
    assert hnsw[100]["recall"] >= 0.95
    for data_ in methods.values():
        for point in data_["curve"]:
            assert 0 < point["p50"] <= point["p99"] <= point["max"]
            assert 0.0 <= point["recall"] <= 1.0
    assert methods["graph"]["copies_vectors"] is False  # the graph searches the vectors array itself
    assert methods["graph"]["disk_bytes"] > 0 and methods["hnswlib"]["disk_bytes"] > 0
    assert "exact_over_graph_p50" in result["ratios_at_target"]
    names = [t["name"] for t in data["targets"]]
    assert names == ["synthetic-2000: graph recall@10", "synthetic-2000: graph / hnswlib latency at matched recall",
                     "synthetic-2000: exact / graph latency"]
    assert all(isinstance(t["pass"], bool) or t["pass"] is None for t in data["targets"])


@pytest.mark.parametrize("rows", ["float16", "int8"])
def test_knn_bench_walks_float16_rows_or_their_int8_codes_when_asked(knn_bench, tmp_path, rows):
    out = tmp_path / "knn.json"
    knn_bench.main(["--sizes", "2000", "--queries", "100", "--epsilons", "0.5", "--efs", "100",
                    "--vector-dtype", rows, "--out", str(out)])
    (result,) = json.loads(out.read_text())["results"]["datasets"]
    assert result["graph_vector_dtype"] == rows
    graph = result["methods"]["graph"]
    assert graph["copies_vectors"] is False and graph["curve"][0]["recall"] >= 0.95
    assert graph["memory_bytes"] < 2000 * 384  # the graph and tree, not a copy of the rows


@pytest.mark.integration
def test_scale_bench_tiny_run_serves_from_a_fresh_process(tmp_path):
    scale_bench = _module("scale_bench")
    out = tmp_path / "scale.json"
    scale_bench.main(["--sentences", "1500", "--texts", "synthetic", "--index-kind", "exact", "--queries", "100",
                      "--work-dir", str(tmp_path / "work"), "--out", str(out)])
    data = json.loads(out.read_text())
    serve = data["results"]["serve"]
    assert serve["sentences"] == 1500 and data["results"]["build"]["sentences"] == 1500
    assert serve["queries"] == 100
    for stage in ("after_load", "after_queries"):
        memory = serve["memory"][stage]
        assert memory["ru_maxrss_bytes"] > 50 * 1024 ** 2
        assert memory["vm_hwm_bytes"] >= memory["vm_rss_bytes"] > 0
    assert serve["holdings_bytes"]["vectors"] == 1500 * 384 * 2  # float16
    assert 0 < serve["search_vectors_ms"]["p50"] <= serve["search_vectors_ms"]["p99"]
    assert 0 < serve["search_vectors_shopper_ms"]["p50"] <= serve["search_vectors_shopper_ms"]["p99"]
    assert [t["unit"] for t in data["targets"]] == ["GB", "ms", "ms"]  # RSS, p99 whole sentences, p99 shopper queries
    assert 0.05 < data["targets"][0]["measured"] < 20 and data["targets"][1]["measured"] > 0
    assert "shopper" in data["targets"][2]["name"] and data["targets"][2]["measured"] > 0
    # a second run reuses the cached model dir, and serves it from two processes at once too
    scale_bench.main(["--sentences", "1500", "--texts", "synthetic", "--index-kind", "exact", "--queries", "100",
                      "--work-dir", str(tmp_path / "work"), "--out", str(out), "--workers", "2", "--recall"])
    again = json.loads(out.read_text())
    assert again["results"]["build_cached"] is True
    recall = again["results"]["recall"]  # exact search over float16 rows against exact float32
    assert recall["queries"] == 200 and 0.95 <= recall["recall_at_10_k10"] <= 1.0
    assert 0.95 <= recall["recall_at_10_of_k64"] <= 1.0
    workers = again["results"]["workers"]
    assert workers["count"] == 2 and len(workers["pss_bytes_each"]) == 2
    assert all(50 * 1024 ** 2 < pss <= rss for pss, rss in zip(workers["pss_bytes_each"], workers["rss_bytes_each"]))
    assert [t["unit"] for t in again["targets"]] == ["GB", "GB", "", "ms", "ms"]
    assert again["targets"][2]["measured"] == pytest.approx(recall["recall_at_10_k10"], abs=1e-4)
    assert again["targets"][1]["measured"] == pytest.approx(sum(workers["pss_bytes_each"]) / 1e9, abs=1e-3)

    # the size plot: two sizes, a projection to 10M
    bigger = json.loads(out.read_text())
    bigger["results"]["serve"]["sentences"] = 3000
    (tmp_path / "scale-3000.json").write_text(json.dumps(bigger))
    older = json.loads(out.read_text())  # an earlier run of a size already there: the newest counts
    older["date"] = "2000-01-01T00:00:00+00:00"
    older["results"]["serve"]["search_vectors_ms"]["p50"] = 999.0
    (tmp_path / "scale-old.json").write_text(json.dumps(older))
    plot_scale = _module("plot_scale")
    assert plot_scale.main(["--results", str(tmp_path), "--out", str(tmp_path / "scale.png")]) == 0
    assert (tmp_path / "scale.png").stat().st_size > 10_000
    points = plot_scale.load_points(tmp_path)
    assert [p["sentences"] for p in points] == [1500, 3000] and points[0]["p50"] != 999.0


def test_recall_counts_tied_duplicates_as_found(knn_bench):
    vectors = np.array([[1, 0], [0.6, 0.8], [0.6, 0.8], [0, 1]], dtype=np.float32)
    queries = np.array([[0.8, 0.6]], dtype=np.float32)  # rows 1 and 2 (duplicates) tie for the best
    truth = np.array([[1]])
    assert knn_bench.recall_at(np.array([[2]]), truth, vectors, queries) == 1.0
    assert knn_bench.recall_at(np.array([[2]]), truth) == 0.0  # id overlap alone misses the tie
    assert knn_bench.recall_at(np.array([[0]]), truth, vectors, queries) == 0.0
    assert knn_bench.recall_at(np.array([[-1]]), truth, vectors, queries) == 0.0  # padding is a miss


def test_vector_dtype_bench_tiny_run_compares_float32_and_float16(tmp_path):
    vector_dtype_bench = _module("vector_dtype_bench")
    out = tmp_path / "vector_dtype.json"
    vector_dtype_bench.main(["--n", "6000", "--queries", "100", "--out", str(out)])
    data = json.loads(out.read_text())
    float32, float16 = data["dtypes"]["float32"], data["dtypes"]["float16"]
    assert float16["vector_bytes"] * 2 == float32["vector_bytes"] == 6000 * 384 * 4
    assert float16["recall_at_10_ids"] >= 0.95 and float32["recall_at_10_ids"] >= 0.95
    assert float16["max_score_error_vs_float32"] < 1e-3
    assert float16["graph_k10_ms"]["p50"] > 0


def test_lexical_depth_bench_compares_every_way_side_by_side(fixture_model_dir, tmp_path):
    bench = _module("lexical_depth_bench")
    out = tmp_path / "lexical_depth.json"
    data = bench.main(["--model-dir", str(fixture_model_dir), "--queries", "60", "--out", str(out)])
    assert data["queries"] == 60 and json.loads(out.read_text())["results"]["queries"] == 60
    assert set(data["results"]) == {"whole sentences", "shopper queries"}
    for ways in data["results"].values():
        assert {"every posting", "4k", "4k, 16k", "4k, 16k, 64k"} <= set(ways)
        for row in ways.values():
            # no term of the fixtures has 4,096 postings: every way reads them all, the same answers
            assert row["top10_products_shared"] == 1.0 and row["top10_identical_queries"] == 1.0
            assert row["best_exact_share"] == 1.0
            assert all(0 < row[kind]["p50"] <= row[kind]["p99"] for kind in ("search_ms", "bm25_ms"))