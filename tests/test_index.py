"""knn.index: exact and pynndescent search, tiny corpora, k clamping, save/load without pickle."""
import numpy as np
import pytest

from knn.errors import IndexFileError
from knn.index import ExactIndex, GraphIndex, build_index, choose_kind, load_index


def unit_vectors(n, d=32, seed=0, clusters=8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, d))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n", [1, 5, 50])
def test_tiny_corpora_return_what_there_is(n):
    vectors = unit_vectors(n)
    index = build_index(vectors, "auto")
    assert index.kind == "exact"
    ids, sims = index.query(vectors[:1], k=100)
    assert ids.shape == (1, n)
    assert ids[0, 0] == 0 and sims[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert len(set(ids[0].tolist())) == n  # no padded duplicates
    assert np.all(np.diff(sims[0]) <= 1e-7)  # best first


def test_exact_ties_break_by_lower_id():
    vectors = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], dtype=np.float32)
    ids, _ = ExactIndex(vectors).query(np.array([[1, 0]], np.float32), k=3)
    assert ids[0].tolist() == [0, 2, 3]


def test_choose_kind():
    assert choose_kind("auto", 10) == "exact"
    assert choose_kind("auto", 100_000) == "graph"
    assert choose_kind("graph", 2) == "exact"
    with pytest.raises(ValueError, match="index kind"):
        choose_kind("hnsw", 10)


def test_query_dimension_mismatch():
    with pytest.raises(ValueError, match="dimensions"):
        ExactIndex(unit_vectors(5, d=8)).query(np.ones((1, 4), np.float32), 1)


@pytest.fixture(scope="module")
def graph_and_vectors():
    vectors = unit_vectors(2000, d=32, seed=3)
    return GraphIndex.build(vectors, n_neighbors=15), vectors


def test_graph_recall_and_exact_rescoring(graph_and_vectors):
    graph, vectors = graph_and_vectors
    queries = vectors[:100]
    ids, sims = graph.query(queries, 10)
    exact_ids, exact_sims = ExactIndex(vectors).query(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids)])
    assert recall >= 0.99
    # scores are true dot products, not pynndescent's capped distances
    np.testing.assert_allclose(sims, np.einsum("qd,qkd->qk", queries, vectors[ids]), rtol=1e-5)
    assert ids.shape == (100, 10)


def test_graph_k_beyond_corpus_is_clamped(graph_and_vectors):
    graph, vectors = graph_and_vectors
    ids, _ = graph.query(vectors[:1], k=5000)
    assert ids.shape[1] <= len(vectors)
    assert len(set(ids[0].tolist())) == ids.shape[1]


def test_graph_save_load_roundtrip_without_pickle(graph_and_vectors, tmp_path):
    graph, vectors = graph_and_vectors
    files = graph.save(tmp_path)
    assert {f.name for f in files} == {"graph_state.json", "graph_arrays.npz"}
    with np.load(tmp_path / "graph_arrays.npz", allow_pickle=False) as arrays:
        assert all(arrays[name].dtype != object for name in arrays.files)
    loaded = load_index("graph", tmp_path, vectors)
    a, _ = graph.query(vectors[10:30], 10)
    b, _ = loaded.query(vectors[10:30], 10)
    assert (a == b).all()


def test_graph_load_refuses_mismatched_vectors(graph_and_vectors, tmp_path):
    graph, vectors = graph_and_vectors
    graph.save(tmp_path)
    with pytest.raises(IndexFileError, match="does not match"):
        load_index("graph", tmp_path, vectors[:100])
    (tmp_path / "graph_arrays.npz").write_bytes(b"garbage")
    with pytest.raises(IndexFileError, match="cannot read"):
        load_index("graph", tmp_path, vectors)
