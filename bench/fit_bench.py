"""Fit on toys-10k through the sim backend (split + embed + index + SageMaker job), wall clock.

    .venv/bin/python bench/fit_bench.py [--reviews ../shared/data/toys-10k/reviews.csv] [--runs 1]

Runs `local-runs fit --reviews FILE` in a fresh process with its own state dir (the real training
toolkit runs entry_point.py; the encoder export is cached per machine and warmed first), timing it
end to end, and reads the phases from the training log's `model written: {...}` line (sentences,
read_s, split_embed_s, index_s, total_s). The local S3 and gateway daemons it starts are shut down
afterwards. Target: <= 120 s wall.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, TOYS_10K, report, target

WRITTEN = re.compile(r"model written: (\{.*\})")


def parse_model_written(output: str) -> dict:
    """The figures of the training log's `model written: {...}` line."""
    match = WRITTEN.search(output)
    if not match:
        raise ValueError("no 'model written: {...}' line in the training log")
    return json.loads(match.group(1))


def one_fit(reviews: str) -> dict:
    cli = str(Path(sys.executable).with_name("local-runs"))
    with tempfile.TemporaryDirectory(prefix="fit-bench-") as state:
        started = time.perf_counter()
        done = subprocess.run([cli, "--state-dir", state, "fit", "--reviews", reviews], cwd=ROOT,
                              capture_output=True, text=True, env={**os.environ})
        wall = time.perf_counter() - started
        subprocess.run([cli, "--state-dir", state, "shutdown"], cwd=ROOT, capture_output=True)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        sys.exit(f"local-runs fit failed ({done.returncode}):\n{output[-3000:]}")
    figures = parse_model_written(output)
    return {"wall_s": round(wall, 2), **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in figures.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", default=str(TOYS_10K))
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if not Path(args.reviews).is_file():
        sys.exit(f"no reviews file at {args.reviews}; pass --reviews PATH")

    from knn.encoder_export import onnx_model_path

    onnx_model_path()  # the once-per-machine export is not part of a fit
    runs = []
    for number in range(args.runs):
        runs.append(one_fit(args.reviews))
        print(f"run {number + 1}: {runs[-1]}", flush=True)
    wall = statistics.median(run["wall_s"] for run in runs)
    last = runs[-1]
    report("fit", {"reviews_file": args.reviews, "runs": runs, "wall_median_s": wall},
           [target("fit on toys-10k through sim, wall", wall, 120.0, "s",
                   note=f"{last.get('sentences')} sentences + {last.get('headlines')} headlines; split+embed "
                        f"{last.get('split_embed_s')} s, index {last.get('index_s')} s")], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
