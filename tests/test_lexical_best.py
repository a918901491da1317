"""knn.lexical: `scores_of` (BM25 of given documents, read by document) and `best` (the top documents,
read from the heaviest postings until nothing unread can reach them)."""
import numpy as np
import pytest

import knn.lexical as lexical
from knn.lexical import LexicalIndex

WORDS = "owl plush soft train set blanket kite wooden puzzle dinosaur roar loud bath boat sloth".split()
FILLER = [f"w{i}" for i in range(300)]


def corpus(n: int, seed: int = 3) -> list[str]:
    """Documents of 2-40 words drawn Zipf-like from WORDS and 300 filler words: a few words are in most
    documents, most in few, and lengths vary (so do BM25 weights, as in reviews)."""
    rng = np.random.default_rng(seed)
    vocabulary = WORDS + FILLER
    weights = 1.0 / np.arange(1, len(vocabulary) + 1)
    weights /= weights.sum()
    return [" ".join(rng.choice(vocabulary, size=rng.integers(2, 41), p=weights)) for _ in range(n)]


QUERIES = ["owl", "soft owl", "plush train set", "blanket owl soft plush", "sloth bath boat", "nothing here",
           "owl owl kite", "wooden puzzle dinosaur roar loud", " ".join(WORDS)]


def exact_top(index: LexicalIndex, query: str, count: int, usable=None):
    """The best `count` documents by hits() (every posting read), ties by the lower document."""
    rows, values = index.hits(query)
    if usable is not None:
        keep = usable(rows)
        rows, values = rows[keep], values[keep]
    order = np.lexsort((rows, -values))[:count]
    return rows[order], values[order]


def count_merged_postings(monkeypatch) -> list[int]:
    """A list that gets the number of postings of each merge `best` makes from now on."""
    merged = []
    original = LexicalIndex._merge

    def counting(self, parts, *args, **kwargs):
        merged.append(sum(len(documents) for documents, _ in parts))
        return original(self, parts, *args, **kwargs)

    monkeypatch.setattr(LexicalIndex, "_merge", counting)
    return merged


RARE_AND_COMMON = [f"common filler{i % 7}" for i in range(2000)] + ["rare common thing", "rare gadget", "rare common"]


@pytest.fixture(scope="module")
def index():
    return LexicalIndex.build(corpus(3000))


def test_scores_of_are_the_hits_of_those_documents_to_the_bit(index):
    rng = np.random.default_rng(5)
    for query in QUERIES:
        columns = index.columns(query)
        documents = rng.integers(0, index.n_documents, 400)  # any order, repeats too
        expected = index.scores(query)[documents]
        np.testing.assert_array_equal(index.scores_of(documents, columns), expected)
    assert index.scores_of(np.zeros(0, np.int64), index.columns("owl")).shape == (0,)
    assert not index.scores_of(np.arange(5), index.columns("nothing here")).any()


@pytest.mark.parametrize("depths", [(4, 16, 64), (1, 2, 3), (50, 500, 5000)])
@pytest.mark.parametrize("count", [1, 10, 64])
def test_best_is_the_exact_top_whenever_it_says_so(index, monkeypatch, depths, count):
    monkeypatch.setattr(lexical, "_DEPTHS", depths)
    monkeypatch.setattr(lexical, "_READ_ALL_UP_TO", 0)
    exact_answers = 0
    for query in QUERIES:
        documents, scores, exact = index.best(index.columns(query), count)
        if exact:
            exact_answers += 1
            expected_documents, expected_scores = exact_top(index, query, count)
            np.testing.assert_array_equal(documents, expected_documents)
            np.testing.assert_array_equal(scores, expected_scores)
        else:  # the cap was reached: ranked by the sums of the postings read, as hits() gives them
            monkeypatch.setattr(lexical, "POSTINGS_PER_TERM", depths[-1])
            np.testing.assert_array_equal(documents, exact_top(index, query, count)[0])
            monkeypatch.setattr(lexical, "POSTINGS_PER_TERM", 1 << 16)
    if depths[-1] >= index.n_documents:  # every posting fits in the last depth: always exact
        assert exact_answers == len(QUERIES)
    if depths == (1, 2, 3) and count > 1:  # too shallow to settle most queries
        assert exact_answers < len(QUERIES)


def test_best_stops_as_soon_as_nothing_unread_can_reach_the_top(monkeypatch):
    """A rare word and a common one: the rare word's documents lead, and the common word's unread
    postings (all light) cannot reach them, so the first depth settles it."""
    index = LexicalIndex.build(RARE_AND_COMMON)
    monkeypatch.setattr(lexical, "_DEPTHS", (8, 64, 1 << 16))
    monkeypatch.setattr(lexical, "_READ_ALL_UP_TO", 0)
    merged = count_merged_postings(monkeypatch)
    found, scores, exact = index.best(index.columns("rare common"), 3)
    assert exact and merged == [3 + 8]  # the rare word's 3 postings, the common word's first 8
    np.testing.assert_array_equal(found, exact_top(index, "rare common", 3)[0])
    assert set(found) == {2000, 2001, 2002}
    merged.clear()  # the best 50 need more than the rare word's documents: read deeper, still exact
    found, scores, exact = index.best(index.columns("rare common"), 50)
    assert exact and len(merged) > 1
    np.testing.assert_array_equal(found, exact_top(index, "rare common", 50)[0])


def test_a_query_with_few_postings_in_all_reads_them_at_once(monkeypatch):
    index = LexicalIndex.build(RARE_AND_COMMON)
    monkeypatch.setattr(lexical, "_DEPTHS", (8, 64))
    merged = count_merged_postings(monkeypatch)
    found, scores, exact = index.best(index.columns("rare common"), 50)
    assert exact and merged == [3 + 2002]  # every posting, one merge
    np.testing.assert_array_equal(found, exact_top(index, "rare common", 50)[0])
    monkeypatch.setattr(lexical, "_READ_ALL_UP_TO", 2004)  # one posting too many: read to the depths
    merged.clear()
    index.best(index.columns("rare common"), 50)
    assert merged[0] == 3 + 8


def test_best_keeps_only_usable_documents(index, monkeypatch):
    monkeypatch.setattr(lexical, "_DEPTHS", (4, 16, 64))
    monkeypatch.setattr(lexical, "_READ_ALL_UP_TO", 0)
    even = lambda documents: documents % 2 == 0  # noqa: E731
    for query in QUERIES:
        documents, scores, exact = index.best(index.columns(query), 10, even)
        assert np.all(documents % 2 == 0)
        if exact:
            np.testing.assert_array_equal(documents, exact_top(index, query, 10, even)[0])


def test_index_saved_without_its_by_document_copy_makes_it_when_needed(tmp_path, index):
    from knn.mapped_npz import load_npz, save_npz

    index.save(tmp_path, "passages")
    arrays = load_npz(tmp_path / "passages.npz")
    assert {"document_data", "document_terms", "document_indptr"} <= set(arrays)
    loaded = LexicalIndex.load(tmp_path, "passages", index.n_documents)
    assert loaded._by_document is not None  # mapped from the file
    older = {name: np.asarray(arrays[name]) for name in ("data", "indices", "indptr", "shape")}
    save_npz(tmp_path / "older.npz", older)  # as model dirs written before the copy
    (tmp_path / "older_vocabulary.json").write_text((tmp_path / "passages_vocabulary.json").read_text())
    old = LexicalIndex.load(tmp_path, "older", index.n_documents)
    assert old._by_document is None
    documents = np.arange(0, index.n_documents, 7)
    for query in QUERIES:
        columns = loaded.columns(query)
        np.testing.assert_array_equal(old.scores_of(documents, columns), loaded.scores_of(documents, columns))
        np.testing.assert_array_equal(old.best(columns, 10)[0], loaded.best(columns, 10)[0])


def test_upgrade_rewrites_an_older_index_as_a_fit_now_saves_it(tmp_path, index, monkeypatch):
    import json

    from knn.lexical import upgrade
    from knn.mapped_npz import load_npz, save_npz

    matrix = index.weights.copy()
    matrix.sort_indices()  # postings by document, no by-document copy: as model dirs before both
    save_npz(tmp_path / "reviews.npz", {"data": matrix.data, "indices": matrix.indices.astype(np.int32),
                                        "indptr": matrix.indptr.astype(np.int64),
                                        "shape": np.asarray(matrix.shape, dtype=np.int64)})
    (tmp_path / "reviews_vocabulary.json").write_text(json.dumps({"format": 1, "vocabulary": index.vocabulary}))
    older = LexicalIndex.load(tmp_path, "reviews", index.n_documents)  # mapped, and kept while rewritten
    monkeypatch.setattr(lexical, "TIER_COPY_FROM_DOCUMENTS", 1000)  # as a big catalogue's index
    written = upgrade(tmp_path, "reviews")
    assert sorted(p.name for p in written) == ["reviews.npz", "reviews_vocabulary.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reviews.npz", "reviews_vocabulary.json"]
    upgraded = LexicalIndex.load(tmp_path, "reviews", index.n_documents)
    assert upgraded.by_weight and upgraded._by_document is not None and upgraded.tier_copy is not None
    assert {"document_indptr", "tier_indptr"} <= set(load_npz(tmp_path / "reviews.npz"))
    for query in QUERIES:
        for a, b in zip(upgraded.hits(query), index.hits(query)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(older.hits(query)[0], index.hits(query)[0])  # the old mapping still reads
    assert upgrade(tmp_path, "reviews") == []  # nothing left to do
    arrays = load_npz(tmp_path / "reviews.npz")  # as a fit wrote before the tier copy: upgraded again
    save_npz(tmp_path / "before.npz", {name: np.array(arrays[name]) for name in arrays if not name.startswith("tier_")})
    (tmp_path / "before.npz").replace(tmp_path / "reviews.npz")  # a new file: the mapped one stays whole
    assert LexicalIndex.load(tmp_path, "reviews", index.n_documents).tier_copy is None
    assert [p.name for p in upgrade(tmp_path, "reviews")][0] == "reviews.npz"
    assert LexicalIndex.load(tmp_path, "reviews", index.n_documents).tier_copy is not None


def test_only_a_big_index_gets_a_tier_copy(tmp_path, monkeypatch):
    from knn.lexical import upgrade

    assert LexicalIndex.build(RARE_AND_COMMON).tier_copy is None  # 2,003 documents: adding into an array is cheaper
    monkeypatch.setattr(lexical, "TIER_COPY_FROM_DOCUMENTS", 2003)
    built = LexicalIndex.build(RARE_AND_COMMON)
    assert built.tier_copy is not None
    monkeypatch.setattr(lexical, "TIER_COPY_FROM_DOCUMENTS", 2004)
    built.save(tmp_path, "passages")
    assert upgrade(tmp_path, "passages") == []  # a copy is never removed, and a small index needs none
    LexicalIndex(built.vocabulary, built.weights, by_weight=True, by_document=built.by_document).save(tmp_path, "small")
    assert upgrade(tmp_path, "small") == []


def test_a_saved_index_keeps_its_tier_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(lexical, "TIER_COPY_FROM_DOCUMENTS", 0)
    built = LexicalIndex.build(RARE_AND_COMMON)
    built.save(tmp_path, "passages")
    loaded = LexicalIndex.load(tmp_path, "passages", built.n_documents)
    assert loaded.tier_copy[0] == built.tier_copy[0] == tuple(lexical._DEPTHS[:2])
    for a, b in zip(loaded.tier_copy[1:], built.tier_copy[1:]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bounds", [(4, 16), (50, 500)])
@pytest.mark.parametrize("count", [1, 10, 64])
def test_the_second_depth_read_from_the_tier_copy_gives_the_same_answers(index, monkeypatch, bounds, count):
    """Each term's postings past the first depth, stored again sorted by document: the second depth
    reads them from there (one stable sort of sorted runs), with the same documents, sums to the bit
    and exactness as from the postings heaviest first."""
    copy = lexical.tier_copy(index.weights, bounds)
    tiered = LexicalIndex(index.vocabulary, index.weights, by_weight=True, by_document=index.by_document,
                          tier_copy=copy)
    _, documents, weights, indptr = copy
    postings = index.weights
    for column in range(postings.shape[1]):  # the heaviest-first positions bounds[0]..bounds[1]-1, by document
        start, end = postings.indptr[column], postings.indptr[column + 1]
        low, high = start + bounds[0], min(end, start + bounds[1])
        expected = sorted(zip(postings.indices[low:high].tolist(), postings.data[low:high].tolist()))
        copied = slice(indptr[column], indptr[column + 1])
        assert list(zip(documents[copied].tolist(), weights[copied].tolist())) == expected
    monkeypatch.setattr(lexical, "_DEPTHS", bounds)
    monkeypatch.setattr(lexical, "_READ_ALL_UP_TO", 0)
    merges = []
    original = LexicalIndex._merge

    def recording(self, parts, per_part=None, sorted_runs=False, many_columns=True):
        merges.append(sorted_runs)
        return original(self, parts, per_part, sorted_runs, many_columns)

    monkeypatch.setattr(LexicalIndex, "_merge", recording)
    for query in QUERIES:
        columns = index.columns(query)
        got, expected = tiered.best(columns, count), index.best(columns, count)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        assert got[2] == expected[2]
    assert any(merges)  # some queries read the second depth from the copy
