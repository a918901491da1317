"""Fit: reviews file -> sentences -> vectors -> index -> model dir. Used by the training entry point."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from knn.encoder import DEFAULT_PRECISION, check_precision, load_encoder
from knn.encoder_export import encoder_model_path
from knn.index import build_index
from knn.lexical import LexicalIndex, kept_headline, passage_documents, review_documents, title_documents
from knn.model_dir import save_model_dir
from knn.reviews import product_titles, read_reviews
from knn.search import CANDIDATES_PER_SENTENCE, Corpus
from knn.sentences import split_many, split_sentences

log = logging.getLogger(__name__)


def sentence_tables(catalog: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every review body split into sentences, and the informative headlines: the passages a model indexes."""
    sentences, owners = split_many(catalog["review_body"].tolist())
    table = pd.DataFrame({"sentence": pd.Series(sentences, dtype=object), "review_row": pd.Series(owners, dtype="int64")})
    headlines = [" ".join(" ".join(split_sentences(kept_headline(h))).split()) for h in catalog["review_headline"].tolist()]
    rows = [row for row, text in enumerate(headlines) if text]
    headline_table = pd.DataFrame({"headline": pd.Series([headlines[row] for row in rows], dtype=object),
                                   "review_row": pd.Series(rows, dtype="int64")})
    return table, headline_table


def build_corpus(catalog: pd.DataFrame, encoder, batch_size: int = 64) -> Corpus:
    """Split every review body into sentences, keep the informative headlines, take each product's
    title; embed all three; build BM25 (reviews, passages, titles)."""
    table, headline_table = sentence_tables(catalog)
    titles = product_titles(catalog)
    vectors = encoder.encode(table["sentence"].tolist(), batch_size=batch_size)
    headline_vectors = encoder.encode(headline_table["headline"].tolist(), batch_size=batch_size)
    title_vectors = encoder.encode(titles["product_title"].tolist(), batch_size=batch_size)
    return corpus_with_lexical(catalog, table, vectors, headline_table, headline_vectors, titles, title_vectors)


def corpus_with_lexical(catalog, table, vectors, headline_table, headline_vectors, titles=None,
                        title_vectors=None) -> Corpus:
    """A Corpus of embedded tables, with its BM25 indexes built."""
    lexical = LexicalIndex.build(review_documents(catalog))
    passage_lexical = LexicalIndex.build(passage_documents(table, headline_table))
    title_lexical = LexicalIndex.build(title_documents(titles)) if titles is not None else None
    return Corpus(catalog, table, vectors, headline_table, headline_vectors, lexical, passage_lexical,
                  titles=titles, title_vectors=title_vectors, title_lexical=title_lexical)


def build_model_dir(reviews_path: str | Path, model_dir: str | Path, index_kind: str = "auto",
                    threads: int = 1, batch_size: int = 64, n_neighbors: int | None = None,
                    precision: str = DEFAULT_PRECISION) -> dict:
    """Build a model dir from a reviews file; return the measured figures (counts and seconds).

    `precision`: the encoder's arithmetic, `float32` or `int8` (knn.encoder_export); the model dir
    keeps that encoder, so serving embeds queries as the sentences were embedded."""
    check_precision(precision)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    catalog = read_reviews(reviews_path)
    timings["read_s"] = time.perf_counter() - start
    log.info("read %d reviews of %d products from %s", len(catalog), catalog["product_id"].nunique(), reviews_path)

    encoder_path = encoder_model_path(precision)  # built once per machine, then cached
    encoder = load_encoder(encoder_path, threads=threads, verify=False)  # encoder_model_path just checked it
    mark = time.perf_counter()
    corpus = build_corpus(catalog, encoder, batch_size=batch_size)
    timings["split_embed_s"] = time.perf_counter() - mark
    log.info("embedded %d sentences, %d headlines and %d product titles (%s encoder) in %.1f s (%.0f sentences/s)",
             len(corpus.sentences), len(corpus.headlines), len(corpus.titles), encoder.precision,
             timings["split_embed_s"], len(corpus.sentences) / max(timings["split_embed_s"], 1e-9))

    mark = time.perf_counter()
    index, headline_index = build_passage_indexes(corpus, index_kind, n_neighbors)
    timings["index_s"] = time.perf_counter() - mark
    log.info("%s index over %d sentences and %s index over %d headlines built in %.1f s", index.kind,
             len(corpus.vectors), headline_index.kind, len(corpus.headline_vectors), timings["index_s"])

    save_model_dir(model_dir, corpus, index, encoder_path, headline_index=headline_index)
    timings["total_s"] = time.perf_counter() - start
    return {"reviews": len(catalog), "sentences": len(corpus.sentences), "headlines": len(corpus.headlines),
            "titles": len(corpus.titles), "index_kind": index.kind, "precision": encoder.precision, **timings,
            **graph_epsilons(index, headline_index)}


def build_passage_indexes(corpus: Corpus, index_kind: str, n_neighbors: int | None = None):
    """The sentence index and the headline index of a corpus. Each graph's search epsilon is calibrated
    with the other kind of passage as held-out queries (same catalogue, not in that index), asking for
    what serving asks (CANDIDATES_PER_SENTENCE)."""
    options = {} if n_neighbors is None else {"n_neighbors": n_neighbors}
    index = build_index(corpus.vectors, index_kind, calibration_queries=corpus.headline_vectors,
                        calibration_k=CANDIDATES_PER_SENTENCE, **options)
    headline_index = build_index(corpus.headline_vectors, index_kind, calibration_queries=corpus.vectors,
                                 calibration_k=CANDIDATES_PER_SENTENCE, **options)
    return index, headline_index


def graph_epsilons(index, headline_index) -> dict:
    """The calibrated search settings, for a fit's figures: each graph's epsilon, each inverted file's
    nprobe."""
    figures = {}
    for name, built in (("sentence", index), ("headline", headline_index)):
        if getattr(built, "calibration", None):
            setting = "nprobe" if built.kind == "ivf" else "epsilon"
            figures[f"{name}_{setting}"] = getattr(built, setting)
    return figures
