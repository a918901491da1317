"""What every benchmark shares: the machine description, percentiles, targets, JSON output.

Every bench writes one JSON file (bench/results/<name>.json by default) shaped as
    {"name", "date", "machine": {...}, "results": {...}, "targets": [{"name", "target", "measured",
     "unit", "pass", "note"}]}
and prints a table plus one "target: ... measured: ... PASS / FALLS SHORT" line per target;
bench/plot.py draws the targets of every JSON it finds.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TOYS_10K = ROOT.parent / "shared" / "data" / "toys-10k" / "reviews.csv"
WORK_DIR = Path(os.environ.get("REVIEW_SEARCH_CACHE_DIR") or Path.home() / ".cache" / "review-search") / "bench"


def machine_info() -> dict:
    """CPU count and model, RAM, library versions: printed with every result."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for module in ("numpy", "torch", "onnxruntime", "pynndescent", "hnswlib", "sentence_transformers"):
        try:
            from importlib.metadata import version

            versions[module] = version(module.replace("_", "-"))
        except Exception:  # noqa: BLE001 - not installed: just not reported
            pass
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_gib": memory_gib, "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions}


def percentiles(seconds, points=(50, 90, 99)) -> dict:
    """{"p50_ms": ..., ...} of a list of durations in seconds."""
    values = np.asarray(list(seconds), dtype=float) * 1000.0
    if values.size == 0:
        return {f"p{p}_ms": None for p in points}
    return {f"p{p}_ms": round(float(np.percentile(values, p)), 3) for p in points}


def target(name: str, measured: float | None, limit: float, unit: str, higher_is_better: bool = False,
           note: str = "") -> dict:
    """One target line: `measured` against `limit` (<= limit, or >= limit when higher is better)."""
    passed = None if measured is None else (measured >= limit if higher_is_better else measured <= limit)
    return {"name": name, "target": f"{'>=' if higher_is_better else '<='} {limit:g} {unit}".strip(), "limit": limit,
            "higher_is_better": higher_is_better, "measured": None if measured is None else round(float(measured), 4),
            "unit": unit, "pass": passed, "note": note}


def report(name: str, results: dict, targets: list[dict], out: str | Path | None = None) -> Path:
    """Print the target lines and write the JSON file; returns its path."""
    for t in targets:
        verdict = "not measured" if t["pass"] is None else ("PASS" if t["pass"] else "FALLS SHORT")
        measured = "-" if t["measured"] is None else f"{t['measured']:g} {t['unit']}"
        print(f"target: {t['name']} {t['target']}; measured: {measured}  {verdict}{'  (' + t['note'] + ')' if t['note'] else ''}")
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"name": name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": machine_info(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "results": results, "targets": targets}
    path.write_text(json.dumps(document, indent=1, default=_plain) + "\n")
    print(f"wrote {path}")
    return path


def _plain(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def toys_sentences(reviews: str | Path, limit: int | None = None, seed: int = 7) -> list[str]:
    """Review-body sentences of a reviews file, split as training splits them (a seeded sample of `limit`)."""
    from knn.reviews import read_reviews
    from knn.sentences import split_many

    sentences, _ = split_many(read_reviews(reviews)["review_body"].tolist())
    if limit is not None and limit < len(sentences):
        rows = np.sort(np.random.default_rng(seed).choice(len(sentences), size=limit, replace=False))
        sentences = [sentences[i] for i in rows]
    return sentences


def toys_model_dir(reviews: str | Path, work_dir: str | Path | None = None, threads: int = 2) -> Path:
    """A model dir of `reviews` built once and kept under the bench work dir (rebuilt when the file changes)."""
    from knn.build import build_model_dir
    from knn.encoder import file_sha256

    reviews = Path(reviews)
    if not reviews.is_file():
        sys.exit(f"no reviews file at {reviews}; pass --reviews PATH (the toys-10k file lives in ../shared/data/toys-10k)")
    key = file_sha256(reviews)[:12]
    directory = Path(work_dir or WORK_DIR) / f"model-{reviews.stem}-{key}"
    if not (directory / "manifest.json").is_file():
        print(f"building the model of {reviews} into {directory} (once; about 1-2 minutes)", flush=True)
        build_model_dir(reviews, directory, threads=threads)
    else:
        from knn.model_dir import add_serving_files

        add_serving_files(directory)  # one built before the int8 codes and stored texts gets them, as a fit writes them
    return directory


def pack_model_dir(model_dir: str | Path, archive: str | Path) -> Path:
    """A model dir as the training job's model.tar.gz (files at the top), for benches that deploy it."""
    import tarfile

    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for path in sorted(Path(model_dir).iterdir()):
            tar.add(path, arcname=path.name)
    return Path(archive)
