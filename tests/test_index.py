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


# --- float16 vectors (issue 14) --------------------------------------------------------------------
def test_compact_vectors_float16_round_trip(tmp_path):
    from knn.index import compact_vectors

    vectors = unit_vectors(500, d=64)
    vectors[0, :3] = [1e-6, -3e-5, 0.0]  # below float16's smallest normal: flushed to zero
    half = compact_vectors(vectors)
    assert half.dtype == np.float16 and half.flags.c_contiguous and half.shape == vectors.shape
    assert half[0, :3].tolist() == [0.0, 0.0, 0.0]
    assert np.abs(half.astype(np.float32) - vectors).max() < 2 ** -11
    np.save(tmp_path / "v.npy", half, allow_pickle=False)
    loaded = np.load(tmp_path / "v.npy", allow_pickle=False)
    assert loaded.dtype == np.float16 and np.array_equal(loaded, half)
    assert compact_vectors(half) is half  # already compact: no copy
    assert compact_vectors(half, "float32").dtype == np.float32
    with pytest.raises(ValueError, match="dtype"):
        compact_vectors(vectors, "int8")


def test_exact_float16_matches_float32_on_20k_vectors():
    from knn.index import compact_vectors, similarities

    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(20_000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.choice(len(vectors), 50, replace=False)] + 0.5 * rng.normal(size=(50, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact_ids, exact_sims = ExactIndex(vectors).query(queries, 10)
    ids, sims = ExactIndex(compact_vectors(vectors)).query(queries, 10)
    assert sims.dtype == np.float32
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids)])
    assert recall >= 0.99
    np.testing.assert_allclose(sims, np.einsum("qd,qkd->qk", queries, vectors[ids]), atol=1e-3)
    np.testing.assert_allclose(sims, exact_sims, atol=1e-3)
    rows = np.array([5, 0, 19_999, 5])
    np.testing.assert_allclose(similarities(queries, compact_vectors(vectors), rows), queries @ vectors[rows].T,
                               atol=1e-3)
    assert similarities(queries, compact_vectors(vectors), np.array([], np.int64)).shape == (50, 0)


def test_graph_over_float16_recall_and_scores(graph_and_vectors, tmp_path):
    from knn.index import compact_vectors

    graph, vectors = graph_and_vectors
    graph.save(tmp_path)
    half = compact_vectors(vectors)
    loaded = load_index("graph", tmp_path, half)
    assert loaded.vectors is half  # searches the float16 array itself, no float32 copy
    assert type(loaded._nnd).__name__ == "Float16Graph"
    queries = vectors[:100]
    exact_ids, _ = ExactIndex(vectors).query(queries, 10)
    for batch in (True, False):  # one call for all queries, and the single-query serving path
        if batch:
            ids, sims = loaded.query(queries, 10)
        else:
            found = [loaded.query(q, 10) for q in queries]
            ids, sims = np.vstack([f[0] for f in found]), np.vstack([f[1] for f in found])
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids)])
        assert recall >= 0.99
        assert sims.dtype == np.float32
        np.testing.assert_allclose(sims, np.einsum("qd,qkd->qk", queries, vectors[ids]), atol=1e-3)
        assert np.all(np.diff(sims, axis=1) <= 1e-7)  # best first
    # the same graph over float32 finds (nearly) the same ids
    float32_ids, _ = graph.query(queries, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, float32_ids)]) >= 0.99
    # unnormalised queries are normalised, as pynndescent does
    scaled_ids, _ = loaded.query(queries[:5] * 3.0, 10)
    assert (scaled_ids == loaded.query(queries[:5], 10)[0]).all()


@pytest.mark.parametrize("rows", ["float32", "float16"])
def test_threads_searching_one_graph_at_once_get_the_answers_of_one_thread(graph_and_vectors, tmp_path, rows):
    """The walk's scratch is one per graph: threads searching one model at once (an endpoint worker
    with several request threads) must not see each other's (they did: 125 of 300 answers differed)."""
    from concurrent.futures import ThreadPoolExecutor

    from knn.index import compact_vectors

    graph, vectors = graph_and_vectors
    if rows == "float16":
        graph.save(tmp_path)
        graph = load_index("graph", tmp_path, compact_vectors(vectors))
    queries = unit_vectors(200, d=32, seed=21)
    alone = [graph.query(q, 10)[0].tolist() for q in queries]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(lambda q: graph.query(q, 10)[0].tolist(), queries)) == alone


def test_float16_graph_holds_only_the_split_nodes_hyperplanes_and_saves_them_whole(graph_and_vectors, tmp_path):
    """A leaf's hyperplane row is all zeros in pynndescent's trees: the float16 walk keeps the split
    nodes' rows only, finds what a walk over every row finds, and saves the trees back as they were."""
    from knn.index import compact_vectors

    graph, vectors = graph_and_vectors
    graph.save(tmp_path / "saved")
    with np.load(tmp_path / "saved" / "graph_arrays.npz") as npz:
        saved = {name: npz[name] for name in npz.files}
    full = saved["forest.0.hyperplanes"]
    loaded = load_index("graph", tmp_path / "saved", compact_vectors(vectors))
    walk = loaded._nnd
    planes = walk._tree[0]
    split_nodes = int((saved["forest.0.children"][:, 0] > 0).sum())
    assert planes.shape == (1, split_nodes, full.shape[1]) and split_nodes < 0.6 * len(full)
    queries = vectors[:200] + 0.05
    ids = loaded.query(queries, 10)[0]
    walk._tree, walk._node_rows = (full[None], *walk._tree[1:]), np.arange(len(full), dtype=np.int32)[None]
    assert (loaded.query(queries, 10)[0] == ids).all()
    load_index("graph", tmp_path / "saved", compact_vectors(vectors)).save(tmp_path / "again")
    with np.load(tmp_path / "again" / "graph_arrays.npz") as npz:
        for name in saved:
            if name.startswith("forest."):
                assert np.array_equal(npz[name], saved[name]), name


def test_graph_built_over_float16_saves_and_loads_either_way(tmp_path):
    from knn.index import compact_vectors

    vectors = unit_vectors(600, d=16, seed=5)
    half = compact_vectors(vectors)
    index = build_index(half, "graph", n_neighbors=10)
    assert index.vectors is half
    files = index.save(tmp_path)
    assert {f.name for f in files} == {"graph_state.json", "graph_arrays.npz"}
    a, _ = index.query(vectors[:20], 5)
    b, _ = load_index("graph", tmp_path, half).query(vectors[:20], 5)
    c, _ = load_index("graph", tmp_path, vectors).query(vectors[:20], 5)  # a float32 model dir
    assert (a == b).all()
    assert np.mean([len(set(x) & set(y)) / 5 for x, y in zip(a, c)]) >= 0.95
    assert build_index(half, "exact").vectors is half


def test_serving_a_float16_graph_never_imports_pynndescent(graph_and_vectors, tmp_path):
    """pynndescent's import compiles its typed functions (~18 s on an empty numba cache): a process
    serving float16 rows walks the graph without it."""
    import subprocess
    import sys

    from knn.index import compact_vectors

    graph, vectors = graph_and_vectors
    graph.save(tmp_path / "index")
    np.save(tmp_path / "vectors.npy", compact_vectors(vectors))
    expected = load_index("graph", tmp_path / "index", compact_vectors(vectors)).query(vectors[:3], 5)[0]
    code = ("import sys, numpy as np; from pathlib import Path; from knn.index import load_index; "
            f"d = Path({str(tmp_path)!r}); v = np.load(d / 'vectors.npy'); "
            "ids, _ = load_index('graph', d / 'index', v).query(v[:3].astype(np.float32), 5); "
            "print(ids.tolist()); print('pynndescent' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[1] == "False"
    assert out[0] == str(expected.tolist())


def test_kernels_compiled_in_background_are_the_ones_a_served_query_calls(graph_and_vectors, tmp_path):
    """compile_in_background types its kernels as a model dir's read-only float16 rows: the query that
    follows calls the very functions compiled, nothing is compiled twice, and the answer is the same."""
    import subprocess
    import sys

    from knn.index import compact_vectors

    graph, vectors = graph_and_vectors
    graph.save(tmp_path / "index")
    np.save(tmp_path / "vectors.npy", compact_vectors(vectors))
    expected = load_index("graph", tmp_path / "index", compact_vectors(vectors)).query(vectors[:3], 5)[0]
    code = ("import numpy as np; from pathlib import Path; import knn.float16_graph as f; from knn.index import "
            "load_index, similarities; f.compile_in_background(); f.compile_in_background(); "
            f"d = Path({str(tmp_path)!r}); v = np.asarray(np.load(d / 'vectors.npy', mmap_mode='r')); "
            "ids, _ = load_index('graph', d / 'index', v).query(v[:3].astype(np.float32), 5); "
            "similarities(v[:1].astype(np.float32), v, np.arange(len(v))); f._BACKGROUND.join(); "
            "walk, dots = f.float16_kernels(); print(ids.tolist()); "
            "print(len(walk.signatures), len(dots.signatures), f._BACKGROUND.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == str(expected.tolist())
    assert out[1] == "1 1 float16-kernels"


_BUILD_IN_A_FRESH_PROCESS = (
    "import numpy as np; from knn.index import GraphIndex; from knn.cached_nn_descent import cache_counts; "
    "rng = np.random.default_rng(5); v = rng.standard_normal((600, 24)).astype(np.float32); "
    "v /= np.linalg.norm(v, axis=1, keepdims=True); g = GraphIndex.build(v, n_neighbors=10); "
    "print(cache_counts()); print(g.query(v[:4], 5)[0].tolist())")


def test_graph_build_compiles_once_per_machine_not_per_process():
    """pynndescent's nn_descent is not disk-cached by pynndescent (~50 s of numba compile in every
    process that builds a graph); knn.cached_nn_descent compiles it once and later processes read it."""
    import subprocess
    import sys

    runs = [subprocess.run([sys.executable, "-c", _BUILD_IN_A_FRESH_PROCESS], capture_output=True, text=True,
                           check=True).stdout.split("\n") for _ in range(2)]
    assert runs[1][0] == "(1, 0)", runs[1][0]  # read from numba's cache, nothing compiled
    assert runs[0][1] == runs[1][1]


@pytest.mark.integration
def test_cached_graph_build_equals_pynndescents_own():
    """The cached compile builds pynndescent's graph to the bit (pynndescent's own path compiles ~50 s)."""
    import subprocess
    import sys

    code = (
        "import numpy as np, pynndescent.pynndescent_ as p; from pynndescent import NNDescent; "
        "from knn.cached_nn_descent import route_cosine_builds, cache_counts; assert route_cosine_builds(); "
        "rng = np.random.default_rng(7); v = rng.standard_normal((6000, 48)).astype(np.float32); "
        "build = lambda: NNDescent(v, metric='cosine', n_neighbors=20, random_state=42, compressed=True)._neighbor_graph; "
        "routed = build(); hits, compiles = cache_counts(); assert hits + compiles == 1, (hits, compiles); "
        "import knn.cached_nn_descent as c; p.nn_descent = c._state['original']; own = build(); "
        "print(np.array_equal(routed[0], own[0]), np.array_equal(routed[1], own[1]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"], out


def test_calibration_raises_epsilon_until_the_target_and_the_model_keeps_it(tmp_path):
    vectors = unit_vectors(3000, d=32, seed=11)
    queries = unit_vectors(200, d=32, seed=12)
    graph = GraphIndex.build(vectors, n_neighbors=8)
    unreachable = graph.calibrate(queries, k=10, target=1.01, epsilons=(0.0, 0.1, 0.2))
    assert unreachable["queries"] == 200 and list(unreachable["tried"]) == ["0", "0.1", "0.2"]
    assert graph.epsilon == 0.2  # none reached it: the last tried stays
    # the figure is recall@10 against exact search (an id counts when as similar as the 10th true one)
    tenth = ExactIndex(vectors).query(queries, 10)[1][:, -1]
    found = [np.count_nonzero(graph.query(q[None], 10)[1][0] >= t - 1e-5) for q, t in zip(queries, tenth)]
    assert unreachable["recall_at_10"] == round(sum(found) / 2000, 4) < 1.0
    met = graph.calibrate(queries, k=10, target=0.25, epsilons=(0.05, 0.3))
    assert list(met["tried"]) == ["0.05"] and met["recall_at_10"] >= 0.25 and graph.epsilon == 0.05
    assert graph.calibrate(unit_vectors(500, d=32, seed=15), k=10, target=0.0)["queries"] == 200  # a sample
    graph.epsilon = 0.45
    graph.save(tmp_path / "index")
    assert load_index("graph", tmp_path / "index", vectors).epsilon == 0.45


def test_build_index_calibrates_a_graph_on_held_out_queries():
    vectors = unit_vectors(3000, d=32, seed=13)
    graph = build_index(vectors, "graph", calibration_queries=unit_vectors(50, d=32, seed=14), calibration_k=64,
                        n_neighbors=8)
    assert graph.calibration["queries"] == 50 and graph.calibration["k"] == 64
    assert graph.calibration["recall_at_10"] >= 0.99 or graph.epsilon == 0.8
    assert build_index(vectors, "exact", calibration_queries=vectors[:5]).kind == "exact"
