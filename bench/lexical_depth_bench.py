"""BM25 candidates benchmark: how deep `LexicalIndex.best` reads each term's postings, side by side in one
process, against reading every posting (the exact answer).

Run:  .venv/bin/python bench/lexical_depth_bench.py [--model-dir DIR] [--queries 300]

The model dir (default: scale_bench's cached 5M model) must store its postings heaviest first (a fit
since the cap: `"postings": "by_weight"` in lexical/*_vocabulary.json; `scale_bench.py` upgrades a
cached model that does not). Each way answers the same queries (scale_bench's held-out synthetic query
vectors) with two kinds of query text: whole corpus sentences, and the 92 shopper queries of bench/eval's
toys sets. The ways, in alternating blocks of 50 queries so that the machine's noise falls on all alike:
- `every posting`: the exact top documents, every posting of every query term read;
- one way per set of depths (knn.lexical._DEPTHS), and the served depths once more as "served (...)":
  the same code as its listed twin, so the two rows show the run's noise.
Reports the search latency (ProductSearch.search_vectors, query vector given) and BM25's part of it
(ProductSearch._word_scores) p50/p99, how often `best` was exact, and how far the answers differ from
the exact ones: the share of each query's top-10 products both return, and the queries whose top 10 are
identical. Writes --out (default bench/results/lexical_depth.json; the 1M model's run:
bench/results/lexical_depth-1m.json).
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

import knn.lexical as lexical  # noqa: E402
from common import WORK_DIR, report as write_report  # noqa: E402
from knn_bench import clustered_unit_vectors, percentiles  # noqa: E402
from scale_bench import shopper_queries  # noqa: E402

DEFAULT_MODEL = WORK_DIR / "scale-5000000-auto" / "model"
BLOCK = 50
EVERY_POSTING = (1 << 62,)
WAYS = {"every posting": EVERY_POSTING, "4k": (4096,), "4k, 8k": (4096, 8192), "4k, 16k": (4096, 16384),
        "4k, 16k, 64k": (4096, 16384, 65536)}


def _indexes(search):
    return [index for index in (search.lexical, search.passage_lexical, search._title_lexical) if index is not None]


def run(model_dir: Path, n_queries: int, n_items: int = 10, seed: int = 7) -> dict:
    from knn.model_dir import load_model_dir

    search = load_model_dir(model_dir)
    indexes = _indexes(search)
    if not all(index.by_weight for index in indexes):
        raise SystemExit(f"{model_dir}: its BM25 postings are stored by document (a model written before the cap); "
                         "upgrade it (knn.model_dir.add_serving_files) or rebuild it to compare")
    served = tuple(lexical._DEPTHS)
    ways = dict(WAYS)
    ways.setdefault(f"served {served}", served)
    n = len(search.corpus.vectors)
    queries = clustered_unit_vectors(n_queries + 20, seed=1, skip=n)
    sentences = search.corpus.text_column("sentences", "sentence")
    rows = np.random.default_rng(seed).integers(0, len(search.corpus.sentences), n_queries + 20)
    whole = [str(sentences[int(r)]) if not hasattr(sentences, "iat") else str(sentences.iat[int(r)]) for r in rows]
    shopper = shopper_queries()
    texts_of = {"whole sentences": whole, "shopper queries": [shopper[i % len(shopper)] for i in range(n_queries + 20)]}
    exact_calls = {"n": 0, "exact": 0}
    best = lexical.LexicalIndex.best

    def counted(self, columns, count, usable=None):
        answer = best(self, columns, count, usable)
        exact_calls["n"] += 1
        exact_calls["exact"] += answer[2]
        return answer

    lexical.LexicalIndex.best = counted
    results = {}
    try:
        for kind, texts in texts_of.items():
            timings = {way: {"search": [], "words": []} for way in ways}
            answers = {way: [None] * n_queries for way in ways}
            exact_share = {}
            for way, depths in ways.items():  # warm-up, every way
                lexical._DEPTHS = depths
                for i in range(n_queries, n_queries + 20):
                    search.search_vectors(queries[i], n_items, texts[i])
            order = list(ways)
            for begin in range(0, n_queries, BLOCK):
                for way in order if (begin // BLOCK) % 2 == 0 else order[::-1]:
                    lexical._DEPTHS = ways[way]
                    exact_calls.update(n=0, exact=0)
                    for i in range(begin, min(begin + BLOCK, n_queries)):
                        start = time.perf_counter()
                        found = search.search_vectors(queries[i], n_items, texts[i])
                        timings[way]["search"].append(time.perf_counter() - start)
                        start = time.perf_counter()
                        search._word_scores(texts[i], None)
                        timings[way]["words"].append(time.perf_counter() - start)
                        answers[way][i] = [r["product_id"] for r in found]
                    got = exact_share.setdefault(way, [0, 0])
                    got[0] += exact_calls["exact"]
                    got[1] += exact_calls["n"]
            truth = answers["every posting"]
            results[kind] = {way: {
                "depths": list(ways[way]),
                "search_ms": percentiles(np.asarray(timings[way]["search"]) * 1e3),
                "bm25_ms": percentiles(np.asarray(timings[way]["words"]) * 1e3),
                "best_exact_share": round(exact_share[way][0] / max(exact_share[way][1], 1), 4),
                "top10_products_shared": round(float(np.mean([len(set(a) & set(b)) / max(len(b), 1)
                                                              for a, b in zip(answers[way], truth)])), 4),
                "top10_identical_queries": round(float(np.mean([a == b for a, b in zip(answers[way], truth)])), 4),
            } for way in ways}
    finally:
        lexical.LexicalIndex.best = best
        lexical._DEPTHS = served
    return {"model_dir": str(model_dir), "sentences": n, "queries": n_queries, "served_depths": list(served),
            "results": results}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "lexical_depth.json")
    args = parser.parse_args(argv)
    data = run(args.model_dir, args.queries)
    for kind, ways in data["results"].items():
        print(f"{kind} ({data['queries']} queries, {data['sentences']:,} sentences):")
        for way, row in ways.items():
            search, words = row["search_ms"], row["bm25_ms"]
            print(f"  {way:>22}: search p50 {search['p50']:6.2f} / p99 {search['p99']:6.2f} ms; BM25 p50 "
                  f"{words['p50']:6.2f} / p99 {words['p99']:6.2f} ms; best() exact {row['best_exact_share']:.3f}; "
                  f"top 10 shared {row['top10_products_shared']:.3f}, identical {row['top10_identical_queries']:.3f}")
    write_report("lexical_depth", data, [], args.out)
    return data


if __name__ == "__main__":
    main()
