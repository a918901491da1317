"""knn.encoder and knn.encoder_export (float32): offline loading by path, verified weights, unit vectors
equal to sentence-transformers', a serving side free of torch."""
import json
import shutil

import numpy as np
import pytest

from knn.encoder import DIMENSIONS, ONNX_FILE, EncoderError, bundled_model_path, copy_model, load_encoder
from knn.encoder_export import onnx_model_path

SENTENCES = ["My kids loved it", "The children enjoyed this toy", "The battery died",
             "Great!", "", "A much longer sentence, with punctuation; numbers 42 and 7.5, and ÜNÏCÖDE, 😀 and שלום.",
             "word " * 400]  # over the 256-token limit: truncated the same way


def test_unit_float32_vectors(encoder):
    vectors = encoder.encode(["My kids loved it", "The children enjoyed this toy", "The battery died"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, DIMENSIONS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2


def test_same_vectors_as_sentence_transformers(encoder):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(bundled_model_path()), device="cpu", local_files_only=True)
    expected = reference.encode(SENTENCES, batch_size=3, normalize_embeddings=True, convert_to_numpy=True)
    for batch_size in (1, 3, 64):  # padding within a batch must not change a vector
        got = encoder.encode(SENTENCES, batch_size=batch_size)
        assert np.abs(got - expected).max() < 1e-5, batch_size


def test_order_of_input_is_kept(encoder):
    one_by_one = np.vstack([encoder.encode([s]) for s in SENTENCES])
    np.testing.assert_allclose(encoder.encode(SENTENCES, batch_size=2), one_by_one, atol=1e-5)


def test_empty_input(encoder):
    assert encoder.encode([]).shape == (0, DIMENSIONS)


def test_hub_is_switched_off(encoder):
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_serving_needs_no_torch_or_transformers(tmp_path):
    """A model dir's encoder loads and encodes without importing torch, transformers or sentence-transformers."""
    import subprocess
    import sys

    copy_model(onnx_model_path(), tmp_path / "encoder")
    code = ("import sys; from knn.encoder import load_encoder; "
            f"v = load_encoder({str(tmp_path / 'encoder')!r}).encode(['my kids loved it']); "
            "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]; "
            "print(v.shape, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"(1, {DIMENSIONS}) []"


def test_exported_encoder_is_cached_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("REVIEW_SEARCH_CACHE_DIR", str(tmp_path))
    first = onnx_model_path()
    assert first.is_relative_to(tmp_path) and (first / ONNX_FILE).is_file()
    stamp = (first / ONNX_FILE).stat().st_mtime_ns
    assert onnx_model_path() == first and (first / ONNX_FILE).stat().st_mtime_ns == stamp  # reused
    with open(first / ONNX_FILE, "r+b") as handle:  # a damaged cache is exported again, not used
        handle.seek(1000)
        handle.write(b"\0" * 64)
    again = onnx_model_path()
    from knn.encoder import file_sha256

    assert file_sha256(again / ONNX_FILE) == json.loads((again / "sha256.json").read_text())[ONNX_FILE]
    with open(again / ONNX_FILE, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\1" * 64)
    with pytest.raises(EncoderError, match="sha256"):  # load_encoder(verify=True) refuses a damaged dir
        load_encoder(again)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderError, match="no encoder at"):
        load_encoder(tmp_path)


def test_wrong_weights_are_refused(tmp_path):
    shutil.copytree(bundled_model_path(), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not weights")
    from knn.encoder_export import load_bundled_encoder

    with pytest.raises(EncoderError, match="holds weights, not a runnable encoder"):
        load_encoder(tmp_path / "m")
    with pytest.raises(EncoderError, match="sha256"):
        load_bundled_encoder(source=tmp_path / "m")


def test_unsupported_pooling_is_refused(tmp_path):
    shutil.copytree(bundled_model_path(), tmp_path / "m")
    (tmp_path / "m" / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    from knn.encoder_export import export_onnx

    with pytest.raises(EncoderError, match="mean pooling"):
        export_onnx(tmp_path / "m", tmp_path / "out")


def test_runtime_module_imports_no_build_time_modules():
    """knn.encoder alone pulls in neither torch nor onnxruntime.quantization nor knn.encoder_export."""
    import subprocess
    import sys

    code = ("import sys, knn.encoder; "
            "print([m for m in ('torch', 'transformers', 'onnxruntime.quantization', 'knn.encoder_export') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_float32_dir_records_its_precision(encoder):
    from knn.encoder import encoder_precision, read_settings

    assert encoder.precision == "float32"
    assert encoder_precision(read_settings(onnx_model_path())) == "float32"  # written, or absent (older exports)


def test_unknown_precision_is_refused():
    with pytest.raises(EncoderError, match="precision"):
        load_encoder(ONNX_FILE, precision="float16")


def test_threads_must_be_positive():
    with pytest.raises(EncoderError, match="threads"):
        load_encoder(ONNX_FILE, threads=0)


def test_progress_in_a_log_is_whole_lines(encoder, capsys):
    """A job's log is read a line at a time (sim's host pipe, CloudWatch): the bar is written as lines."""
    encoder.encode(SENTENCES[:4] * 10, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and err.endswith("\n")
    assert "embedding 40 sentences" in err and "10/10" in err.splitlines()[-1]
