"""The int8 encoder (knn.encoder_export): built from the float32 one, checked against it, cached with
sha256, recorded in the model dir and served from it, refused with a clear error when too far from float32."""
import json
import shutil

import numpy as np
import pytest

from knn.encoder import DIMENSIONS, ONNX_FILE, EncoderError, copy_model, load_encoder, read_settings
from knn.encoder_export import INT8_MIN_COSINE, INT8_MIN_COSINE_ANY, int8_model_path, onnx_model_path

from conftest import FIXTURES


@pytest.fixture(scope="session")
def int8_dir():
    return int8_model_path()


@pytest.fixture(scope="session")
def int8_encoder(int8_dir):
    return load_encoder(int8_dir, threads=1)


def test_int8_dir_records_precision_recipe_and_check(int8_dir):
    settings = read_settings(int8_dir)
    assert settings["precision"] == "int8"
    assert settings["int8_recipe"]["quantized_matmuls"] == 36  # 6 layers x (Q, K, V, attention out, 2 feed-forward)
    check = settings["int8_check"]
    assert check["sentences"] >= 30
    assert check["cosine_mean"] >= INT8_MIN_COSINE and check["cosine_min"] >= INT8_MIN_COSINE_ANY
    recorded = json.loads((int8_dir / "sha256.json").read_text())
    assert ONNX_FILE in recorded and "encoder.json" in recorded
    # int8 linear layers; the 47 MB word-embedding table stays float32
    assert (int8_dir / ONNX_FILE).stat().st_size < 0.7 * (onnx_model_path() / ONNX_FILE).stat().st_size


def test_int8_vectors_are_unit_and_close_to_float32(int8_encoder, encoder):
    sentences = ["My kids loved it", "The children enjoyed this toy", "The battery died", "", "word " * 400]
    got = int8_encoder.encode(sentences)
    assert int8_encoder.precision == "int8"
    assert got.dtype == np.float32 and got.shape == (len(sentences), DIMENSIONS)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    cosines = np.sum(got * encoder.encode(sentences), axis=1)
    assert cosines.min() > 0.95, cosines
    sims = got @ got.T
    assert sims[0, 1] > sims[0, 2] + 0.2
    one_by_one = np.vstack([int8_encoder.encode([s]) for s in sentences[:3]])
    assert np.abs(int8_encoder.encode(sentences[:3], batch_size=3) - one_by_one).max() < 0.05  # batch-dependent scales


def test_load_encoder_builds_int8_from_the_weights(int8_dir):
    from knn.encoder_export import load_bundled_encoder

    assert load_bundled_encoder(precision="int8").precision == "int8"


def test_int8_far_from_float32_is_refused(tmp_path, monkeypatch):
    import knn.encoder_export as export

    monkeypatch.setattr(export, "INT8_MIN_COSINE", 1.01)
    with pytest.raises(EncoderError, match="too far from float32.*precision float32"):
        export.quantize_int8(onnx_model_path(), tmp_path / "int8")
    assert not (tmp_path / "int8" / ONNX_FILE).exists()


def test_damaged_int8_cache_is_rebuilt(int8_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("REVIEW_SEARCH_CACHE_DIR", str(tmp_path))
    float_dir = onnx_model_path()  # exported again into tmp_path
    key = int8_dir.name
    shutil.copytree(int8_dir, float_dir.parent / key)
    cached = int8_model_path()
    assert cached == float_dir.parent / key
    with open(cached / ONNX_FILE, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\0" * 64)
    with pytest.raises(EncoderError, match="sha256"):
        load_encoder(cached)
    rebuilt = int8_model_path()
    assert load_encoder(rebuilt).precision == "int8"


def test_serving_int8_needs_no_torch(int8_dir, tmp_path):
    import subprocess
    import sys

    copy_model(int8_dir, tmp_path / "encoder")
    code = ("import sys; from knn.encoder import load_encoder; "
            f"e = load_encoder({str(tmp_path / 'encoder')!r}); v = e.encode(['my kids loved it']); "
            "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'onnxruntime.quantization') "
            "if m in sys.modules]; print(e.precision, v.shape, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"int8 (1, {DIMENSIONS}) []"


@pytest.fixture(scope="module")
def int8_model_dir(tmp_path_factory, int8_dir):
    from knn.build import build_model_dir

    directory = tmp_path_factory.mktemp("int8-model")
    figures = build_model_dir(FIXTURES / "reviews.csv", directory, index_kind="auto", precision="int8")
    assert figures["precision"] == "int8"
    return directory


def test_model_dir_records_and_serves_with_int8(int8_model_dir):
    from knn.model_dir import MANIFEST, load_model_dir

    manifest = json.loads((int8_model_dir / MANIFEST).read_text())
    assert manifest["encoder_precision"] == "int8"
    search = load_model_dir(int8_model_dir)
    assert search.encoder.precision == "int8"
    assert search.search("a bath toy that floats", n_items=3)


def test_manifest_and_encoder_precision_must_agree(int8_model_dir, tmp_path):
    from knn.errors import ModelDirError
    from knn.model_dir import MANIFEST, load_model_dir

    copy = tmp_path / "model"
    shutil.copytree(int8_model_dir, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["encoder_precision"] = "float32"
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="embedded at float32 but encoder/ is int8"):
        load_model_dir(copy)
    manifest["encoder_precision"] = "int4"
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="precision 'int4'"):
        load_model_dir(copy)


def test_training_entry_point_takes_precision():
    from entry.entry_point import parse_args

    assert parse_args([]).precision == "float32"
    assert parse_args(["--precision", "int8"]).precision == "int8"
    with pytest.raises(SystemExit):
        parse_args(["--precision", "float16"])
