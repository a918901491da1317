"""The full sim cycle on the fixtures (upload, fit, deploy, predict, delete), as a user runs it.

    .venv/bin/python bench/cycle_bench.py [--runs 3]

Runs `local-runs cycle` (sim backend, fixtures/reviews.csv) --runs times in fresh processes, each with
its own state dir, after one unmeasured run that warms the machine's caches (numba, the ONNX export;
--warm-ups N for more or none).
Reads the phase timings the command prints (`cycle: upload 0.0 s, fit ...; total ... s`) and reports
the median of each. Target: total <= 20 s with warm caches. For reference, the SDK's Docker local
mode alone polls >= 30 s during deploy.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, report, target

LINE = re.compile(r"^cycle: (?P<phases>.*); total (?P<total>[\d.]+) s$", re.MULTILINE)


def parse_cycle_line(output: str) -> dict[str, float]:
    """{"upload": s, "fit": s, ..., "total": s} from `local-runs cycle` output."""
    match = LINE.search(output)
    if not match:
        raise ValueError("no 'cycle: ... total N s' line in the output")
    phases = {name.strip(): float(value) for name, value in
              (re.match(r"(.+?) ([\d.]+) s$", part.strip()).groups() for part in match["phases"].split(","))}
    return {**phases, "total": float(match["total"])}


def one_cycle(reviews: str | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="cycle-bench-") as state:
        command = [str(Path(sys.executable).with_name("local-runs")), "--state-dir", state, "cycle"]
        if reviews:
            command += ["--reviews", reviews]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ})
        wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"local-runs cycle failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return {**parse_cycle_line(done.stdout), "process_wall_s": round(wall, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reviews", help="default: the command's own (fixtures/reviews.csv)")
    parser.add_argument("--warm-ups", type=int, default=1,
                        help="unmeasured runs first, which warm the machine's caches (default 1)")
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    for _ in range(args.warm_ups):  # not counted
        one_cycle(args.reviews)
    runs = []
    for number in range(args.runs):
        runs.append(one_cycle(args.reviews))
        print(f"run {number + 1}: {runs[-1]}", flush=True)
    median = {name: round(statistics.median(run[name] for run in runs), 2) for name in runs[0]}
    print("median: " + ", ".join(f"{k} {v} s" for k, v in median.items()))
    report("cycle", {"runs": runs, "median": median},
           [target("sim cycle on the fixtures, warm caches (median total)", median["total"], 20.0, "s",
                   note=", ".join(f"{k} {v:.1f}" for k, v in median.items() if k not in ("total", "process_wall_s")))],
           args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
