"""ProductSearch: a shopper's phrase -> the products whose review sentences mean the same thing.

Ranking (baseline, documented in the README):
1. The query is split into sentences like the reviews are; each query sentence is embedded.
2. For each query sentence the index returns CANDIDATES_PER_SENTENCE nearest review sentences; the
   products behind them are the candidates.
3. Every candidate product is scored against every query sentence exactly: its best sentence
   similarity for that query sentence (cosine of unit vectors). The product's score is the mean of
   these best similarities over the query sentences, so every query sentence counts equally.
4. Products are ordered by score, then by product id (deterministic ties). The matched sentence is
   the product's sentence with the highest similarity to any query sentence, shown with its review.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from knn.errors import QueryError
from knn.index import VectorIndex
from knn.sentences import split_sentences

CANDIDATES_PER_SENTENCE = 64
RESULT_FIELDS = (
    "review_id", "product_id", "product_title", "star_rating", "review_headline", "review_body",
    "product_search_score", "matched_sentence",
)


@dataclass(frozen=True)
class Corpus:
    """The searchable data: reviews, their sentences, and the sentence vectors (row-aligned)."""

    catalog: pd.DataFrame  # one row per review, knn.reviews.CATALOG_COLUMNS
    sentences: pd.DataFrame  # columns: sentence (str), review_row (int, row of catalog)
    vectors: np.ndarray  # float32 (len(sentences), dimensions), unit rows


class ProductSearch:
    """Answers queries over a Corpus with an encoder and a vector index."""

    def __init__(self, encoder, index: VectorIndex, corpus: Corpus,
                 candidates_per_sentence: int = CANDIDATES_PER_SENTENCE):
        self.encoder = encoder
        self.index = index
        self.corpus = corpus
        self.candidates_per_sentence = candidates_per_sentence
        catalog = corpus.catalog
        review_rows = corpus.sentences["review_row"].to_numpy(np.int64)
        codes, self._product_ids = pd.factorize(catalog["product_id"], sort=True)
        self._product_of_review = codes.astype(np.int64)
        self._product_of_sentence = self._product_of_review[review_rows]
        self._review_of_sentence = review_rows
        # Sentences grouped by product, to score a candidate product against all its sentences.
        order = np.argsort(self._product_of_sentence, kind="stable")
        self._sentences_by_product = order
        counts = np.bincount(self._product_of_sentence, minlength=len(self._product_ids))
        self._product_offsets = np.concatenate([[0], np.cumsum(counts)])
        self._n_products_with_sentences = int((counts > 0).sum())

    @property
    def n_products(self) -> int:
        return len(self._product_ids)

    def query_sentences(self, query: str | Sequence[str]) -> list[str]:
        """The sentences of a query (a string or a list of strings), empty ones removed."""
        texts = [query] if isinstance(query, str) else list(query)
        sentences = [s for text in texts for s in split_sentences(text)]
        if not sentences:
            raise QueryError("the query has no words to search for; send a phrase such as 'my kids loved it'")
        return sentences

    def search(self, query: str | Sequence[str], n_items: int = 3) -> list[dict]:
        """The `n_items` best products for `query`, best first, each a dict of RESULT_FIELDS."""
        if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 1:
            raise QueryError(f"n_items must be a whole number >= 1, got {n_items!r}")
        sentences = self.query_sentences(query)
        if len(self.corpus.vectors) == 0:
            return []
        query_vectors = self.encoder.encode(sentences, progress=False)
        return self.search_vectors(query_vectors, int(n_items))

    def search_vectors(self, query_vectors: np.ndarray, n_items: int) -> list[dict]:
        k = min(max(self.candidates_per_sentence, 2 * n_items), len(self.corpus.vectors))
        hit_ids, _ = self.index.query(query_vectors, k)
        candidates = np.unique(self._product_of_sentence[hit_ids.ravel()])
        if len(candidates) < min(n_items, self._n_products_with_sentences):
            # The caller wants more products than the neighbours cover: score them all.
            candidates = np.flatnonzero(np.diff(self._product_offsets))
        scores, best_sentence = self._score(candidates, query_vectors)
        order = np.lexsort((self._product_ids[candidates], -scores))[:n_items]
        return [self._result(best_sentence[i], float(scores[i])) for i in order]

    def _score(self, products: np.ndarray, query_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        starts, ends = self._product_offsets[products], self._product_offsets[products + 1]
        lengths = ends - starts
        owner = np.repeat(np.arange(len(products)), lengths)
        rows = self._sentences_by_product[np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])]
        sims = self.corpus.vectors[rows] @ query_vectors.T  # (sentences, query sentences)
        best_per_query = np.full((len(products), len(query_vectors)), -np.inf, dtype=np.float32)
        np.maximum.at(best_per_query, owner, sims)
        scores = best_per_query.mean(axis=1)
        # The matched sentence: highest similarity to any query sentence; ties -> earliest row.
        overall = sims.max(axis=1)
        pick = np.lexsort((rows, -overall, owner))
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        return scores, rows[pick[first]]

    def _result(self, sentence_row: int, score: float) -> dict:
        review = self.corpus.catalog.iloc[int(self._review_of_sentence[sentence_row])]
        return {
            "review_id": str(review["review_id"]),
            "product_id": str(review["product_id"]),
            "product_title": str(review["product_title"]),
            "star_rating": int(review["star_rating"]),
            "review_headline": str(review["review_headline"]),
            "review_body": str(review["review_body"]),
            "product_search_score": round(score, 6),
            "matched_sentence": str(self.corpus.sentences["sentence"].iloc[int(sentence_row)]),
        }
