"""Several rankings x several query sets on one model dir, through the shipped pipeline, one table.

    python bench/eval/sweep.py MODEL_DIR QUERIES.json [QUERIES.json ...] --variant NAME:SETTING=VALUE,... [--exact]

Each --variant is a name and knn.search.Ranking settings (as `python -m knn.evaluate --set`), e.g.
`--variant "neg 0.05:negation_penalty=0.05"`; "default" (no settings) is always the first row. The
model is loaded once and each query embedded once, so a row costs only the ranking. Prints
recall@1/5/10 and MRR@10 per query set with the model's own index (the kNN graph), or with exact
search (--exact). The same figures come from `python -m knn.evaluate MODEL_DIR QUERIES --set ...`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from knn.evaluate import exact_twin, load_queries, parse_settings, run_queries  # noqa: E402
from knn.model_dir import load_model_dir  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, settings = text.partition(":")
    return name.strip(), [pair.strip() for pair in settings.split(",") if pair.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("queries", nargs="+")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:SETTING=VALUE,...")
    parser.add_argument("--exact", action="store_true", help="exact nearest-neighbour search instead of the graph")
    args = parser.parse_args()
    search = load_model_dir(args.model_dir, threads=1)
    if args.exact:
        search = exact_twin(search)
    sets = [(Path(path).stem.replace("_queries", ""), load_queries(path)) for path in args.queries]
    encoded = {name: {} for name, _ in sets}
    variants = [("default", [])] + [parse_variant(v) for v in args.variant]
    header = "| variant | " + " | ".join(f"{name} r@1 / r@5 / r@10 / MRR" for name, _ in sets) + " | rank p50 ms |"
    print(f"{args.model_dir} ({'exact' if args.exact else search.index.kind})")
    print(header)
    print("|---|" + "---|" * (len(sets) + 1))
    for name, settings in variants:
        ranked = search.with_ranking(parse_settings(settings))
        cells, timings = [], []
        for set_name, queries in sets:
            result = run_queries(ranked, queries, encoded[set_name])
            m = result["metrics"]
            cells.append(f"{m['recall@1']:.3f} / {m['recall@5']:.3f} / {m['recall@10']:.3f} / {m['mrr@10']:.3f}")
            timings.append(result["timing_ms"]["rank_p50"])
        print(f"| {name} | " + " | ".join(cells) + f" | {max(timings):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    sys.exit(code)
