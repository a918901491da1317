"""knn.search.ProductSearch on the fixtures: paraphrases, distinct products, every query sentence counts."""
import json

import numpy as np
import pytest

from conftest import FIXTURES
from knn.errors import QueryError
from knn.search import RESULT_FIELDS

QUERIES = json.loads((FIXTURES / "queries.json").read_text())


@pytest.mark.parametrize("case", QUERIES, ids=[q["query"][:40] for q in QUERIES])
def test_expected_product_comes_first(fixture_search, case):
    results = fixture_search.search(case["query"], n_items=3)
    assert results[0]["product_id"] == case["product_id"], [r["product_title"] for r in results]
    if case.get("kind") == "exact":
        assert results[0]["matched_sentence"] == case["query"]
        assert results[0]["product_search_score"] >= 0.99


def test_results_carry_the_seed_fields_and_distinct_products(fixture_search):
    results = fixture_search.search("a fun toy", n_items=5)
    assert len(results) == 5
    for result in results:
        assert tuple(result) == RESULT_FIELDS
        assert result["matched_sentence"] in result["review_body"] or "<" in result["review_body"] or "&" in result["review_body"]
        assert isinstance(result["star_rating"], int)
    assert len({r["product_id"] for r in results}) == 5
    scores = [r["product_search_score"] for r in results]
    assert scores == sorted(scores, reverse=True)


def test_n_items_beyond_catalog_returns_every_product(fixture_search):
    results = fixture_search.search("toy", n_items=10_000)
    with_sentences = fixture_search.corpus.catalog.loc[
        fixture_search.corpus.sentences["review_row"].unique(), "product_id"].nunique()
    assert len(results) == with_sentences
    assert len({r["product_id"] for r in results}) == len(results)


def test_deterministic(fixture_search):
    assert fixture_search.search("gift for a child", 5) == fixture_search.search("gift for a child", 5)


def test_every_query_sentence_counts(fixture_search):
    first, second = QUERIES[0], next(q for q in QUERIES if q["product_id"] != QUERIES[0]["product_id"])
    combined = fixture_search.search([first["query"], second["query"]], n_items=2)
    assert {r["product_id"] for r in combined} == {first["product_id"], second["product_id"]}
    # The score is the mean over query sentences of each product's best sentence similarity.
    query_vectors = fixture_search.encoder.encode([first["query"], second["query"]])
    top = combined[0]
    rows = fixture_search.corpus.catalog.index[fixture_search.corpus.catalog["product_id"] == top["product_id"]]
    mask = fixture_search.corpus.sentences["review_row"].isin(rows).to_numpy()
    expected = (fixture_search.corpus.vectors[mask] @ query_vectors.T).max(axis=0).mean()
    assert top["product_search_score"] == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize("query", ["", "   ", "?!", [], ["", "..."]])
def test_queries_without_words_are_refused(fixture_search, query):
    with pytest.raises(QueryError, match="no words"):
        fixture_search.search(query)


@pytest.mark.parametrize("n_items", [0, -1, 2.5, "3", True])
def test_bad_n_items(fixture_search, n_items):
    with pytest.raises(QueryError, match="n_items"):
        fixture_search.search("kite", n_items=n_items)


def test_empty_body_reviews_stay_in_catalog_without_sentences(fixture_search):
    catalog = fixture_search.corpus.catalog
    empty = catalog.index[catalog["review_body"].str.strip() == ""]
    assert len(empty) >= 1
    assert not np.isin(empty, fixture_search.corpus.sentences["review_row"]).any()
