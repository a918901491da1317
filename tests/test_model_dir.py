"""knn.model_dir: the manifest, verification before loading, and refusal of tampered dirs."""
import json
import shutil

import numpy as np
import pytest

from knn.errors import ModelDirError
from knn.model_dir import MANIFEST, load_model_dir, verify_model_dir


@pytest.fixture()
def model_copy(fixture_model_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(fixture_model_dir, target)
    return target


def test_manifest_lists_every_file_with_sha256(fixture_model_dir):
    manifest = json.loads((fixture_model_dir / MANIFEST).read_text())
    assert manifest["format_version"] == 1
    assert manifest["encoder_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    files = manifest["files"]
    for name in ("catalog.parquet", "sentences.parquet", "vectors.npy", "encoder/model.onnx",
                 "encoder/tokenizer.json"):
        assert len(files[name]["sha256"]) == 64
    on_disk = {p.relative_to(fixture_model_dir).as_posix() for p in fixture_model_dir.rglob("*") if p.is_file()}
    assert on_disk == set(files) | {MANIFEST}
    assert manifest["counts"]["sentences"] > 0


def test_manifest_records_the_encoder_precision(fixture_model_dir):
    manifest = json.loads((fixture_model_dir / MANIFEST).read_text())
    assert manifest["encoder_precision"] == "float32"


def test_model_dir_without_recorded_precision_loads_as_float32(model_copy):
    manifest = json.loads((model_copy / MANIFEST).read_text())
    del manifest["encoder_precision"]  # written before the precision was recorded
    (model_copy / MANIFEST).write_text(json.dumps(manifest))
    assert load_model_dir(model_copy).encoder.precision == "float32"


def test_no_pickle_files(fixture_model_dir):
    assert not [p for p in fixture_model_dir.rglob("*") if p.suffix in (".pkl", ".pickle", ".joblib")]


def test_loads_and_searches(model_copy):
    search = load_model_dir(model_copy)
    assert search.search("a toy", n_items=1)


def test_code_dir_added_by_sagemaker_is_ignored(model_copy):
    (model_copy / "code").mkdir()
    (model_copy / "code" / "entry_point.py").write_text("# repacked\n")
    verify_model_dir(model_copy)


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda d: (d / "vectors.npy").write_bytes((d / "vectors.npy").read_bytes()[:-100]), "truncated"),
        (lambda d: (d / "catalog.parquet").write_bytes(b"X" + (d / "catalog.parquet").read_bytes()[1:]), "sha256"),
        (lambda d: (d / "sentences.parquet").unlink(), "missing"),
        (lambda d: (d / "evil.pkl").write_bytes(b"\x80\x04."), "not part of the model"),
        (lambda d: (d / MANIFEST).unlink(), "not a model dir"),
        (lambda d: (d / MANIFEST).write_text("{"), "unreadable"),
        (lambda d: (d / MANIFEST).write_text(json.dumps({"format_version": 99})), "format 99"),
    ],
)
def test_tampered_dirs_are_refused_before_loading(model_copy, damage, fragment):
    damage(model_copy)
    with pytest.raises(ModelDirError) as info:
        load_model_dir(model_copy)
    assert fragment in str(info.value)


def test_encoder_weights_swapped_are_refused(model_copy):
    weights = model_copy / "encoder" / "model.onnx"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match="encoder/model.onnx"):
        load_model_dir(model_copy)



# --- integrity checked once per machine (knn.verified) ----------------------------------------------

@pytest.fixture()
def hashed(monkeypatch, tmp_path):
    """Counts the files load_model_dir hashes; stamps in a directory of this test's own."""
    import knn.model_dir as model_dir

    monkeypatch.setenv("REVIEW_SEARCH_VERIFIED_DIR", str(tmp_path / "stamps"))
    monkeypatch.delenv("REVIEW_SEARCH_VERIFY_ALWAYS", raising=False)
    calls = []
    real = model_dir.file_sha256
    monkeypatch.setattr(model_dir, "file_sha256", lambda path: calls.append(path) or real(path))
    return calls


def test_an_unchanged_model_dir_is_hashed_once(model_copy, hashed):
    files = len(json.loads((model_copy / MANIFEST).read_text())["files"])
    verify_model_dir(model_copy)
    assert len(hashed) == files
    verify_model_dir(model_copy)
    load_model_dir(model_copy)  # as a second and third worker would
    assert len(hashed) == files


def test_a_file_changed_after_the_check_is_hashed_and_refused(model_copy, hashed):
    import os

    verify_model_dir(model_copy)
    path = model_copy / "catalog.parquet"
    before = path.stat()
    path.write_bytes(b"X" + path.read_bytes()[1:])  # same size, and the mtime put back
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ModelDirError, match="catalog.parquet does not match its sha256"):
        verify_model_dir(model_copy)


def test_a_replaced_file_is_hashed_and_refused(model_copy, hashed):
    verify_model_dir(model_copy)
    path = model_copy / "sentences.parquet"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    replacement = model_copy / "replacement"
    replacement.write_bytes(bytes(data))
    replacement.replace(path)
    with pytest.raises(ModelDirError, match="sentences.parquet does not match"):
        verify_model_dir(model_copy)


def test_stamps_switched_off_or_untrusted_hash_every_time(model_copy, hashed, monkeypatch, tmp_path):
    files = len(json.loads((model_copy / MANIFEST).read_text())["files"])
    monkeypatch.setenv("REVIEW_SEARCH_VERIFY_ALWAYS", "1")
    verify_model_dir(model_copy)
    verify_model_dir(model_copy)
    assert len(hashed) == 2 * files
    monkeypatch.delenv("REVIEW_SEARCH_VERIFY_ALWAYS")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # others may write there: a stamp in it proves nothing
    monkeypatch.setenv("REVIEW_SEARCH_VERIFIED_DIR", str(shared))
    verify_model_dir(model_copy)
    verify_model_dir(model_copy)
    assert len(hashed) == 4 * files

# --- vector dtype (issue 14: float16 vectors, stored and served) -----------------------------------
def as_float32_model_dir(directory):
    """Rewrite a model dir as one written before float16 vectors: float32 .npy, no "vector_dtype" key, and
    (older still) no product titles."""
    import numpy as np

    from knn.encoder import file_sha256

    manifest = json.loads((directory / MANIFEST).read_text())
    for name in ("titles.parquet", "title_vectors.npy", "lexical/titles.npz", "lexical/titles_vocabulary.json"):
        assert manifest["files"].pop(name, None) is not None, name
        (directory / name).unlink()
    for name in ("vectors.npy", "headline_vectors.npy"):
        path = directory / name
        np.save(path, np.load(path, allow_pickle=False).astype(np.float32), allow_pickle=False)
        manifest["files"][name] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    del manifest["vector_dtype"]
    (directory / MANIFEST).write_text(json.dumps(manifest))


QUERIES = ("a toy for a toddler", "soft plush", "batteries died quickly", "my son loves it", "puzzle pieces")


def test_vectors_are_stored_and_served_as_float16(fixture_model_dir, fixture_search):
    import numpy as np

    manifest = json.loads((fixture_model_dir / MANIFEST).read_text())
    assert manifest["vector_dtype"] == "float16"
    for name in ("vectors.npy", "headline_vectors.npy"):
        assert np.load(fixture_model_dir / name, allow_pickle=False).dtype == np.float16
    assert fixture_search.corpus.vectors.dtype == np.float16
    assert fixture_search.corpus.headline_vectors.dtype == np.float16
    norms = np.linalg.norm(fixture_search.corpus.vectors.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-3)


def test_model_dir_written_before_float16_loads_and_answers_alike(model_copy, fixture_search):
    """An old model dir (float32 vectors, no "vector_dtype", no titles) serves float32 without the title
    terms; the float16 model without them ranks the same products in the same order, scores within 1e-3."""
    import numpy as np

    as_float32_model_dir(model_copy)
    old = load_model_dir(model_copy)
    assert old.corpus.vectors.dtype == np.float32 and old.corpus.headline_vectors.dtype == np.float32
    assert old.corpus.title_vectors is None and old.corpus.title_lexical is None
    fixture_search = fixture_search.with_ranking(fixture_search.ranking.replace(title_weight=0, title_lexical_weight=0))
    for query in QUERIES:
        expected = old.search(query, n_items=8)
        got = fixture_search.search(query, n_items=8)
        assert len(got) == len(expected) > 0
        old_scores = {r["product_id"]: r["product_search_score"] for r in expected}
        for position, (a, b) in enumerate(zip(got, expected)):
            assert abs(a["product_search_score"] - b["product_search_score"]) < 1e-3, (query, position)
            if a["product_id"] != b["product_id"]:  # only a near-tie may swap places
                assert abs(old_scores.get(a["product_id"], -9) - b["product_search_score"]) < 1e-3, (query, position)


def test_vectors_not_in_the_manifest_dtype_are_refused(model_copy):
    import numpy as np

    from knn.encoder import file_sha256

    manifest = json.loads((model_copy / MANIFEST).read_text())
    path = model_copy / "vectors.npy"
    np.save(path, np.load(path, allow_pickle=False).astype(np.float32), allow_pickle=False)
    manifest["files"]["vectors.npy"] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    (model_copy / MANIFEST).write_text(json.dumps(manifest))  # still says float16
    with pytest.raises(ModelDirError, match="the manifest says float16"):
        load_model_dir(model_copy)


def test_model_fn_pays_the_first_query_costs_before_serving(fixture_model_dir):
    """model_fn answers one warm-up query, so a fresh serving process has nltk's Punkt tokenizer and
    Porter stemmer loaded, the request checks (pydantic) imported and its search ready before the
    first request, and the loaded model frozen out of the garbage collector's walks (checked in a
    fresh interpreter: nothing loaded them before)."""
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import sys; sys.path.insert(0, sys.argv[2]); import entry_point; "
            "from knn.sentences import _tokenizer; from knn.lexical import _stemmer; "
            "loaded = lambda: (_tokenizer.cache_info().currsize, _stemmer.cache_info().currsize); "
            "assert loaded() == (0, 0) and 'pydantic' not in sys.modules; search = entry_point.model_fn(sys.argv[1]); "
            "import gc; print(*loaded(), type(search).__name__, 'pydantic' in sys.modules, gc.get_freeze_count() > 0)")
    done = subprocess.run([sys.executable, "-c", code, str(fixture_model_dir), str(ROOT / "entry")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["1", "1", "ProductSearch", "True", "True"]
    assert "warm-up query answered in" in done.stderr


@pytest.mark.parametrize("index_kind, vector_dtype, codes, started", [
    ("graph", "float16", False, "float16"), ("graph", "float16", True, "int8"), ("exact", "float16", False, None),
    ("graph", "float32", False, None)])
def test_loading_a_float16_graph_model_compiles_its_walk_meanwhile(model_copy, monkeypatch, index_kind, vector_dtype,
                                                                   codes, started):
    """Only a model searched by float16 (or int8-code) graph walks starts their compile, for its kind of
    rows (a process serving a small exact model never imports numba); a broken manifest is left for
    the check to report."""
    import knn.float16_graph
    from knn import model_dir

    calls = []
    monkeypatch.setattr(knn.float16_graph, "compile_in_background", lambda rows="float16": calls.append(rows))
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest.update(index_kind=index_kind, vector_dtype=vector_dtype)
    manifest["files"].pop("vector_codes.npy", None)
    if codes:
        manifest["files"]["vector_codes.npy"] = {"sha256": "0" * 64, "bytes": 1}
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    model_dir._compile_graph_walk_meanwhile(model_copy)
    assert calls == ([started] if started else [])
    (model_copy / "manifest.json").write_text("{not json")
    model_dir._compile_graph_walk_meanwhile(model_copy)
    assert calls == ([started] if started else [])


def test_loading_hands_back_what_it_freed_once_the_search_is_built(model_copy, monkeypatch):
    """Arrow's pool and glibc's heap keep what loading freed (63 MB of a 1M-sentence worker) unless
    asked; load_model_dir asks once, after the last of its temporaries (ProductSearch's) are gone."""
    from knn import model_dir

    built = []
    original = model_dir.ProductSearch
    monkeypatch.setattr(model_dir, "ProductSearch", lambda *a, **k: built.append(1) or original(*a, **k))
    monkeypatch.setattr(model_dir, "_hand_back_freed_memory", lambda: built.append("handed back"))
    load_model_dir(model_copy)
    assert built == [1, "handed back"]
    monkeypatch.undo()
    model_dir._hand_back_freed_memory()  # the real one runs here without error


def test_big_title_vectors_are_read_per_row_and_rank_alike(fixture_model_dir, fixture_search, monkeypatch):
    """Title vectors over the held size are read per candidate row (FileRows, never mapped): the same
    answers as held ones."""
    import numpy as np

    import knn.model_dir as model_dir
    from knn.quantized_vectors import FileRows

    assert isinstance(fixture_search.corpus.title_vectors, np.ndarray)
    monkeypatch.setattr(model_dir, "TITLE_VECTORS_HELD_BYTES", 0)
    per_row = load_model_dir(fixture_model_dir)
    assert isinstance(per_row.corpus.title_vectors, FileRows)
    for query in QUERIES:
        assert per_row.search(query, n_items=5) == fixture_search.search(query, n_items=5)


def test_bm25_saved_before_the_by_document_copy_is_rewritten_by_add_serving_files(fixture_model_dir, tmp_path):
    import shutil

    from knn import model_dir as md
    from knn.mapped_npz import load_npz, save_npz

    older = tmp_path / "older"
    shutil.copytree(fixture_model_dir, older)
    manifest = json.loads((older / "manifest.json").read_text())
    for name in ("reviews", "passages"):  # as a fit wrote them before: postings by document, no copy
        arrays = {key: np.array(value) for key, value in load_npz(older / "lexical" / f"{name}.npz").items()
                  if not key.startswith("document_")}
        save_npz(older / "lexical" / f"{name}.npz", arrays)
        meta = json.loads((older / "lexical" / f"{name}_vocabulary.json").read_text())
        del meta["postings"]
        (older / "lexical" / f"{name}_vocabulary.json").write_text(json.dumps(meta))
        for file in (f"lexical/{name}.npz", f"lexical/{name}_vocabulary.json"):
            manifest["files"][file] = md._file_entry(older / file)
    md._write_manifest(older, manifest)
    before = load_model_dir(older)
    assert before.lexical._by_document is None and not before.lexical.by_weight
    added = md.add_serving_files(older)
    assert sorted(added) == ["lexical/passages.npz", "lexical/passages_vocabulary.json",
                             "lexical/reviews.npz", "lexical/reviews_vocabulary.json"]
    for file in added:  # the very files a fit writes
        assert (older / file).read_bytes() == (fixture_model_dir / file).read_bytes(), file
    after = load_model_dir(older)
    assert after.lexical.by_weight and after.lexical._by_document is not None
    for query in ("soft owl plush", "kite flies well"):
        assert [r["product_id"] for r in after.search(query, n_items=5)] == \
            [r["product_id"] for r in before.search(query, n_items=5)]
    assert md.add_serving_files(older) == []
