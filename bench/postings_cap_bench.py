"""BM25 postings cap benchmark: a served model searched with each term's postings read whole, and with
at most knn.lexical.POSTINGS_PER_TERM of them (the heaviest), side by side in one process.

Run:  .venv/bin/python bench/postings_cap_bench.py [--model-dir DIR] [--queries 300]

The model dir (default: scale_bench's cached 5M model) must store its postings heaviest first (a fit
since the cap: `"postings": "by_weight"` in lexical/*_vocabulary.json). Both ways answer the same queries
(scale_bench's: held-out synthetic query vectors, and whole corpus sentences as the query text), in
alternating blocks of 50 so that the machine's noise falls on both alike. Reports the search latency
(ProductSearch.search_vectors, query vector given) and BM25's part of it (ProductSearch._word_scores),
p50/p99 each way, and how far the answers differ: the share of each query's top-10 products that both
ways return, and the queries whose top 10 are identical. Writes --out (default
bench/results/postings_cap.json).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import WORK_DIR, report as write_report  # noqa: E402
from knn_bench import clustered_unit_vectors, percentiles  # noqa: E402
from knn.lexical import POSTINGS_PER_TERM  # noqa: E402

DEFAULT_MODEL = WORK_DIR / "scale-5000000-auto" / "model"
BLOCK = 50


def _indexes(search):
    return [index for index in (search.lexical, search.passage_lexical, search._title_lexical) if index is not None]


def run(model_dir: Path, n_queries: int, n_items: int = 10, seed: int = 7) -> dict:
    from knn.model_dir import load_model_dir

    search = load_model_dir(model_dir)
    indexes = _indexes(search)
    if not all(index.by_weight for index in indexes):
        raise SystemExit(f"{model_dir}: its BM25 postings are stored by document (a model written before the cap); "
                         "rebuild it (scale_bench.py --rebuild) to compare")
    n = len(search.corpus.vectors)
    queries = clustered_unit_vectors(n_queries + 20, seed=1, skip=n)
    sentences = search.corpus.text_column("sentences", "sentence")
    rows = np.random.default_rng(seed).integers(0, len(search.corpus.sentences), n_queries + 20)
    texts = [str(sentences[int(r)]) if not hasattr(sentences, "iat") else str(sentences.iat[int(r)]) for r in rows]

    def capped(on: bool):
        for index in indexes:
            index.by_weight = on

    timings = {way: {"search": [], "words": []} for way in ("all", "capped")}
    answers: dict[str, list] = {"all": [None] * n_queries, "capped": [None] * n_queries}
    for way in ("all", "capped"):  # warm-up, both ways
        capped(way == "capped")
        for i in range(n_queries, n_queries + 20):
            search.search_vectors(queries[i], n_items, texts[i])
    for begin in range(0, n_queries, BLOCK):
        for way in ("all", "capped") if (begin // BLOCK) % 2 == 0 else ("capped", "all"):
            capped(way == "capped")
            for i in range(begin, min(begin + BLOCK, n_queries)):
                start = time.perf_counter()
                results = search.search_vectors(queries[i], n_items, texts[i])
                timings[way]["search"].append(time.perf_counter() - start)
                start = time.perf_counter()
                search._word_scores(texts[i], None)
                timings[way]["words"].append(time.perf_counter() - start)
                answers[way][i] = [r["product_id"] for r in results]
    capped(True)
    shared = [len(set(a) & set(b)) / max(len(a), 1) for a, b in zip(answers["all"], answers["capped"])]
    return {"model_dir": str(model_dir), "sentences": n, "queries": n_queries,
            "postings_per_term": POSTINGS_PER_TERM,
            "search_ms": {way: percentiles(np.asarray(t["search"]) * 1e3) for way, t in timings.items()},
            "bm25_ms": {way: percentiles(np.asarray(t["words"]) * 1e3) for way, t in timings.items()},
            "top10_products_shared": round(float(np.mean(shared)), 4),
            "top10_identical_queries": round(float(np.mean([a == b for a, b in zip(answers["all"], answers["capped"])])), 4)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "postings_cap.json")
    args = parser.parse_args(argv)
    data = run(args.model_dir, args.queries)
    for way in ("all", "capped"):
        search, words = data["search_ms"][way], data["bm25_ms"][way]
        print(f"postings {way:>6}: search p50 {search['p50']:.2f} / p99 {search['p99']:.2f} ms; "
              f"BM25 p50 {words['p50']:.2f} / p99 {words['p99']:.2f} ms")
    print(f"top-10 products shared: {data['top10_products_shared']:.4f}; identical top 10: "
          f"{data['top10_identical_queries']:.4f} of {data['queries']} queries")
    write_report("postings_cap", data, [], args.out)
    return data


if __name__ == "__main__":
    main()
