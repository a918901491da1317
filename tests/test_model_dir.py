"""knn.model_dir: the manifest, verification before loading, and refusal of tampered dirs."""
import json
import shutil

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


# --- vector dtype (issue 14: float16 vectors, stored and served) -----------------------------------
def as_float32_model_dir(directory):
    """Rewrite a model dir as one written before float16 vectors: float32 .npy, no "vector_dtype" key."""
    import numpy as np

    from knn.encoder import file_sha256

    manifest = json.loads((directory / MANIFEST).read_text())
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
    """An old model dir (float32 vectors, no "vector_dtype") serves float32; the float16 model ranks the
    same products in the same order, scores within 1e-3."""
    import numpy as np

    as_float32_model_dir(model_copy)
    old = load_model_dir(model_copy)
    assert old.corpus.vectors.dtype == np.float32 and old.corpus.headline_vectors.dtype == np.float32
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
