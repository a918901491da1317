"""Fresh-process start of search: import + model load + first query, with a cold or warm numba cache.

    python bench/fresh_start.py MODEL_DIR [--runs 3] [--json OUT]

Each measurement runs in a new Python process. "cold" points NUMBA_CACHE_DIR at an empty directory;
"warm" reuses one directory that the cold run has filled. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import time, json, sys
t0 = time.perf_counter()
from knn.model_dir import load_model_dir
t1 = time.perf_counter()
search = load_model_dir(sys.argv[1])
t2 = time.perf_counter()
search.search("my kids loved it", n_items=3)
t3 = time.perf_counter()
search.search("good for long car rides", n_items=3)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_query_s": t3 - t2, "second_query_s": t4 - t3,
                  "index": search.index.kind}))
"""


def run_once(model_dir: str, cache_dir: str) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, model_dir], env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as warm_cache:
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as cold_cache:
                results["cold"].append(run_once(args.model_dir, cold_cache))
        run_once(args.model_dir, warm_cache)  # fill the warm cache
        for _ in range(args.runs):
            results["warm"].append(run_once(args.model_dir, warm_cache))
    print(f"{'cache':6} {'import':>8} {'load':>8} {'1st query':>10} {'2nd query':>10} {'process':>9}")
    for name, runs in results.items():
        for r in runs:
            print(f"{name:6} {r['import_s']:8.2f} {r['load_s']:8.2f} {r['first_query_s']:10.3f} "
                  f"{r['second_query_s']:10.4f} {r['process_wall_s']:9.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
