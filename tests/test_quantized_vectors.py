"""knn.quantized_vectors and knn.stored_texts: int8 codes walked and ranked, float16 rows and texts read
from their files when needed, and graph model dirs that serve them (and older ones given them)."""
import gc
import html
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from knn.index import ExactIndex, GraphIndex, compact_vectors, load_index, similarities
from knn.quantized_vectors import FileRows, QuantizedVectors, quantize

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def unit_vectors(n, d=32, seed=0, clusters=8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = (centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


def quantized(vectors, tmp_path, name="vectors.npy") -> QuantizedVectors:
    half = compact_vectors(vectors)
    np.save(tmp_path / name, half)
    codes, scales = quantize(half)
    return QuantizedVectors(codes, scales, FileRows(tmp_path / name))


def test_codes_are_within_half_a_step_and_use_the_whole_range():
    vectors = unit_vectors(3000, d=16)
    vectors[:, 5] = 0  # a dimension that is zero everywhere
    codes, scales = quantize(vectors)
    assert codes.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (16,)
    assert np.all(np.abs(codes.astype(np.float32) * scales - vectors) <= scales / 2 + 1e-6)
    assert np.all(np.abs(codes[:, [d for d in range(16) if d != 5]]).max(axis=0) == 127)
    assert scales[5] == 1 and not codes[:, 5].any()


def test_file_rows_reads_rows_in_any_order_and_never_maps_the_file(tmp_path):
    array = compact_vectors(unit_vectors(500, d=24))
    np.save(tmp_path / "rows.npy", array)
    rows = FileRows(tmp_path / "rows.npy")
    assert rows.shape == (500, 24) and rows.dtype == np.float16 and len(rows) == 500
    wanted = np.array([7, 3, 3, 4, 5, 499, 0, 6])  # repeats, runs and any order
    np.testing.assert_array_equal(rows.take(wanted), array[wanted])
    np.testing.assert_array_equal(rows.block(490, 600), array[490:])  # clamped to the file
    assert rows.take(np.zeros(0, np.int64)).shape == (0, 24)
    with pytest.raises(IndexError, match="out of range"):
        rows.take([500])
    assert str(tmp_path / "rows.npy") not in mapped_files()


def test_approximate_scores_are_close_to_exact_on_either_path(tmp_path):
    vectors = unit_vectors(2000, d=384, seed=1)
    served = quantized(vectors, tmp_path)
    queries = unit_vectors(3, d=384, seed=2)
    exact = queries @ vectors.T
    few = np.arange(0, 2000, 7)  # numpy widens a few hundred rows
    np.testing.assert_allclose(served.approximate(queries, few), exact[:, few], atol=0.01)
    everything = served.approximate(queries)  # 2000 x 384: the numba kernel over int8 codes
    np.testing.assert_allclose(everything, exact, atol=0.01)
    np.testing.assert_allclose(everything[:, few], served.approximate(queries, few), atol=1e-5)
    np.testing.assert_allclose(served.float32_block(10, 20) @ queries.T, exact[:, 10:20].T, atol=1e-5 + 0.01)


def test_a_graph_walks_the_codes_and_rescores_from_the_file(tmp_path):
    vectors = unit_vectors(2000, d=32, seed=3)
    graph = GraphIndex.build(vectors, n_neighbors=15)
    graph.save(tmp_path / "index")
    served = quantized(vectors, tmp_path)
    loaded = load_index("graph", tmp_path / "index", served)
    assert loaded.vectors is served and loaded._nnd._bits is served.codes  # walks the int8 codes
    queries = vectors[:100]
    exact_ids, _ = ExactIndex(vectors).query(queries, 10)
    half = compact_vectors(vectors).astype(np.float32)
    # Serving asks a walk for more than it keeps (k=64 per query sentence): int8 scores alone rank the
    # true top 10 of these 32-dimension vectors for ~0.92 of them, re-scored from the file for all.
    for batch in (True, False):
        if batch:
            ids, sims = loaded.query(queries, 20)
        else:
            found = [loaded.query(q, 20) for q in queries]
            ids, sims = np.vstack([f[0] for f in found]), np.vstack([f[1] for f in found])
        assert np.mean([len(set(a[:10]) & set(b)) / 10 for a, b in zip(ids, exact_ids)]) >= 0.99
        # the scores are the float16 rows' (read from the file), not the codes'
        np.testing.assert_allclose(sims, np.einsum("qd,qkd->qk", queries, half[ids]), atol=1e-5)
    exact_on_file = ExactIndex(served).query(queries[:5], 10)
    exact_in_memory = ExactIndex(compact_vectors(vectors)).query(queries[:5], 10)
    np.testing.assert_array_equal(exact_on_file[0], exact_in_memory[0])
    np.testing.assert_allclose(similarities(queries[:2], served), similarities(queries[:2], compact_vectors(vectors)))
    assert str(tmp_path / "vectors.npy") not in mapped_files()


TITLE_FILES = ("titles.parquet", "title_vectors.npy", "lexical/titles.npz", "lexical/titles_vocabulary.json")


def _without_codes(source: Path, target: Path, titles: bool = True) -> Path:
    """A copy of a model dir as written before the int8 codes, the stored texts and the shipped kernels (and, unless
    `titles`, before the product titles)."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    for name in [n for n in manifest["files"] if "vector_codes" in n or "vector_scales" in n or n.startswith("texts/")
                 or n.startswith("kernels/") or (not titles and n in TITLE_FILES)]:
        del manifest["files"][name]
        (target / name).unlink()
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_a_graph_model_serves_int8_codes_and_answers_like_float16(graph_model_dir, tmp_path, monkeypatch):
    import knn.model_dir as model_dir
    from knn.model_dir import load_model_dir

    monkeypatch.setattr(model_dir, "VECTOR_ROWS_MAPPED_BYTES", 0)  # as a big catalogue's: rows read, never mapped
    files = json.loads((graph_model_dir / "manifest.json").read_text())["files"]
    for name in ("vector_codes.npy", "vector_scales.npy", "headline_vector_codes.npy", "headline_vector_scales.npy"):
        assert name in files
    search = load_model_dir(graph_model_dir)
    assert isinstance(search.corpus.vectors, QuantizedVectors)
    assert isinstance(search.corpus.headline_vectors, QuantizedVectors)
    assert "review_body" not in search.corpus.catalog and "sentence" not in search.corpus.sentences  # stored texts
    older = load_model_dir(_without_codes(graph_model_dir, tmp_path / "older"))
    assert older.corpus.vectors.dtype == np.float16 and not isinstance(older.corpus.vectors, QuantizedVectors)
    assert older.corpus.texts is None and "review_body" in older.corpus.catalog
    catalog = older.corpus.catalog.set_index("review_id")
    fields = ["product_id", "product_title", "star_rating", "review_headline", "review_body"]
    for item in json.loads((FIXTURES / "queries.json").read_text()):
        new, old = search.search(item["query"], 3), older.search(item["query"], 3)
        assert [r["product_id"] for r in new] == [r["product_id"] for r in old], item["query"]
        for a, b in zip(new, old):
            assert abs(a["product_search_score"] - b["product_search_score"]) < 0.01
            # the stored texts show the review's own fields (int8 scores may pick another review of a
            # product when two passages are within the codes' rounding)
            assert [a[f] for f in fields] == [catalog.loc[a["review_id"], f] for f in fields]
            shown = a["review_body"] if a["matched_field"] == "body" else a["review_headline"]
            assert a["matched_sentence"] in html.unescape(shown)  # sentences are split from unescaped text
    np.testing.assert_array_equal(search._body.weight, older._body.weight)  # word counts from the stored texts
    np.testing.assert_array_equal(search._body.negated, older._body.negated)
    gc.collect()  # a model loaded by an earlier test (rows mapped by default) is gone with its maps
    maps = mapped_files()
    assert str(graph_model_dir / "vector_codes.npy") in maps
    assert str(graph_model_dir / "vectors.npy") not in maps and str(graph_model_dir / "headline_vectors.npy") not in maps


def test_asked_for_few_a_walk_over_codes_rescores_more_and_keeps_the_best(tmp_path, monkeypatch):
    import knn.index as index_module

    vectors = unit_vectors(2000, d=32, seed=3)
    graph = GraphIndex.build(vectors, n_neighbors=15)
    graph.save(tmp_path / "index")
    loaded = load_index("graph", tmp_path / "index", quantized(vectors, tmp_path))
    queries = vectors[:200] + 0.05 * unit_vectors(200, d=32, seed=4)  # near rows of the corpus, as real queries are
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact_ids, _ = ExactIndex(vectors).query(queries, 5)

    def recall(batch: bool) -> float:
        if batch:
            ids, sims = loaded.query(queries, 5)
        else:
            found = [loaded.query(q, 5) for q in queries]
            ids, sims = np.vstack([f[0] for f in found]), np.vstack([f[1] for f in found])
        assert ids.shape == sims.shape == (len(queries), 5) and np.all(np.diff(sims, axis=1) <= 0)
        return float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, exact_ids)]))

    assert recall(True) >= 0.99 and recall(False) >= 0.99
    monkeypatch.setattr(index_module, "RESCORED_FROM_CODES", 5)  # the walk's own 5, ranked by the codes
    assert recall(True) < 0.99


def test_a_small_models_rows_are_mapped_and_answer_as_rows_read_from_the_file(graph_model_dir, monkeypatch):
    import knn.model_dir as model_dir
    from knn.model_dir import load_model_dir
    from knn.quantized_vectors import MappedRows

    mapped = load_model_dir(graph_model_dir)
    assert isinstance(mapped.corpus.vectors.rows, MappedRows) and isinstance(mapped.corpus.headline_vectors.rows, MappedRows)
    assert str(graph_model_dir / "vectors.npy") in mapped_files()
    monkeypatch.setattr(model_dir, "VECTOR_ROWS_MAPPED_BYTES", 0)
    read = load_model_dir(graph_model_dir)
    assert isinstance(read.corpus.vectors.rows, FileRows)
    for item in json.loads((FIXTURES / "queries.json").read_text()):
        assert mapped.search(item["query"], 5) == read.search(item["query"], 5), item["query"]
    rows = np.array([3, 0, 3, len(mapped.corpus.vectors) - 1])
    np.testing.assert_array_equal(mapped.corpus.vectors.rows.take(rows), read.corpus.vectors.rows.take(rows))
    np.testing.assert_array_equal(mapped.corpus.vectors.rows.block(-2, 5), read.corpus.vectors.rows.block(-2, 5))
    with pytest.raises(IndexError):
        mapped.corpus.vectors.rows.take([len(mapped.corpus.vectors)])


def test_a_model_dir_written_before_the_codes_is_given_them(graph_model_dir, tmp_path):
    from knn.model_dir import add_serving_files, load_model_dir, verify_model_dir

    older = _without_codes(graph_model_dir, tmp_path / "older", titles=False)
    added = add_serving_files(older)
    written = json.loads((graph_model_dir / "manifest.json").read_text())["files"]
    # The kernels are numba's cache files as they are when written: the entries the machine's cache
    # holds then (other tests compile other signatures meanwhile), so they are compared by kind.
    kernels = sorted(n for n in added if n.startswith("kernels/"))
    added = [n for n in added if not n.startswith("kernels/")]
    assert sorted(added) == sorted(n for n in written if "vector_codes" in n or "vector_scales" in n or
                                   n.startswith("texts/") or n in TITLE_FILES)
    assert "texts/catalog.review_body.txt" in added and "headline_vector_codes.npy" in added
    assert sorted(n for n in kernels if n.endswith(".nbi")) == sorted(n for n in written if n.startswith("kernels/")
                                                                     and n.endswith(".nbi"))
    verify_model_dir(older)
    for name in added:  # the very files a fit writes
        assert (older / name).read_bytes() == (graph_model_dir / name).read_bytes()
    loaded = load_model_dir(older)
    assert isinstance(loaded.corpus.vectors, QuantizedVectors) and "catalog.review_body" in loaded.corpus.texts
    assert loaded.corpus.title_vectors is not None and loaded.corpus.title_lexical is not None
    assert add_serving_files(older) == []


def test_stored_texts_read_rows_and_blocks_and_refuse_a_changed_file(tmp_path):
    from knn.stored_texts import StoredTexts, write_texts

    texts = ["first", "", "naïve café ☕", "x" * 5000, "last one"]
    write_texts(tmp_path, "t.column", texts)
    stored = StoredTexts(tmp_path, "t.column")
    assert len(stored) == 5 and [stored[i] for i in range(5)] == texts
    assert [t for block in stored.blocks(2) for t in block] == texts
    assert stored.offsets.dtype == np.uint32
    with pytest.raises(IndexError):
        stored[5]
    assert str(tmp_path / "t.column.txt") not in mapped_files()
    (tmp_path / "t.column.txt").write_bytes(b"short")
    with pytest.raises(ValueError, match="offsets do not fit"):
        StoredTexts(tmp_path, "t.column")


def test_kernels_compiled_in_background_for_codes_are_the_ones_a_served_query_calls(graph_model_dir):
    """compile_in_background("int8") types the kernels as a model dir's mapped read-only codes: the
    queries that follow (the walks, and the ranking's dot products over many rows) compile nothing more."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; import knn.float16_graph as f; from knn.model_dir import load_model_dir; "
            "f.compile_in_background('int8'); search = load_model_dir(sys.argv[1]); "
            "search.search('a toy for the bath that floats', 3); v = search.corpus.vectors; "
            "v.approximate(np.ones((1, v.shape[1]), np.float32), np.arange(2000) % len(v)); f._BACKGROUND.join(); "
            "walk, dots = f.float16_kernels(); print(len(walk.signatures), len(dots.signatures))")
    done = subprocess.run([sys.executable, "-c", code, str(graph_model_dir)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["1", "1"]


def test_npz_arrays_are_mapped_read_only_and_equal_what_numpy_reads(tmp_path):
    from knn.mapped_npz import load_npz

    arrays = {"ints": np.arange(1000, dtype=np.int32), "planes": unit_vectors(50, d=8), "empty": np.zeros((0, 3)),
              "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)), "scalar": np.int64(7)}
    np.savez(tmp_path / "plain.npz", **arrays)
    np.savez_compressed(tmp_path / "packed.npz", **arrays)
    for name in ("plain.npz", "packed.npz"):
        loaded = load_npz(tmp_path / name)
        assert sorted(loaded) == sorted(arrays)
        for key, value in arrays.items():
            np.testing.assert_array_equal(loaded[key], value)
            assert loaded[key].dtype == np.asarray(value).dtype
    plain, packed = load_npz(tmp_path / "plain.npz"), load_npz(tmp_path / "packed.npz")
    assert not plain["ints"].flags.writeable and packed["ints"].flags.writeable
    assert str(tmp_path / "plain.npz") in mapped_files()  # mapped, not read
    assert str(tmp_path / "packed.npz") not in mapped_files()  # compressed members are read
    assert load_npz(tmp_path / "plain.npz", mapped=False)["ints"].flags.writeable
    (tmp_path / "broken.npz").write_bytes((tmp_path / "plain.npz").read_bytes()[:-100])
    with pytest.raises((ValueError, OSError, zipfile.BadZipFile)):
        load_npz(tmp_path / "broken.npz")


def test_saved_npz_arrays_start_aligned_and_read_as_numpy_reads_them(tmp_path):
    """np.savez leaves arrays at any offset (a mapped one is then unaligned for its dtype); save_npz
    pads each member's local header so every array starts on a 64-byte boundary."""
    from knn.mapped_npz import load_npz, save_npz

    arrays = {"indices": np.arange(1001, dtype=np.int32), "planes": unit_vectors(7, d=5),
              "a_much_longer_member_name": np.arange(13, dtype=np.int64), "shape": np.asarray([3, 4])}
    save_npz(tmp_path / "aligned.npz", arrays)
    mapped, numpy_read = load_npz(tmp_path / "aligned.npz"), np.load(tmp_path / "aligned.npz", allow_pickle=False)
    for key, value in arrays.items():
        np.testing.assert_array_equal(mapped[key], value)
        np.testing.assert_array_equal(numpy_read[key], value)
        assert mapped[key].ctypes.data % 64 == 0 and not mapped[key].flags.writeable
    np.savez(tmp_path / "numpys.npz", **arrays)  # numpy's own: mapped too, but not all aligned
    assert not all(a.ctypes.data % 64 == 0 for a in load_npz(tmp_path / "numpys.npz").values())
