"""knn.search.ProductSearch on the fixtures: paraphrases, distinct products, every query sentence counts."""
import json

import numpy as np
import pytest

from conftest import FIXTURES
from knn.errors import QueryError
from knn.search import BASELINE_RANKING, RESULT_FIELDS, Ranking

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
        assert result["matched_field"] in ("body", "headline")
        where = result["review_body"] if result["matched_field"] == "body" else result["review_headline"]
        assert result["matched_sentence"] in " ".join(where.split()) or "<" in where or "&" in where
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
    # The mean over query sentences is checked on the seed's ranking (dense, body sentences only);
    # test_score_is_dense_plus_lexical checks the full default ranking.
    fixture_search = fixture_search.with_ranking(BASELINE_RANKING)
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


def test_score_is_dense_plus_lexical(fixture_search):
    """The default ranking, recomputed from the corpus: weighted best passage per query sentence
    (body sentences, kept headlines (<= 3 words x0.8) and pairs of adjacent body sentences of one
    review (their summed vectors), minus the negation penalty where a passage and the query sentence
    disagree on negation), mean over query sentences, plus lexical_weight x the best BM25 coverage
    among the product's reviews and passages, plus title_weight x the title vector's mean similarity
    and title_lexical_weight x the title's BM25 coverage."""
    from knn.search import negated

    ranking = fixture_search.ranking
    assert ranking.negation_penalty > 0 and ranking.window_weight > 0
    query = ["a toy that squirts water in the tub", "the paint never chipped"]
    top = fixture_search.search(query, n_items=1)[0]
    corpus = fixture_search.corpus
    rows = corpus.catalog.index[corpus.catalog["product_id"] == top["product_id"]]
    query_vectors = fixture_search.encoder.encode(query)
    query_negated = negated(query)
    assert query_negated.tolist() == [False, True]

    def weighted(texts, vectors):
        words = texts.str.count(r"[^\W_]+").to_numpy()
        weight = np.where(words <= ranking.short_words, ranking.short_weight, 1.0)
        mismatch = negated(texts)[:, None] != query_negated[None, :]
        return (vectors @ query_vectors.T) * weight[:, None] - ranking.negation_penalty * mismatch

    body = corpus.sentences["review_row"].isin(rows).to_numpy()
    heads = corpus.headlines["review_row"].isin(rows).to_numpy()
    sentences, owners = corpus.sentences["sentence"][body], corpus.sentences["review_row"][body].to_numpy()
    pairs = np.flatnonzero(owners[1:] == owners[:-1])
    summed = corpus.vectors[body][pairs] + corpus.vectors[body][pairs + 1]
    windows = (summed / np.linalg.norm(summed, axis=1, keepdims=True)) @ query_vectors.T
    pair_negated = negated(sentences.to_numpy()[pairs]) | negated(sentences.to_numpy()[pairs + 1])
    windows = ranking.window_weight * windows - ranking.negation_penalty * (pair_negated[:, None] != query_negated[None, :])
    sims = np.vstack([weighted(sentences, corpus.vectors[body]),
                      weighted(corpus.headlines["headline"][heads], corpus.headline_vectors[heads]), windows])
    dense = sims.max(axis=0).mean()
    by_review = corpus.lexical.scores(query)[rows].max() / corpus.lexical.full_match(query)
    passages = np.concatenate([body, heads])  # passage rows: body sentences, then headlines
    by_passage = corpus.passage_lexical.scores(query)[passages].max() / corpus.passage_lexical.full_match(query)
    expected = dense + ranking.lexical_weight * min(max(by_review, by_passage), 1.0)
    assert ranking.title_weight > 0 and ranking.title_lexical_weight > 0
    product = int(np.searchsorted(np.sort(corpus.catalog["product_id"].astype(str).unique()), top["product_id"]))
    title_vector = np.asarray(corpus.title_vectors[product], dtype=np.float32)  # held: a small model
    by_title = corpus.title_lexical.scores(query)[product] / corpus.title_lexical.full_match(query)
    expected += ranking.title_weight * float((query_vectors @ title_vector).mean())
    expected += ranking.title_lexical_weight * min(by_title, 1.0)
    assert top["product_search_score"] == pytest.approx(float(expected), abs=1e-5)


def test_negation_in_the_query_prefers_passages_that_negate_too(fixture_search):
    from knn.search import negated

    assert negated(["it never leaks", "It doesn't leak", "cant complain", "no problems", "it leaks",
                    "Nothing broke", "nobody", "knot", "notable"]).tolist() == [
        True, True, True, True, False, True, True, False, False]
    plain = fixture_search.with_ranking(fixture_search.ranking.replace(negation_penalty=0.0))
    query = "the paint never chipped"
    vectors = fixture_search.encoder.encode([query])
    with_penalty = fixture_search.search_vectors(vectors, 5, [query])
    without = plain.search_vectors(vectors, 5, [query])
    # The penalty only ever lowers a score, by at most its size.
    by_product = {r["product_id"]: r["product_search_score"] for r in without}
    shared = [r for r in with_penalty if r["product_id"] in by_product]
    assert shared
    for result in shared:
        before = by_product[result["product_id"]]
        assert before - 0.05 - 1e-5 <= result["product_search_score"] <= before + 1e-5


def test_rankings_differ_only_where_configured(fixture_search):
    assert Ranking().replace(lexical_weight="0.2", headlines="false") == Ranking(lexical_weight=0.2, headlines=False)
    with pytest.raises(ValueError, match="unknown ranking setting"):
        Ranking().replace(colour="red")
    with pytest.raises(ValueError, match="lexical_norm"):
        Ranking(lexical_norm="rrf")
    with pytest.raises(ValueError, match="short_weight"):
        Ranking().replace(short_weight="1.5")
    baseline = fixture_search.with_ranking(BASELINE_RANKING)
    assert baseline.lexical is None and len(baseline._sources) == 1
    assert len(fixture_search._sources) == 2 and fixture_search.lexical is not None


def test_headlines_are_searched_and_shown_with_their_review(fixture_search):
    catalog = fixture_search.corpus.catalog
    row = catalog.index[catalog["review_headline"] == "Mold inside after a month"][0]
    assert "Mold inside after a month" in fixture_search.corpus.headlines["headline"].tolist()
    result = fixture_search.search("Mold inside after a month", n_items=1)[0]
    assert result["product_id"] == catalog.at[row, "product_id"]
    assert result["review_id"] == catalog.at[row, "review_id"]
    # The headline matched: the answer says so and shows the headline, not some body sentence.
    assert result["review_headline"] == "Mold inside after a month"
    assert result["matched_field"] == "headline"
    assert result["matched_sentence"] == "Mold inside after a month"
    body = fixture_search.search(fixture_search.corpus.sentences["sentence"].iloc[0], n_items=1)[0]
    assert body["matched_field"] == "body" and body["matched_sentence"] == fixture_search.corpus.sentences["sentence"].iloc[0]


def test_star_headlines_are_not_searched(fixture_search):
    assert not fixture_search.corpus.headlines["headline"].str.fullmatch(r"(?i)(one|two|three|four|five) stars?").any()


def test_min_star_rating_only_counts_reviews_rated_that_high(fixture_search):
    sentence = "The remote stopped pairing with the car after two days."
    first = fixture_search.search(sentence, n_items=1)[0]
    assert first["matched_sentence"] == sentence and first["star_rating"] == 1
    for rating in (2, 4, 5):
        results = fixture_search.search(sentence, n_items=20, min_star_rating=rating)
        assert results and all(r["star_rating"] >= rating for r in results)
        assert all(r["matched_sentence"] != sentence for r in results)
    catalog = fixture_search.corpus.catalog
    top_rated = catalog.loc[catalog["star_rating"] >= 5, "product_id"].nunique()
    assert len(fixture_search.search("toy", n_items=100, min_star_rating=5)) == top_rated
    assert fixture_search.search("toy", n_items=3, min_star_rating=1) == fixture_search.search("toy", n_items=3)


def test_offset_pages_through_the_same_ranking(fixture_search):
    query = "a present for a little kid"
    full = fixture_search.search(query, n_items=12)
    assert fixture_search.search(query, n_items=5, offset=0) == full[:5]
    assert fixture_search.search(query, n_items=5, offset=5) == full[5:10]
    assert fixture_search.search(query, n_items=5, offset=10) == fixture_search.search(query, 15)[10:15]
    assert fixture_search.search(query, n_items=5, offset=1000) == []
    rated = fixture_search.search(query, n_items=6, min_star_rating=4)
    assert fixture_search.search(query, n_items=3, offset=3, min_star_rating=4) == rated[3:6]


@pytest.mark.parametrize("name, value", [
    ("min_star_rating", 0), ("min_star_rating", 6), ("min_star_rating", 4.5), ("min_star_rating", "4"),
    ("min_star_rating", True), ("offset", -1), ("offset", 1.5), ("offset", "2"), ("offset", None),
])
def test_bad_filter_values(fixture_search, name, value):
    with pytest.raises(QueryError, match=name):
        fixture_search.search("kite", **{name: value})


def test_lexical_index_terms_and_scores(tmp_path):
    from knn.errors import IndexFileError
    from knn.lexical import LexicalIndex, kept_headline, tokens

    assert tokens("My kids LOVED the Pok&eacute;mon cards<br />Play-Doh!") == ["kid", "love", "pokemon", "card", "play", "doh"]
    assert kept_headline(" Five Stars ") == "" and kept_headline("Five stars for the owl") == "Five stars for the owl"
    index = LexicalIndex.build(["a sloth plush", "kids love pokemon cards", "the owl is soft, so soft", ""])
    assert index.scores("sloths").argmax() == 0 and index.scores("sloths")[1:].sum() == 0
    assert index.scores("the a is").sum() == 0  # stop words only
    assert index.scores("unknownword").sum() == 0
    assert index.scores(["soft", "owl"])[2] > index.scores("soft")[2] > 0
    # A full match of a 2-word query scores about full_match; unknown words raise the bar.
    assert index.full_match("soft owl") < index.full_match("soft owl zebra")
    assert index.full_match("the") == 0.0
    paths = index.save(tmp_path / "lexical", "reviews")
    assert {p.name for p in paths} == {"reviews.npz", "reviews_vocabulary.json"}
    loaded = LexicalIndex.load(tmp_path / "lexical", "reviews", 4)
    assert np.array_equal(loaded.scores("soft owl"), index.scores("soft owl"))
    with pytest.raises(IndexFileError, match="does not match"):
        LexicalIndex.load(tmp_path / "lexical", "reviews", 5)


def test_lexical_hits_are_the_same_merged_densely_or_by_sorting(monkeypatch):
    """Big postings are summed into a dense array instead of sorted: the same rows and the same
    float32 scores, to the bit."""
    import knn.lexical as lexical

    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(40)]
    documents = [" ".join(rng.choice(words, size=int(rng.integers(0, 12)), p=np.linspace(2, 0.1, 40) / 42.0))
                 for _ in range(3000)]
    index = lexical.LexicalIndex.build(documents)
    queries = [" ".join(rng.choice(words, size=int(rng.integers(1, 7)))) for _ in range(200)]
    monkeypatch.setattr(lexical, "_DENSE_BELOW", 1e-12)  # always sorted
    sorted_ = [index.hits(q) for q in queries]
    monkeypatch.setattr(lexical, "_DENSE_BELOW", 10 ** 12)  # dense whenever a query has >= 2 terms
    dense = [index.hits(q) for q in queries]
    assert sum(len(rows) > 0 for rows, _ in dense) > 150
    for (rows_s, scores_s), (rows_d, scores_d) in zip(sorted_, dense):
        np.testing.assert_array_equal(rows_s, rows_d)
        assert scores_s.dtype == scores_d.dtype == np.float32
        np.testing.assert_array_equal(scores_s, scores_d)


def test_passage_norms_and_negation_are_the_same_in_small_blocks(fixture_model_dir, monkeypatch):
    """Pair norms and negation flags are computed a block of rows at a time (the memory peak of the
    first query); the block size changes nothing."""
    import knn.search as search
    from knn.model_dir import load_model_dir

    whole = load_model_dir(fixture_model_dir)
    monkeypatch.setattr(search, "_BLOCK_ROWS", 3)
    blocked = load_model_dir(fixture_model_dir)
    assert len(blocked.corpus.sentences) > 10
    np.testing.assert_array_equal(whole._pair_norms(), blocked._pair_norms())
    np.testing.assert_array_equal(whole._body.negated, blocked._body.negated)
    texts = whole.corpus.sentences["sentence"]
    np.testing.assert_array_equal(search.negated(texts), search.negated(texts.tolist()))
    vectors = whole.corpus.vectors.astype(np.float32)
    expected = np.linalg.norm(vectors[:-1] + vectors[1:], axis=1)
    np.testing.assert_allclose(blocked._pair_norms()[:-1], np.where(expected > 0, expected, 1.0), rtol=1e-6)


def _thread_names_of(monkeypatch, method: str) -> set:
    """The names of the threads that call ProductSearch.`method` from now on (the method still runs)."""
    import threading

    from knn import search as search_module

    names, original = set(), getattr(search_module.ProductSearch, method)

    def recording(self, *args, **kwargs):
        names.add(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(search_module.ProductSearch, method, recording)
    return names


def test_big_catalogues_walk_the_graphs_beside_bm25_with_the_same_answers(fixture_search, monkeypatch):
    """From OVERLAP_FROM_PASSAGES passages on, search_vectors walks the graphs on a second thread while
    BM25 runs: the answers are those of one thread, with and without a star-rating filter."""
    import threading

    from knn import search as search_module

    one_thread = fixture_search.with_ranking()
    monkeypatch.setattr(search_module, "OVERLAP_FROM_PASSAGES", 0)
    overlapped = fixture_search.with_ranking()
    assert overlapped._overlap and not one_thread._overlap
    walked_on = _thread_names_of(monkeypatch, "_nearest_products")
    for item in QUERIES:
        sentences = fixture_search.query_sentences(item["query"])
        vectors = fixture_search.encoder.encode(sentences)
        for rating in (None, 4):
            assert overlapped.search_vectors(vectors, 5, sentences, min_star_rating=rating) == \
                one_thread.search(item["query"], n_items=5, min_star_rating=rating)
    assert threading.current_thread().name in walked_on
    assert any(name.startswith("graph-walk") for name in walked_on)


def test_walks_beside_bm25_are_shared_and_an_error_on_either_thread_is_the_requests(fixture_search, monkeypatch):
    """The walker thread takes the sources from the first, the calling thread from the last once BM25
    is done: every source is walked once, the answers are one thread's, and an error in BM25 or in a
    walk reaches the caller after the other thread's walks have ended."""
    from knn import search as search_module

    monkeypatch.setattr(search_module, "OVERLAP_FROM_PASSAGES", 0)
    overlapped = fixture_search.with_ranking()
    sentences = fixture_search.query_sentences(QUERIES[0]["query"])
    vectors = fixture_search.encoder.encode(sentences)
    expected = fixture_search.search_vectors(vectors, 5, sentences)
    walked = []
    original = search_module.ProductSearch._nearest_products
    monkeypatch.setattr(search_module.ProductSearch, "_nearest_products",
                        lambda self, source, *args: walked.append(source) or original(self, source, *args))
    assert overlapped.search_vectors(vectors, 5, sentences) == expected
    assert sorted(map(id, walked)) == sorted(map(id, overlapped._sources))  # each source once
    monkeypatch.setattr(overlapped, "_word_scores", lambda *a: (_ for _ in ()).throw(RuntimeError("bm25 broke")))
    with pytest.raises(RuntimeError, match="bm25 broke"):
        overlapped.search_vectors(vectors, 5, sentences)
    monkeypatch.undo()
    monkeypatch.setattr(search_module, "OVERLAP_FROM_PASSAGES", 0)
    broken = fixture_search.with_ranking()
    monkeypatch.setattr(search_module.ProductSearch, "_nearest_products",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("walk broke")))
    with pytest.raises(RuntimeError, match="walk broke"):
        broken.search_vectors(vectors, 5, sentences)


def test_search_scores_the_words_while_the_query_is_embedded(fixture_search, monkeypatch):
    """search() computes BM25 (reviews, passages, titles) on the second thread while this one embeds
    the query: the answers are search_vectors' (everything on one thread), with and without a filter;
    an error there is the request's."""
    import threading

    from knn import search as search_module

    scored_on = _thread_names_of(monkeypatch, "_word_scores")
    search = fixture_search.with_ranking()
    for item in QUERIES:
        sentences = search.query_sentences(item["query"])
        vectors = search.encoder.encode(sentences)
        for rating in (None, 4):
            assert search.search(item["query"], n_items=5, min_star_rating=rating) == \
                search.search_vectors(vectors, 5, sentences, min_star_rating=rating)
    assert any(name.startswith("graph-walk") for name in scored_on)
    assert threading.current_thread().name in scored_on  # search_vectors scores them itself

    def failing(self, *args, **kwargs):
        raise RuntimeError("BM25 failed")

    monkeypatch.setattr(search_module.ProductSearch, "_word_scores", failing)
    with pytest.raises(RuntimeError, match="BM25 failed"):
        search.search("a toy for the bath", n_items=3)


def test_a_loaded_bm25_index_keeps_its_int32_arrays_and_scores_alike(tmp_path):
    """The index pointer is saved as int64: loading keeps the int32 postings as read (scipy would copy
    them to int64 otherwise: 93 MB more at 1M passages) and scores to the bit as the built index."""
    import numpy as np

    from knn.lexical import LexicalIndex

    built = LexicalIndex.build(["the bath toy floats", "a puzzle of a lighthouse", "floats and dives in the tub"])
    built.save(tmp_path, "passages")
    loaded = LexicalIndex.load(tmp_path, "passages", 3)
    assert loaded.weights.indices.dtype == np.int32 and loaded.weights.indptr.dtype == np.int32
    for query in ("floating bath toys", "lighthouse puzzle", "nothing matches"):
        hit, scores = loaded.hits(query)
        expected_hit, expected_scores = built.hits(query)
        np.testing.assert_array_equal(hit, expected_hit)
        np.testing.assert_array_equal(scores, expected_scores)


@pytest.mark.parametrize("query, product", [("a jigsaw", "P002"), ("grandmaster set", "P004"), ("a delta", "P005"),
                                            ("galaxy stickers", "P009"), ("blaster", "P017"), ("explorer pair", "P018")])
def test_a_word_only_the_title_holds_brings_its_product_first(fixture_search, query, product):
    """Each query names its product with a word of the product's title that none of the fixture reviews
    uses: the title terms put that product first; without them it is not first."""
    untitled = fixture_search.with_ranking(fixture_search.ranking.replace(title_weight=0, title_lexical_weight=0))
    assert fixture_search.search(query, n_items=1)[0]["product_id"] == product
    assert untitled.search(query, n_items=1)[0]["product_id"] != product
