"""Score a batch transform's answers against an evaluation set: knn.evaluate's figures, through the real container.

    python -m knn.evaluate_transform QUERIES.json --write-requests REQUESTS.jsonl
    local-runs transform REQUESTS.jsonl --out RESULTS.jsonl [--model-data s3://.../model.tar.gz]
    python -m knn.evaluate_transform QUERIES.json RESULTS.jsonl [--model-dir MODEL_DIR] [--json OUT]

QUERIES.json is knn.evaluate's file (a list of {"id", "kind", "query", "relevant"}). The first step
writes one request per query, in order, asking for 10 products (`{"query": ..., "n_items": 10}`).
RESULTS.jsonl is the transform's output: one answer (`{"pred0": {...}, ...}`) per request line, in
the same order. The metrics are knn.evaluate's (recall@1/5/10, MRR@10, per kind).

With `--model-dir` (the same model, unpacked) the queries whose relevant products are not in its
catalog are skipped, as knn.evaluate skips them, and knn.evaluate's own figures for that model dir are
printed beside the container's, with the queries whose ranking differs: the two must agree, since the
serving code is the same search.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from knn.evaluate import DEPTH, load_queries, mean_metrics, query_metrics


def transform_requests(queries: Sequence[dict], n_items: int = DEPTH) -> list[dict]:
    """One request per query, in the file's order (the transform's input lines)."""
    return [{"query": item["query"], "n_items": n_items} for item in queries]


def write_requests(queries: Sequence[dict], path: str | Path) -> int:
    lines = [json.dumps(request, ensure_ascii=False) for request in transform_requests(queries)]
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def read_results(path: str | Path) -> list[list[str]]:
    """The ranked product ids of each answer line; ValueError naming a line that is not an answer."""
    ranked = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            answer = json.loads(line)
            ranked.append([str(answer[f"pred{i}"]["product_id"]) for i in range(len(answer))])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}, line {number}: not an answer {{\"pred0\": {{\"product_id\": ...}}, ...}} "
                             f"({type(exc).__name__}: {exc})") from None
    return ranked


def score(queries: Sequence[dict], ranked: Sequence[Sequence[str]], catalog: set[str] | None = None) -> dict:
    """knn.evaluate's metrics for answers given in the queries' order."""
    if len(ranked) != len(queries):
        raise ValueError(f"{len(ranked)} answers for {len(queries)} queries: the results must hold one answer per "
                         "query, in the order of the requests written by --write-requests")
    rows, skipped = [], []
    for item, products in zip(queries, ranked):
        relevant = [p for p in item["relevant"] if catalog is None or p in catalog]
        if not relevant:
            skipped.append(item["id"])
            continue
        rows.append({"id": item["id"], "kind": item["kind"], "query": item["query"], "n_relevant": len(relevant),
                     **query_metrics(list(products), relevant), "ranked": list(products)})
    kinds = sorted({row["kind"] for row in rows})
    return {"metrics": mean_metrics(rows),
            "by_kind": {kind: {"queries": sum(r["kind"] == kind for r in rows),
                               **mean_metrics([r for r in rows if r["kind"] == kind])} for kind in kinds},
            "per_query": rows, "skipped": skipped}


def compare(container: dict, in_process: dict) -> list[dict]:
    """Queries whose container ranking differs from the in-process one."""
    mine = {row["id"]: row["ranked"] for row in in_process["per_query"]}
    return [{"id": row["id"], "query": row["query"], "container": row["ranked"], "in_process": mine.get(row["id"])}
            for row in container["per_query"] if mine.get(row["id"]) != row["ranked"]]


def _line(name: str, metrics: dict) -> str:
    return f"{name:<22} " + "  ".join(f"{key} {value:.3f}" for key, value in metrics.items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m knn.evaluate_transform", description=__doc__.splitlines()[0])
    parser.add_argument("queries", help="the evaluation set (knn.evaluate's QUERIES.json)")
    parser.add_argument("results", nargs="?", help="the transform's output, one answer per request line")
    parser.add_argument("--write-requests", metavar="REQUESTS.jsonl", help="write the transform's input and stop")
    parser.add_argument("--model-dir", help="the same model, unpacked: skip what its catalog lacks, compare in-process")
    parser.add_argument("--json", metavar="OUT", help="write the figures and per-query rankings here")
    args = parser.parse_args(argv)
    try:
        queries = load_queries(args.queries)
        if args.write_requests:
            print(f"wrote {write_requests(queries, args.write_requests)} requests to {args.write_requests}")
            return 0
        if not args.results:
            parser.error("give RESULTS.jsonl (or --write-requests REQUESTS.jsonl first)")
        catalog, in_process = None, None
        if args.model_dir:
            from knn.evaluate import evaluate

            report = evaluate(args.model_dir, args.queries)
            kind = next(iter(report["runs"]))  # the model's own index, as the endpoint serves it
            in_process = report["runs"][kind]
            import pandas as pd

            catalog = set(pd.read_parquet(Path(args.model_dir) / "catalog.parquet")["product_id"].astype(str))
        container = score(queries, read_results(args.results), catalog)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(container['per_query'])} queries scored ({len(container['skipped'])} skipped: no relevant product "
          "in the catalog)")
    print(_line("transform (container)", container["metrics"]))
    output = {"container": container}
    if in_process is not None:
        print(_line("knn.evaluate (in-process)", in_process["metrics"]))
        differ = compare(container, in_process)
        print(f"rankings that differ: {len(differ)}" + "".join(f"\n  {d['id']}: {d['query']!r}" for d in differ[:10]))
        output.update(in_process={"metrics": in_process["metrics"]}, differ=differ)
    if args.json:
        Path(args.json).write_text(json.dumps(output, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
