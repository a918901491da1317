"""Cold start: a fresh serving process from its start to its first answer, on the toys-10k model.

    .venv/bin/python bench/cold_start_bench.py [--reviews ../shared/data/toys-10k/reviews.csv] [--runs 3]

Each run is a new Python process doing what a sim endpoint worker does: import the inference
toolkit's PyTorch handler service, `initialize` it on the model dir (the toolkit imports
entry_point.py and calls `model_fn`: manifest check, data, index, encoder), then `handle` one
request (`input_fn` -> `predict_fn` -> `output_fn`). Phases are timed inside the child; the total is
timed by the parent from process spawn to the printed answer (interpreter start included).
"warm": the numba cache already holds the graph walk's compiled kernels (the normal case: it persists
per machine). "cold": NUMBA_CACHE_DIR and REVIEW_SEARCH_CACHE_DIR point at empty directories, as on a
fresh instance: the kernels the fit shipped in the model dir's kernels/ are installed and apply
(knn.shipped_kernels). "cold, another CPU": the same, with NUMBA_CPU_NAME=generic, so the shipped
kernels do not match the CPU and the walk is compiled as before shipping; its answer must equal the
warm one (the OS file cache stays warm in every run). Each child reports whether the walk was
compiled or read from the cache.
Targets: warm <= 5 s; cold <= 10 s. The model is built once (about 1-2 minutes) and kept under --work-dir.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, TOYS_10K, WORK_DIR, report, target, toys_model_dir

CHILD = r"""
import json, os, sys, time
started = time.perf_counter()
from local_runs.sim.inference import DEFAULT_HANDLER_SERVICE, Worker
worker = Worker(sys.argv[1], DEFAULT_HANDLER_SERVICE)
import sagemaker_pytorch_serving_container.handler_service  # the toolkit (imports torch)
imported = time.perf_counter()
worker.initialize()  # imports entry_point.py, calls model_fn
loaded = time.perf_counter()
status, _, body, _ = worker.invoke(json.dumps({"query": "my kids loved it"}).encode(),
                                   {"Content-Type": "application/json", "Accept": "application/json"})
answered = time.perf_counter()
answer = json.loads(body)
assert status == 200 and answer["pred0"]["product_id"], body[:300]
from knn import float16_graph
stats = getattr(float16_graph._f16_walk, "stats", None)  # a numba dispatcher once the walk has run
print(json.dumps({"import_s": imported - started, "model_fn_s": loaded - imported,
                  "first_query_s": answered - loaded,
                  "walk_compiled": bool(stats and sum(stats.cache_misses.values())),
                  "answer": [[p["product_id"], round(p["product_search_score"], 5)] for p in answer.values()]}),
      flush=True)
"""


def serving_base(model_dir: Path, work_dir: Path) -> Path:
    """SAGEMAKER_BASE_DIR for the model: <base>/model = the model dir + code/ (entry point, knn under lib/)."""
    base = work_dir / f"serving-{model_dir.name}"
    model = base / "model"
    if not (model / "manifest.json").is_file() or (model / "manifest.json").read_bytes() != (model_dir / "manifest.json").read_bytes():
        shutil.rmtree(base, ignore_errors=True)
        shutil.copytree(model_dir, model)
    shutil.rmtree(model / "code", ignore_errors=True)
    shutil.copytree(ROOT / "entry", model / "code", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "knn", model / "code" / "lib" / "knn", ignore=shutil.ignore_patterns("__pycache__"))
    return base


def one_start(base: Path, cache_dir: str | None, cpu_name: str | None = None) -> dict:
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_PROGRAM": "entry_point.py",
           "PYTHONPATH": str(base / "model" / "code")}
    if cpu_name:
        env["NUMBA_CPU_NAME"] = cpu_name
    if cache_dir:
        env["NUMBA_CACHE_DIR"] = os.path.join(cache_dir, "numba")
        env["REVIEW_SEARCH_CACHE_DIR"] = cache_dir
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(base / "model")], env=env, cwd=tempfile.gettempdir(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = child.stdout.readline()  # the answer: timed when it arrives, not when the process has exited
    total = time.perf_counter() - started
    _, errors = child.communicate()
    if child.returncode != 0 or not line.strip():
        sys.exit(f"the serving process failed:\n{errors[-3000:]}")
    phases = json.loads(line)
    return {"total_s": round(total, 3), **{k: round(v, 3) if isinstance(v, float) else v for k, v in phases.items()}}


def same_answer(answer: list, expected: list) -> bool:
    """The same products in the same order, scores equal to 1e-4 (code compiled for another CPU may
    sum in another order)."""
    return ([p for p, _ in answer] == [p for p, _ in expected]
            and all(abs(a - b) <= 1e-4 for (_, a), (_, b) in zip(answer, expected)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", default=str(TOYS_10K))
    parser.add_argument("--model-dir", help="an existing model dir (default: build toys-10k's under --work-dir)")
    parser.add_argument("--work-dir", default=str(WORK_DIR))
    parser.add_argument("--runs", type=int, default=3, help="warm runs (the median counts)")
    parser.add_argument("--cold-runs", type=int, default=1, help="runs of each cold kind (the median counts)")
    parser.add_argument("--no-cold", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    work_dir = Path(args.work_dir)
    model_dir = Path(args.model_dir) if args.model_dir else toys_model_dir(args.reviews, work_dir)
    base = serving_base(model_dir, work_dir)
    one_start(base, None)  # fills the machine's numba cache and the OS file cache
    warm = [one_start(base, None) for _ in range(args.runs)]
    for run in warm:
        print(f"warm: {run}")
    results = {"model_dir": str(model_dir), "warm_runs": warm,
               "warm_median_s": statistics.median(r["total_s"] for r in warm)}
    targets = [target("cold start with warm caches (median)", results["warm_median_s"], 5.0, "s",
                      note="spawn -> import -> model_fn -> first answer")]
    if not args.no_cold:
        for name, cpu_name in (("cold", None), ("cold_other_cpu", "generic")):
            runs = []
            for _ in range(args.cold_runs):
                with tempfile.TemporaryDirectory(prefix="cold-cache-") as empty:
                    runs.append(one_start(base, empty, cpu_name))
                print(f"{name}: {runs[-1]}")
            results[name] = runs
            results[f"{name}_median_s"] = statistics.median(r["total_s"] for r in runs)
        results["cold_answers_equal_warm"] = all(same_answer(r["answer"], warm[0]["answer"])
                                                 for name in ("cold", "cold_other_cpu") for r in results[name])
        targets.append(target("cold start, empty numba cache (median)", results["cold_median_s"], 10.0, "s",
                              note="the kernels shipped in the model dir apply"))
        print(f"cold, another CPU (shipped kernels do not apply, the walk compiles): median "
              f"{results['cold_other_cpu_median_s']} s; answers equal the warm one: {results['cold_answers_equal_warm']}")
    report("cold_start", results, targets, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
