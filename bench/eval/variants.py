"""Ranking variants on a model dir, scored exhaustively (every product, no kNN candidates), one table.

    python bench/eval/variants.py MODEL_DIR [QUERIES.json] [--json OUT]

This is how the choices in knn/search.py were made: each row changes one thing against the seed's
ranking (best sentence per query sentence, mean over query sentences) or against the kept ranking.
Scoring every product removes the candidate stage, so rows differ only by the ranking; the shipped
pipeline (kNN candidates, graph vs exact) is measured by `python -m knn.evaluate`.
Needs a model dir built by this version (headlines + lexical index).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from knn.evaluate import load_queries, mean_metrics, query_metrics  # noqa: E402
from knn.lexical import LexicalIndex, kept_headline  # noqa: E402
from knn.model_dir import load_model_dir  # noqa: E402

HERE = Path(__file__).resolve().parent
KEPT = {"headline": True, "short_words": 3, "short_weight": 0.8, "lex": 0.5, "lex_norm": "coverage",
        "lex_unit": "review+passage"}
VARIANTS = [
    ("baseline: best sentence, mean over query sentences", {}),
    ("aggregate: mean of top-2 sentences", {"agg": "top2"}),
    ("aggregate: mean of top-3 sentences", {"agg": "top3"}),
    ("aggregate: + 0.05 log(#reviews with sim >= 0.5)", {"agg": "count", "tau": 0.5, "gamma": 0.05}),
    ("aggregate: + 0.10 log(#reviews with sim >= 0.45)", {"agg": "count", "tau": 0.45, "gamma": 0.1}),
    ("query sentences: min", {"combine": "min"}),
    ("query sentences: (mean + min) / 2", {"combine": "meanmin"}),
    ("query sentences: whole query only", {"whole": "only"}),
    ("query sentences: mean incl. whole query", {"whole": "add"}),
    ("short (<=2 words) not indexed", {"short_words": 2, "short_weight": 0.0}),
    ("short (<=3 words) not indexed", {"short_words": 3, "short_weight": 0.0}),
    ("short (<=3 words) x0.8", {"short_words": 3, "short_weight": 0.8}),
    ("duplicates: sim x freq^-0.05", {"dup_beta": 0.05}),
    ("duplicates: sim x freq^-0.1", {"dup_beta": 0.1}),
    ("headlines indexed", {"headline": True}),
    ("BM25/review, max-norm, +0.2", {"lex": 0.2, "lex_norm": "max"}),
    ("BM25/review, max-norm, +0.35", {"lex": 0.35, "lex_norm": "max"}),
    ("BM25/review, max-norm, +0.5", {"lex": 0.5, "lex_norm": "max"}),
    ("BM25/product, max-norm, +0.35", {"lex": 0.35, "lex_norm": "max", "lex_unit": "product"}),
    ("BM25/sentence, max-norm, +0.35", {"lex": 0.35, "lex_norm": "max", "lex_unit": "sentence"}),
    ("BM25/review, reciprocal rank fusion", {"lex": 1.0, "lex_norm": "rrf"}),
    ("BM25/review, coverage-norm, +0.5", {"lex": 0.5, "lex_norm": "coverage"}),
    ("BM25/review+passage, coverage-norm, +0.5", {"lex": 0.5, "lex_norm": "coverage", "lex_unit": "review+passage"}),
    ("kept: headlines + short x0.8 + BM25 review+passage coverage +0.5", KEPT),
    ("kept, BM25 per review only", {**KEPT, "lex_unit": "review"}),
    ("kept, BM25 +0.35", {**KEPT, "lex": 0.35}),
    ("kept, BM25 +0.7", {**KEPT, "lex": 0.7}),
    ("kept, BM25 max-norm +0.35", {**KEPT, "lex": 0.35, "lex_norm": "max"}),
    ("kept, without headlines", {**KEPT, "headline": False}),
    ("kept, without short x0.8", {**KEPT, "short_weight": 1.0}),
    ("kept, + whole query", {**KEPT, "whole": "add"}),
    ("kept, + count bonus", {**KEPT, "agg": "count", "tau": 0.5, "gamma": 0.05}),
]


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", text.lower()).strip()


class Bench:
    def __init__(self, model_dir: str, queries_path: str):
        self.search = load_model_dir(model_dir, threads=2)
        corpus = self.search.corpus
        self.catalog = corpus.catalog
        codes, self.product_ids = pd.factorize(self.catalog["product_id"], sort=True)
        self.review_product = codes.astype(np.int64)
        self.n = len(self.product_ids)
        s, h = corpus.sentences, corpus.headlines
        self.passages = {
            "body": (corpus.vectors, self.review_product[s["review_row"].to_numpy()], s["sentence"]),
            "headline": (corpus.headline_vectors, self.review_product[h["review_row"].to_numpy()], h["headline"]),
        }
        self.words = {k: t.str.count(r"[^\W_]+").to_numpy() for k, (_, _, t) in self.passages.items()}
        self.freq = {}
        for k, (_, _, t) in self.passages.items():
            normed = t.map(_norm)
            self.freq[k] = normed.map(normed.value_counts()).to_numpy().astype(np.float32)
        self.body_review = s["review_row"].to_numpy()
        self.lexical = {"review": corpus.lexical, "passage": corpus.passage_lexical}
        self.passage_owner = np.concatenate([self.passages["body"][1], self.passages["headline"][1]])
        documents = [f"{kept_headline(a)}\n{b}" for a, b in zip(self.catalog["review_headline"], self.catalog["review_body"])]
        self.lexical["product"] = LexicalIndex.build(pd.Series(documents).groupby(codes).agg("\n".join)
                                                     .reindex(range(self.n), fill_value="").tolist())
        self.lexical["sentence"] = LexicalIndex.build(s["sentence"].tolist())
        self.queries = load_queries(queries_path)
        self.relevant = [set(q["relevant"]) for q in self.queries]
        self.sentences = [self.search.query_sentences(q["query"]) for q in self.queries]
        encoder = self.search.encoder
        self.qv = [encoder.encode(x, progress=False) for x in self.sentences]
        self.whole = encoder.encode([" ".join(x) for x in self.sentences], progress=False)

    def _group_max(self, values, owner):
        out = np.full(self.n, -np.inf, np.float32)
        np.maximum.at(out, owner, values)
        return out

    def scores(self, qi: int, cfg: dict) -> np.ndarray:
        qv = self.qv[qi]
        if cfg.get("whole") == "only":
            qv = self.whole[qi:qi + 1]
        elif cfg.get("whole") == "add" and len(qv) > 1:
            qv = np.vstack([qv, self.whole[qi:qi + 1]])
        sims, owners = [], []
        for kind in ("body", "headline") if cfg.get("headline") else ("body",):
            vectors, owner, _ = self.passages[kind]
            weight = np.ones(len(owner), np.float32)
            if cfg.get("short_words"):
                weight = np.where(self.words[kind] <= cfg["short_words"], cfg.get("short_weight", 1.0), 1.0).astype(np.float32)
            if cfg.get("dup_beta"):
                weight = weight * self.freq[kind] ** -cfg["dup_beta"]
            sims.append((vectors @ qv.T) * weight[:, None])
            owners.append(owner)
        sims, owner = np.vstack(sims), np.concatenate(owners)
        per_q = np.stack([self._group_max(sims[:, j], owner) for j in range(sims.shape[1])], 1)
        agg = cfg.get("agg")
        if agg in ("top2", "top3"):
            n = int(agg[-1])
            cols = []
            for j in range(sims.shape[1]):
                frame = pd.DataFrame({"s": sims[:, j], "o": owner}).sort_values("s", ascending=False)
                top = frame.groupby("o").head(n).groupby("o")["s"].sum() / n
                col = np.full(self.n, -np.inf, np.float32)
                col[top.index.to_numpy()] = top.to_numpy()
                cols.append(col)
            per_q = np.stack(cols, 1)
        elif agg == "count":
            # reviews (not sentences) of the product that match at >= tau
            review_owner = np.concatenate([self.body_review] + ([self.search.corpus.headlines["review_row"].to_numpy()]
                                                                 if cfg.get("headline") else []))
            bonus = []
            for j in range(sims.shape[1]):
                hit = np.unique(review_owner[sims[:, j] >= cfg["tau"]])
                count = np.bincount(self.review_product[hit], minlength=self.n)
                bonus.append(cfg["gamma"] * np.log1p(np.maximum(count - 1, 0)))
            per_q = per_q + np.stack(bonus, 1)
        combine = cfg.get("combine", "mean")
        dense = per_q.mean(1) if combine == "mean" else per_q.min(1) if combine == "min" else (per_q.mean(1) + per_q.min(1)) / 2
        weight = cfg.get("lex", 0.0)
        if not weight:
            return dense
        unit, text = cfg.get("lex_unit", "review"), self.sentences[qi]
        if cfg.get("lex_norm") == "rrf":
            lex = np.maximum(self._group_max(self.lexical[unit].scores(text), self.review_product), 0)
            rank_d, rank_l = np.empty(self.n), np.empty(self.n)
            rank_d[np.argsort(-dense, kind="stable")] = np.arange(self.n)
            rank_l[np.argsort(-lex, kind="stable")] = np.arange(self.n)
            return 1 / (60 + rank_d) + weight * np.where(lex > 0, 1 / (60 + rank_l), 0)
        if unit == "review+passage":
            return dense + weight * np.maximum(self._lexical(qi, {**cfg, "lex_unit": "review"}, dense, text),
                                               self._lexical(qi, {**cfg, "lex_unit": "passage"}, dense, text))
        return dense + weight * self._lexical(qi, cfg, dense, text)

    def _lexical(self, qi, cfg, dense, text):  # noqa: ARG002 - same signature for every unit
        unit = cfg.get("lex_unit", "review")
        index = self.lexical[unit]
        raw = index.scores(text)
        owner = {"review": self.review_product, "product": np.arange(self.n), "sentence": self.passages["body"][1],
                 "passage": self.passage_owner}[unit]
        if unit == "passage" and not cfg.get("headline"):
            raw = np.where(np.arange(len(raw)) < len(self.passages["body"][1]), raw, 0)
        lex = np.maximum(self._group_max(raw, owner), 0)
        if cfg.get("lex_norm") == "coverage":
            full = index.full_match(text)
            lex = np.minimum(lex / full, 1.0) if full > 0 else lex * 0
        elif lex.max() > 0:
            lex = lex / lex.max()
        return lex

    def run(self, cfg: dict) -> dict:
        rows = []
        for qi, query in enumerate(self.queries):
            scores = self.scores(qi, cfg)
            top = np.lexsort((np.arange(self.n), -scores))[:10]
            rows.append({"kind": query["kind"], **query_metrics(list(self.product_ids[top]), self.relevant[qi])})
        out = {"all": mean_metrics(rows)}
        for kind in sorted({r["kind"] for r in rows}):
            out[kind] = mean_metrics([r for r in rows if r["kind"] == kind])
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("queries", nargs="?", default=str(HERE / "toys_queries.json"))
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    start = time.perf_counter()
    bench = Bench(args.model_dir, args.queries)
    kinds = sorted({q["kind"] for q in bench.queries})
    print(f"| variant (exhaustive scoring, {len(bench.queries)} queries) | r@1 | r@5 | r@10 | MRR@10 | "
          + " | ".join(f"{k} r@10 / MRR" for k in kinds) + " |")
    print("|---|---|---|---|---|" + "---|" * len(kinds))
    results = {}
    for name, cfg in VARIANTS:
        res = bench.run(cfg)
        results[name] = {"config": cfg, **res}
        a = res["all"]
        print(f"| {name} | {a['recall@1']:.3f} | {a['recall@5']:.3f} | {a['recall@10']:.3f} | {a['mrr@10']:.3f} | "
              + " | ".join(f"{res[k]['recall@10']:.2f} / {res[k]['mrr@10']:.2f}" for k in kinds) + " |", flush=True)
    print(f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
