"""knn.lexical: postings stored heaviest first, and a query reading at most POSTINGS_PER_TERM per term."""
import json

import numpy as np
import pytest

import knn.lexical as lexical
from knn.lexical import LexicalIndex

DOCUMENTS = [
    "soft owl plush", "owl", "a very long review about an owl that is soft and a plush and more words here",
    "train set", "owl owl owl", "plush train", "soft soft blanket", "owl plush soft train set blanket",
] * 5
QUERIES = ["owl", "soft owl", "plush train set", "blanket owl soft plush", "nothing here", "owl owl"]


def by_document(index: LexicalIndex) -> LexicalIndex:
    """The same index stored as model dirs written before stored it: postings by document."""
    matrix = index.weights.copy()
    matrix.sort_indices()
    return LexicalIndex(index.vocabulary, matrix, by_weight=False)


def test_a_fit_stores_each_terms_postings_heaviest_first():
    index = LexicalIndex.build(DOCUMENTS)
    assert index.by_weight
    weights = index.weights
    for column in range(weights.shape[1]):
        span = slice(weights.indptr[column], weights.indptr[column + 1])
        data, rows = weights.data[span], weights.indices[span]
        assert np.all(np.diff(data) <= 0)
        ties = np.flatnonzero(np.diff(data) == 0)
        assert np.all(rows[ties] < rows[ties + 1])  # ties by document


def test_below_the_cap_hits_are_those_of_postings_by_document_to_the_bit():
    index = LexicalIndex.build(DOCUMENTS)
    older = by_document(index)
    for query in QUERIES:
        rows, values = index.hits(query)
        old_rows, old_values = older.hits(query)
        np.testing.assert_array_equal(rows, old_rows)
        np.testing.assert_array_equal(values, old_values)
        assert np.all(np.diff(rows) > 0)  # ascending, as before
        assert index.full_match(query) == older.full_match(query)


@pytest.mark.parametrize("cap", [1, 3, 7])
def test_a_query_reads_each_terms_heaviest_postings_only(monkeypatch, cap):
    index = LexicalIndex.build(DOCUMENTS)
    older = by_document(index)
    monkeypatch.setattr(lexical, "POSTINGS_PER_TERM", cap)
    for query in QUERIES:
        expected = np.zeros(index.n_documents, np.float64)
        for term in set(lexical.tokens(query)):
            if term in index._column:
                column = older.weights[:, [index._column[term]]].toarray().ravel()
                heaviest = np.lexsort((np.arange(len(column)), -column))[:min(cap, np.count_nonzero(column))]
                expected[heaviest] += column[heaviest]
        rows, values = index.hits(query)
        np.testing.assert_array_equal(rows, np.flatnonzero(expected))
        np.testing.assert_allclose(values, expected[rows], rtol=1e-6)
        assert len(older.hits(query)[0]) >= len(rows)  # stored by document: every posting is read


def test_the_order_is_saved_and_an_index_saved_by_document_still_loads_and_reads_everything(tmp_path, monkeypatch):
    index = LexicalIndex.build(DOCUMENTS)
    index.save(tmp_path, "passages")
    loaded = LexicalIndex.load(tmp_path, "passages", index.n_documents)
    assert loaded.by_weight
    by_document(index).save(tmp_path, "older")
    meta = json.loads((tmp_path / "older_vocabulary.json").read_text())
    assert meta["postings"] == "by_document"
    del meta["postings"]  # as model dirs written before the postings order wrote it
    (tmp_path / "older_vocabulary.json").write_text(json.dumps(meta))
    older = LexicalIndex.load(tmp_path, "older", index.n_documents)
    assert not older.by_weight
    monkeypatch.setattr(lexical, "POSTINGS_PER_TERM", 1)
    assert len(older.hits("owl")[0]) == int(np.count_nonzero(older.weights[:, [older._column["owl"]]].toarray()))
    assert len(loaded.hits("owl")[0]) == 1
