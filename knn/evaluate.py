"""Evaluate a model dir against a set of queries with known relevant products.

    python -m knn.evaluate MODEL_DIR QUERIES.json [--json OUT] [--set NAME=VALUE ...] [--misses N]

QUERIES.json is a list of objects: {"id": str, "kind": str, "query": str | [str, ...],
"relevant": [product_id, ...]} ("id" and "kind" optional; see bench/eval/toys_queries.json).
Relevant ids that are not in the model's catalog are ignored; a query left with none is skipped.

Prints product recall@1/@5/@10 and MRR@10 for the model's own index (the kNN graph) and for exact
search over the same vectors, side by side, per query kind too, with query timings; then the misses
(queries whose first result is not relevant) with what came back instead. `--json OUT` writes the
figures and the per-query results (these quote product titles and review sentences: keep such files
out of the repository when the reviews may not be republished, as with the Amazon data). `--set lexical_weight=0` (any knn.search.Ranking field, repeatable)
evaluates another ranking on the same model; `--set baseline=1` starts from the seed's ranking.

Definitions (k = 1, 5, 10):
- recall@k = |relevant among the first k products| / min(k, |relevant|): the share of what the
  first k results could hold at best, so a query with 300 relevant products is judged on its first
  10, and a query with 1 relevant product scores recall@k = 1 when it is among the first k.
- MRR@10 = mean over queries of 1 / rank of the first relevant product in the first 10 (0 if none).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

KS = (1, 5, 10)
DEPTH = max(KS)


# --- metrics on hand-made rankings -----------------------------------------------------------------
def recall_at(ranked: Sequence[str], relevant: set[str] | Sequence[str], k: int) -> float:
    """|relevant in ranked[:k]| / min(k, |relevant|); 0.0 when nothing is relevant."""
    relevant = set(relevant)
    if not relevant or k < 1:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / min(k, len(relevant))


def reciprocal_rank(ranked: Sequence[str], relevant: set[str] | Sequence[str], k: int = DEPTH) -> float:
    """1 / (1-based rank of the first relevant item within ranked[:k]), or 0.0."""
    relevant = set(relevant)
    for rank, item in enumerate(ranked[:k], start=1):
        if item in relevant:
            return 1.0 / rank
    return 0.0


def query_metrics(ranked: Sequence[str], relevant: set[str] | Sequence[str]) -> dict[str, float]:
    out = {f"recall@{k}": recall_at(ranked, relevant, k) for k in KS}
    out["mrr@10"] = reciprocal_rank(ranked, relevant, DEPTH)
    return out


def mean_metrics(rows: Sequence[dict]) -> dict[str, float]:
    names = [f"recall@{k}" for k in KS] + ["mrr@10"]
    if not rows:
        return {name: 0.0 for name in names}
    return {name: round(sum(row[name] for row in rows) / len(rows), 4) for name in names}


# --- query files ------------------------------------------------------------------------------------
def load_queries(path: str | Path) -> list[dict]:
    """Read and check a queries file; raise ValueError naming the first problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the queries ({exc})") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of query objects")
    queries, seen = [], set()
    for position, item in enumerate(data):
        where = f"{path}: item {position}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} is not an object")
        query = item.get("query")
        if not (isinstance(query, str) and query.strip()) and not (
                isinstance(query, list) and query and all(isinstance(q, str) and q.strip() for q in query)):
            raise ValueError(f"{where}: 'query' must be a non-empty string or list of strings")
        relevant = item.get("relevant")
        if not isinstance(relevant, list) or not relevant or not all(isinstance(p, str) and p for p in relevant):
            raise ValueError(f"{where}: 'relevant' must be a non-empty list of product ids")
        qid = str(item.get("id", position))
        if qid in seen:
            raise ValueError(f"{where}: duplicate id {qid!r}")
        seen.add(qid)
        queries.append({"id": qid, "kind": str(item.get("kind", "all")), "query": query,
                        "relevant": sorted(set(relevant))})
    return queries


# --- running ----------------------------------------------------------------------------------------
def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_queries(search, queries: Sequence[dict], encoded: dict | None = None) -> dict:
    """Rank every query with `search`; returns figures, per-query rows and timings (ms)."""
    products = set(search.corpus.catalog["product_id"].astype(str))
    rows, rank_ms, encode_ms = [], [], []
    skipped = []
    for item in queries:
        relevant = [p for p in item["relevant"] if p in products]
        if not relevant:
            skipped.append(item["id"])
            continue
        sentences = search.query_sentences(item["query"])
        if encoded is not None and item["id"] in encoded:
            vectors = encoded[item["id"]]
        else:
            start = time.perf_counter()
            vectors = search.encoder.encode(sentences, progress=False)
            encode_ms.append((time.perf_counter() - start) * 1000)
            if encoded is not None:
                encoded[item["id"]] = vectors
        start = time.perf_counter()
        results = search.search_vectors(vectors, DEPTH, sentences)
        rank_ms.append((time.perf_counter() - start) * 1000)
        ranked = [r["product_id"] for r in results]
        rows.append({"id": item["id"], "kind": item["kind"], "query": item["query"], "n_relevant": len(relevant),
                     **query_metrics(ranked, relevant), "ranked": ranked,
                     "results": [{"product_id": r["product_id"], "product_title": r["product_title"],
                                  "matched_sentence": r["matched_sentence"],
                                  "score": r["product_search_score"], "relevant": r["product_id"] in relevant}
                                 for r in results]})
    kinds = sorted({row["kind"] for row in rows})
    return {
        "metrics": mean_metrics(rows),
        "by_kind": {kind: {"queries": sum(r["kind"] == kind for r in rows), **mean_metrics([r for r in rows if r["kind"] == kind])}
                    for kind in kinds},
        "timing_ms": {"rank_p50": round(_percentile(rank_ms, 0.5), 2), "rank_p95": round(_percentile(rank_ms, 0.95), 2),
                      **({"encode_p50": round(_percentile(encode_ms, 0.5), 2)} if encode_ms else {})},
        "per_query": rows,
        "skipped": skipped,
    }


def exact_twin(search):
    """The same search with exact nearest-neighbour indexes over the same vectors."""
    from knn.index import ExactIndex

    corpus = search.corpus
    headline_index = ExactIndex(corpus.headline_vectors) if corpus.headline_vectors is not None else None
    return search.with_ranking(index=ExactIndex(corpus.vectors), headline_index=headline_index)


def parse_settings(pairs: Sequence[str]):
    """`--set` values -> a knn.search.Ranking."""
    from knn.search import BASELINE_RANKING, Ranking

    ranking, changes = Ranking(), {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set expects NAME=VALUE, got {pair!r}")
        name = name.strip()
        if name == "baseline":
            if value.strip().lower() in ("1", "true", "yes", "on"):
                ranking = BASELINE_RANKING
            continue
        changes[name] = value
    return ranking.replace(**changes)


def evaluate(model_dir: str | Path, queries_path: str | Path, settings: Sequence[str] = (), threads: int = 1,
             repeats: int = 1) -> dict:
    """Load the model dir, run the queries with its index and with exact search; the full report."""
    from knn.model_dir import load_model_dir

    queries = load_queries(queries_path)
    ranking = parse_settings(settings)
    start = time.perf_counter()
    search = load_model_dir(model_dir, threads=threads).with_ranking(ranking)
    load_s = time.perf_counter() - start
    encoded: dict = {}
    report = {
        "model_dir": str(model_dir), "queries_file": str(queries_path), "n_queries": len(queries),
        "ranking": {name: getattr(ranking, name) for name in ranking.__dataclass_fields__},
        "catalog": {"reviews": int(len(search.corpus.catalog)), "products": int(search.n_products),
                    "sentences": int(len(search.corpus.sentences)),
                    "headlines": int(len(search.corpus.headlines)) if search.corpus.headlines is not None else 0},
        "load_s": round(load_s, 2), "runs": {},
    }
    for name, variant in ((search.index.kind, search), ("exact", exact_twin(search))):
        if name in report["runs"]:
            continue  # the model's own index is exact already
        result = run_queries(variant, queries, encoded)
        for _ in range(repeats - 1):  # timings only: the rankings are deterministic
            again = run_queries(variant, queries, encoded)
            result["timing_ms"] = {key: min(value, again["timing_ms"].get(key, value)) for key, value in result["timing_ms"].items()}
        report["runs"][name] = result
    return report


# --- printing ---------------------------------------------------------------------------------------
def format_report(report: dict, misses: int = 10) -> str:
    runs = report["runs"]
    names = list(runs)
    first = runs[names[0]]
    kinds = list(first["by_kind"])
    mix = ", ".join(f"{first['by_kind'][k]['queries']} {k}" for k in kinds)
    lines = [
        f"{Path(report['queries_file']).name}: {len(first['per_query'])} queries ({mix}) on {report['model_dir']} "
        f"({report['catalog']['reviews']} reviews, {report['catalog']['products']} products, "
        f"{report['catalog']['sentences']} sentences, {report['catalog']['headlines']} headlines)",
        "ranking: " + " ".join(f"{k}={v}" for k, v in report["ranking"].items()),
    ]
    if first["skipped"]:
        lines.append(f"skipped (no relevant product in this catalog): {', '.join(first['skipped'])}")
    lines.append("")
    lines.append(f"{'':22s}" + "".join(f"{name:>10s}" for name in names))
    for metric in ("recall@1", "recall@5", "recall@10", "mrr@10"):
        lines.append(f"{metric:22s}" + "".join(f"{runs[n]['metrics'][metric]:10.3f}" for n in names))
    for kind in kinds:
        for metric in ("recall@10", "mrr@10"):
            label = f"  {kind} {metric}"
            lines.append(f"{label:22s}" + "".join(f"{runs[n]['by_kind'][kind][metric]:10.3f}" for n in names))
    for key in ("rank_p50", "rank_p95", "encode_p50"):
        if all(key in runs[n]["timing_ms"] for n in names):
            lines.append(f"{'ms ' + key:22s}" + "".join(f"{runs[n]['timing_ms'][key]:10.2f}" for n in names))
    rows = [row for row in first["per_query"] if row["recall@1"] < 1.0]
    lines.append("")
    lines.append(f"misses ({names[0]}): {len(rows)} queries whose first product is not relevant"
                 + (f"; showing {min(misses, len(rows))}" if rows else ""))
    for row in rows[:misses]:
        where = next((i + 1 for i, r in enumerate(row["results"]) if r["relevant"]), None)
        query = row["query"] if isinstance(row["query"], str) else " | ".join(row["query"])
        lines.append(f"- [{row['id']}] {query!r}: {row['n_relevant']} relevant, "
                     + (f"first relevant at rank {where}" if where else "none in the first 10"))
        for rank, result in enumerate(row["results"][:3], start=1):
            mark = "+" if result["relevant"] else " "
            lines.append(f"    {rank}{mark} {result['product_title'][:48]!r}: {result['matched_sentence'][:90]!r}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m knn.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("queries")
    parser.add_argument("--json", dest="json_out", help="write the figures and per-query results here")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                        help="ranking setting (knn.search.Ranking field); baseline=1 for the seed's ranking")
    parser.add_argument("--misses", type=int, default=10, help="how many misses to print (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="encoder threads (default 1)")
    parser.add_argument("--repeats", type=int, default=1, help="rank every query this many times; best timing kept")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from knn.errors import SearchError

    try:
        report = evaluate(args.model_dir, args.queries, args.settings, args.threads, args.repeats)
    except (ValueError, OSError, SearchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report, args.misses))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
