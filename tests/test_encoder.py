"""knn.encoder: offline loading by path, verified weights, unit float32 vectors."""
import numpy as np
import pytest

from knn.encoder import DIMENSIONS, EncoderError, bundled_model_path, load_encoder


def test_unit_float32_vectors(encoder):
    vectors = encoder.encode(["My kids loved it", "The children enjoyed this toy", "The battery died"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, DIMENSIONS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2


def test_empty_input(encoder):
    assert encoder.encode([]).shape == (0, DIMENSIONS)


def test_hub_is_switched_off(encoder):
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderError, match="no encoder weights"):
        load_encoder(tmp_path)


def test_wrong_weights_are_refused(tmp_path):
    import shutil

    shutil.copytree(bundled_model_path(), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(EncoderError, match="sha256"):
        load_encoder(tmp_path / "m")


def test_threads_must_be_positive():
    with pytest.raises(EncoderError, match="threads"):
        load_encoder(threads=0)
