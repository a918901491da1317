"""knn.ivf_index: the inverted file that big catalogues get (clustering, recall, calibration, save/load,
serving over int8 codes) and a model dir built with it."""
import json
from pathlib import Path

import numpy as np
import pytest

from knn.errors import IndexFileError
from knn.index import IVF_MIN_VECTORS, ExactIndex, build_index, choose_kind, compact_vectors, load_index
from knn.ivf_index import IvfIndex, default_lists, spherical_kmeans
from knn.quantized_vectors import FileRows, QuantizedVectors, quantize

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def clustered(n, d=48, seed=0, clusters=40):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, d))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def ivf_and_vectors():
    vectors = compact_vectors(clustered(6000, seed=1))
    return IvfIndex.build(vectors, lists=64), vectors


def recall_at_10(index, vectors, queries, k=64):
    tenth = ExactIndex(vectors).query(queries, 10)[1][:, -1]
    found = [np.count_nonzero(index.query(q[None], k)[1][0, :10] >= t - 1e-5) for q, t in zip(queries, tenth)]
    return sum(found) / (10 * len(queries))


def test_auto_clusters_from_a_million_vectors():
    assert choose_kind("auto", IVF_MIN_VECTORS - 1) == "graph"
    assert choose_kind("auto", IVF_MIN_VECTORS) == "ivf"
    assert choose_kind("ivf", 50) == "ivf"


def test_default_lists_is_the_power_of_two_nearest_the_square_root():
    assert [default_lists(n) for n in (1, 100, 26_000, 1_000_000, 5_000_000)] == [1, 8, 128, 1024, 2048]


def test_every_row_is_in_exactly_one_list_and_lists_hold_their_nearest_rows(ivf_and_vectors):
    ivf, vectors = ivf_and_vectors
    assert sorted(ivf.rows.tolist()) == list(range(len(vectors)))
    assert ivf.offsets[0] == 0 and ivf.offsets[-1] == len(vectors) and np.all(np.diff(ivf.offsets) >= 0)
    np.testing.assert_allclose(np.linalg.norm(ivf.centroids, axis=1), 1.0, atol=1e-5)
    nearest = np.argmax(vectors.astype(np.float32) @ ivf.centroids.T, axis=1)
    for number in range(len(ivf.centroids)):
        members = ivf.rows[ivf.offsets[number]:ivf.offsets[number + 1]]
        assert np.all(nearest[members] == number)
        assert np.all(np.diff(members) > 0)  # each list's rows ascending


def test_spherical_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(8, 16, dtype=np.float32)
    x = centres[np.repeat(np.arange(8), 50)] + 0.05 * rng.normal(size=(400, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    found = spherical_kmeans(x, 8, 10, np.random.default_rng(1))
    assert np.all((found @ centres.T).max(axis=0) > 0.99)  # every true centre has a centroid on it


def test_recall_grows_with_nprobe_and_scores_are_exact(ivf_and_vectors):
    ivf, vectors = ivf_and_vectors
    queries = clustered(100, seed=2)
    recalls = []
    for nprobe in (1, 4, 64):
        ivf.nprobe = nprobe
        recalls.append(recall_at_10(ivf, vectors, queries))
    assert recalls[0] < recalls[1] <= recalls[2] == 1.0  # all lists probed: exact
    ivf.nprobe = 8
    ids, sims = ivf.query(queries[:5], 10)
    np.testing.assert_allclose(sims, np.einsum("qd,qkd->qk", queries[:5], vectors[ids].astype(np.float32)), atol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 1e-7)


def test_calibration_takes_the_least_nprobe_whose_lists_hold_the_target_share(ivf_and_vectors):
    ivf, vectors = ivf_and_vectors
    queries = clustered(150, seed=3)
    report = ivf.calibrate(queries, k=64)
    assert report["nprobe"] == ivf.nprobe and report["covered"][str(ivf.nprobe)] >= 0.995
    assert report["recall_at_10"] >= 0.99  # measured by querying, as serving does
    # one list fewer does not hold the target share: the least such nprobe
    truth = ExactIndex(vectors).query(queries, 10)[0]
    nearest = np.argsort(-(queries @ ivf.centroids.T), axis=1)[:, :ivf.nprobe - 1]
    members = [set(np.concatenate([ivf.rows[ivf.offsets[c]:ivf.offsets[c + 1]] for c in lists]).tolist())
               for lists in nearest]
    share = np.mean([[row in held for row in row_ids] for row_ids, held in zip(truth, members)])
    assert share < 0.995


def test_k_beyond_the_probed_rows_scans_them_all(ivf_and_vectors):
    ivf, vectors = ivf_and_vectors
    ivf.nprobe = 1
    ids, _ = ivf.query(vectors[:1].astype(np.float32), 2000)
    assert len(set(ids[0].tolist())) == 2000
    np.testing.assert_array_equal(ids[0, :50], ExactIndex(vectors).query(vectors[:1].astype(np.float32), 50)[0][0])


@pytest.mark.parametrize("in_list_order", [False, True])
def test_served_over_int8_codes_it_answers_like_float16(ivf_and_vectors, tmp_path, in_list_order):
    ivf, vectors = ivf_and_vectors
    ivf.nprobe = 8
    np.save(tmp_path / "vectors.npy", vectors)
    codes, scales = quantize(vectors)
    rows = FileRows(tmp_path / "vectors.npy")
    served = (QuantizedVectors.in_order(codes, scales, rows, ivf.rows) if in_list_order
              else QuantizedVectors(codes, scales, rows))
    coded = IvfIndex(served, ivf.centroids, ivf.offsets, ivf.rows, ivf.nprobe)
    assert coded._coded == in_list_order  # a probed list is one run of codes
    queries = clustered(50, seed=4)
    assert recall_at_10(coded, vectors, queries, k=10) >= 0.99  # k=10 still re-scores 64 candidates
    ids, sims = coded.query(queries, 64)
    plain_ids, plain_sims = ivf.query(queries, 64)
    assert np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(ids, plain_ids)]) >= 0.99
    np.testing.assert_allclose(sims[:, :10], plain_sims[:, :10], atol=2e-3)


def test_codes_in_list_order_answer_by_row_like_codes_in_row_order(ivf_and_vectors, tmp_path):
    ivf, vectors = ivf_and_vectors
    np.save(tmp_path / "vectors.npy", vectors)
    codes, scales = quantize(vectors)
    rows = FileRows(tmp_path / "vectors.npy")
    plain, ordered = QuantizedVectors(codes, scales, rows), QuantizedVectors.in_order(codes, scales, rows, ivf.rows)
    queries = clustered(3, seed=9)
    asked = np.array([5, 4000, 17, 5])
    np.testing.assert_array_equal(ordered.approximate(queries, asked), plain.approximate(queries, asked))
    np.testing.assert_array_equal(ordered.approximate(queries), plain.approximate(queries))  # all, by row
    np.testing.assert_array_equal(ordered.float32_block(100, 300), plain.float32_block(100, 300))
    np.testing.assert_array_equal(ordered.codes[ordered.positions[asked]], codes[asked])
    from knn.float16_graph import Float16Graph

    with pytest.raises(ValueError, match="row order"):
        Float16Graph({"_search_graph": None}, ordered)


def test_save_load_round_trip_maps_plain_arrays(ivf_and_vectors, tmp_path):
    ivf, vectors = ivf_and_vectors
    ivf.calibrate(clustered(60, seed=5), k=64)
    files = ivf.save(tmp_path / "index")
    assert sorted(p.name for p in files) == ["ivf_arrays.npz", "ivf_state.json"]
    with np.load(files[1], allow_pickle=False) as arrays:  # no pickle anywhere
        assert sorted(arrays.files) == ["centroids", "offsets", "rows"]
    loaded = load_index("ivf", tmp_path / "index", vectors)
    assert loaded.nprobe == ivf.nprobe and loaded.calibration == json.loads(json.dumps(ivf.calibration))
    assert isinstance(loaded.rows, np.memmap) or not loaded.rows.flags.owndata  # mapped, not read
    queries = clustered(20, seed=6)
    np.testing.assert_array_equal(loaded.query(queries, 10)[0], ivf.query(queries, 10)[0])


def test_load_refuses_a_damaged_or_mismatched_inverted_file(ivf_and_vectors, tmp_path):
    ivf, vectors = ivf_and_vectors
    ivf.save(tmp_path / "index")
    with pytest.raises(IndexFileError, match="does not match the model's 100 vectors"):
        load_index("ivf", tmp_path / "index", vectors[:100])
    (tmp_path / "index" / "ivf_arrays.npz").write_bytes(b"not a zip")
    with pytest.raises(IndexFileError, match="cannot read the inverted file.*rebuild the model"):
        load_index("ivf", tmp_path / "index", vectors)


def test_build_index_calibrates_an_inverted_file_on_held_out_queries():
    vectors = clustered(3000, seed=7)
    index = build_index(vectors, "ivf", calibration_queries=clustered(100, seed=8), calibration_k=64)
    assert index.kind == "ivf" and index.calibration["queries"] == 100 and index.calibration["recall_at_10"] >= 0.99


def test_a_model_dir_with_an_inverted_file_serves_int8_codes_and_stored_texts(tmp_path):
    from knn.build import build_model_dir
    from knn.model_dir import load_model_dir

    figures = build_model_dir(FIXTURES / "reviews.csv", tmp_path / "model", index_kind="ivf")
    assert figures["index_kind"] == "ivf" and "sentence_nprobe" in figures and "headline_nprobe" in figures
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["index_kind"] == "ivf" and manifest["headline_index_kind"] == "ivf"
    for name in ("index/ivf_arrays.npz", "vector_codes.npy", "vector_code_rows.npy", "vector_code_positions.npy",
                 "headline_vector_codes.npy", "texts/catalog.review_body.txt"):
        assert name in manifest["files"]
    assert not any(name.startswith("kernels/") for name in manifest["files"])  # nothing walks a graph
    search = load_model_dir(tmp_path / "model")
    assert search.index.kind == "ivf" and isinstance(search.corpus.vectors, QuantizedVectors)
    assert search.index._coded and search.headline_index._coded  # the codes are stored in the lists' order
    results = search.search("my kids loved it", 3)
    assert len(results) == 3 and all(r["matched_sentence"] for r in results)
