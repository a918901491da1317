"""ProductSearch: a shopper's phrase -> the products whose reviews say the same thing.

How results are ranked (each choice measured: bench/eval/README.md has the figures, the
alternatives and the commands):

1. The query is split into sentences like the reviews are; each query sentence is embedded.
2. Passages: every review-body sentence and every review headline except Amazon's automatic
   "Five Stars"-style ones (one nearest-neighbour index each), and, in scoring, every pair of
   adjacent body sentences of one review (the normalised sum of their two vectors).
   Candidates: the products behind the CANDIDATES_PER_SENTENCE nearest passages of each query
   sentence, plus the products of the best reviews and passages by BM25.
3. Similarity of a passage to a query sentence: cosine of unit vectors; passages of 3 words or
   fewer ("Great!", "Love it", "Gift") count x0.8; a passage that disagrees with the query sentence
   on negation (one holds "not", "never", "doesn't", "no", ...; the other none) loses 0.05.
   A graph model ranks with its int8 codes (knn.quantized_vectors: within ~0.003 of the float16
   cosine); its graph's candidates are found with exact float16 scores.
4. Dense score of a product: for each query sentence its best passage, then the mean over the query
   sentences (every query sentence counts equally).
5. Lexical score (knn.lexical): Porter-stemmed BM25 of the whole query against each review
   (headline + body) and each passage, divided by the BM25 of a full match (the sum of the query
   terms' idf), capped at 1: the rarity-weighted share of the query's words that a review, or one of
   its sentences, contains. A product takes its best review or passage.
6. Title (a product's title names what it is, which review sentences often leave out: "it broke in a
   day"): + 0.2 x the cosine of the title's vector to the query (the mean over query sentences) +
   0.2 x the title's BM25 over a full match's (capped at 1), for every candidate.
7. Score = dense + 0.5 x lexical + the title terms (`product_search_score`); ties by product id.
   `matched_sentence` is the product's best single passage (a body sentence or the headline) and
   `matched_field` says which ("body" or "headline").
Filters: `min_star_rating` keeps only reviews rated at least that (for matching and display);
`offset` skips that many products of the same ranking (pagination).
Threads: `search` computes the word scores (every BM25) on a second thread while the query is embedded
(ONNX Runtime runs without the GIL). For big catalogues a query's walks (the sentences' index, the
headlines') are shared between that thread and the calling one: the second thread starts on the
sentences while the caller computes BM25 (`search_vectors`) or has it already (`search`), then the
caller walks the headlines unless the other got there first. The answers are the same either way (tested).

`title_weight` and `title_lexical_weight` at 0 give the ranking before titles (model dirs written
before them have none: knn.model_dir.add_serving_files adds them).
Ranking fields that stay off by default (measured, no gain; see bench/eval/README.md):
`review_weight` (similarity of the whole review), `second_weight` (a second review of the product
saying it too), `lexical_norm="max"`; `BASELINE_RANKING` is the seed's plain dense ranking.
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from knn.errors import QueryError
from knn.index import VectorIndex, similarities
from knn.lexical import LexicalIndex
from knn.quantized_vectors import FileRows, QuantizedVectors
from knn.ranges import expand
from knn.sentences import split_sentences
from knn.stored_texts import StoredTexts

CANDIDATES_PER_SENTENCE = 64
# Rows per block where all passage vectors are read once (pair and review norms): a block's float32
# temporaries are ~3 x 16k x 384 x 4 bytes = 75 MB (100k-row blocks made a 0.45 GiB peak at the first query).
_BLOCK_ROWS = 16_384
# From this many passages on, a query's walks run on a second thread beside BM25 and each other
# (ProductSearch._walks_beside; the walks and their re-scoring release the GIL); below it the hand-over
# costs more than the overlap gains.
OVERLAP_FROM_PASSAGES = 100_000
RESULT_FIELDS = (
    "review_id", "product_id", "product_title", "star_rating", "review_headline", "review_body",
    "product_search_score", "matched_sentence", "matched_field",
)


@dataclass(frozen=True)
class Ranking:
    """The tunable parts of the ranking; the defaults are what measured best (see the module docstring)."""

    lexical_weight: float = 0.5  # lexical score (0..1) x this is added to the dense score
    lexical_norm: str = "coverage"  # BM25 divided by a full match's ("coverage") or by the best review's ("max")
    short_words: int = 3  # passages with at most this many words ...
    short_weight: float = 0.8  # ... have their similarity multiplied by this
    headlines: bool = True  # review headlines are passages too
    negation_penalty: float = 0.05  # subtracted from a passage's similarity when it and the query sentence disagree on negation
    review_weight: float = 0.0  # x similarity of the whole review (mean of its passage vectors), added per review
    second_weight: float = 0.0  # x the product's second-best review (another review saying it too), added
    window_weight: float = 1.0  # two adjacent body sentences as one more passage (sum of their vectors), x this
    title_weight: float = 0.2  # x the similarity of the product's title to the query (mean over its sentences), added
    title_lexical_weight: float = 0.2  # x BM25 of the title (divided by a full match's, capped at 1), added

    def __post_init__(self):
        if self.lexical_norm not in ("coverage", "max"):
            raise ValueError(f"lexical_norm must be 'coverage' or 'max', got {self.lexical_norm!r}")
        if self.lexical_weight < 0 or not 0 <= self.short_weight <= 1 or self.short_words < 0:
            raise ValueError(f"lexical_weight >= 0, 0 <= short_weight <= 1 and short_words >= 0 are required: {self}")
        if self.title_weight < 0 or self.title_lexical_weight < 0:
            raise ValueError(f"title_weight >= 0 and title_lexical_weight >= 0 are required: {self}")

    def replace(self, **changes) -> "Ranking":
        """A copy with some fields changed; values given as strings are converted (command lines)."""
        converted = {}
        for name, value in changes.items():
            field = next((f for f in dataclasses.fields(self) if f.name == name), None)
            if field is None:
                raise ValueError(f"unknown ranking setting {name!r}; known: {', '.join(f.name for f in dataclasses.fields(self))}")
            kind = type(getattr(self, name))
            if isinstance(value, str):
                value = value.strip().lower() in ("1", "true", "yes", "on") if kind is bool else kind(value)
            converted[name] = value
        return dataclasses.replace(self, **converted)


# The seed's ranking (best body sentence, mean over query sentences), kept for comparisons.
BASELINE_RANKING = Ranking(lexical_weight=0.0, short_weight=1.0, headlines=False, negation_penalty=0.0,
                           window_weight=0.0, title_weight=0.0, title_lexical_weight=0.0)


class _WordScores(NamedTuple):
    """What a query's words give the ranking (knn.search.ProductSearch._word_scores); None where the
    model or the ranking has no such index."""

    lexical: Callable[[np.ndarray], np.ndarray] | None  # products -> their BM25 score of reviews and passages (0..1)
    candidates: np.ndarray | None  # the products of the best reviews and passages by BM25
    titles: Callable[[np.ndarray], np.ndarray] | None  # products -> their title's BM25 (0..1)


@dataclass(frozen=True)
class Corpus:
    """The searchable data: reviews, their sentences, and the sentence vectors (row-aligned)."""

    catalog: pd.DataFrame  # one row per review, knn.reviews.CATALOG_COLUMNS (less the stored texts, below)
    sentences: pd.DataFrame  # columns: sentence (str, unless stored), review_row (int, row of catalog)
    vectors: np.ndarray  # float16 (or float32: older model dirs) (len(sentences), dimensions), unit rows; a
    # loaded graph model's are QuantizedVectors (int8 codes ranked, float16 rows read for exact scores)
    headlines: pd.DataFrame | None = None  # columns: headline (str), review_row (int); kept headlines only
    headline_vectors: np.ndarray | None = None  # float16 or float32 (len(headlines), dimensions), unit rows
    lexical: LexicalIndex | None = None  # BM25 over reviews, one document per catalog row
    passage_lexical: LexicalIndex | None = None  # BM25 over passages: sentences rows, then headlines rows
    # Text columns kept out of the tables above, read a row at a time ("catalog.review_body", ...:
    # knn.stored_texts; a loaded graph model's); absent ones are in their table.
    texts: dict[str, StoredTexts] | None = None
    # One row per product, sorted by product_id (the order of ProductSearch's product codes): its title
    # (product_id, product_title), the title's unit vector (an array, or knn.quantized_vectors.FileRows:
    # rows read when asked for), and BM25 over the titles. None in model dirs written before titles.
    titles: pd.DataFrame | None = None
    title_vectors: object | None = None
    title_lexical: LexicalIndex | None = None

    def text_column(self, table: str, column: str):
        """A text column: stored (StoredTexts) or its table's (a pandas Series)."""
        stored = (self.texts or {}).get(f"{table}.{column}")
        return stored if stored is not None else getattr(self, table)[column]


# Negation cues ("never leaks" must not match "it leaks" as well as "it doesn't leak"); the
# apostrophe-less spellings are common in reviews. Words are found with str.translate and split
# (a regular expression took ~15x longer: seconds at load for a few 10k passages).
NEGATION_WORDS = frozenset(
    "not no never none nothing nobody nowhere neither nor without cannot cant wont dont doesnt didnt isnt wasnt "
    "arent werent hasnt havent hadnt wouldnt couldnt shouldnt".split()
    + [f"{verb}n't" for verb in "do does did is was are were has have had would could should ca wo ai must need".split()])
_WORD_CHARACTERS = str.maketrans({**{chr(c): " " for c in range(128) if not (chr(c).isalpha() or chr(c) == "'")},
                                  "\u2019": "'"})


def negated(texts) -> np.ndarray:
    """Whether each text holds a negation word (bool array)."""
    if not hasattr(texts, "iloc"):
        texts = list(texts)
    return np.fromiter((not NEGATION_WORDS.isdisjoint(str(text).lower().translate(_WORD_CHARACTERS).split())
                        for text in _one_by_one(texts)), dtype=bool, count=len(texts))


def _one_by_one(texts):
    """The texts of a list, or of a Series a block at a time (not a million Python strings at once)."""
    if not hasattr(texts, "iloc"):
        yield from texts
        return
    for begin in range(0, len(texts), _BLOCK_ROWS):
        yield from texts.iloc[begin:begin + _BLOCK_ROWS].tolist()


class _Passages:
    """One kind of passage (body sentences or headlines): vectors, owners, weights, nearest-neighbour index."""

    def __init__(self, texts: pd.Series | StoredTexts, vectors: np.ndarray, review_rows: np.ndarray,
                 product_of_review: np.ndarray, n_products: int, index: VectorIndex | None, ranking: Ranking):
        self.texts = texts if isinstance(texts, StoredTexts) else texts.reset_index(drop=True)
        self.vectors = vectors
        self.review = np.asarray(review_rows, dtype=np.int64)
        self.product = product_of_review[self.review]
        self.index = index
        self.by_product = np.argsort(self.product, kind="stable")
        counts = np.bincount(self.product, minlength=n_products)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        words, self.negated = _words_and_negation(self.texts, bool(ranking.negation_penalty))
        self.weight = np.where(words <= ranking.short_words, ranking.short_weight, 1.0).astype(np.float32)

    def __len__(self) -> int:
        return len(self.review)

    def text(self, row: int) -> str:
        return self.texts[row] if isinstance(self.texts, StoredTexts) else str(self.texts.iat[row])

    def rows_of(self, products: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The passage rows of `products` and, for each, the position of its product in `products`."""
        return _rows_of_groups(self.by_product, self.offsets, products)


def _rows_of_groups(by_group: np.ndarray, offsets: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of `groups` (rows `by_group`, group g's at offsets[g]:offsets[g + 1]) and, for each row,
    the position of its group in `groups`."""
    positions, owner = expand(offsets[groups], offsets[groups + 1])
    return by_group[positions], owner


class ProductSearch:
    """Answers queries over a Corpus with an encoder and vector indexes (body sentences, headlines)."""

    def __init__(self, encoder, index: VectorIndex, corpus: Corpus,
                 candidates_per_sentence: int = CANDIDATES_PER_SENTENCE, ranking: Ranking = Ranking(),
                 headline_index: VectorIndex | None = None):
        self.encoder = encoder
        self.index = index
        self.headline_index = headline_index
        self.corpus = corpus
        self.candidates_per_sentence = candidates_per_sentence
        self.ranking = ranking
        catalog = corpus.catalog
        codes, product_ids = pd.factorize(catalog["product_id"], sort=True)
        self._n_products = len(product_ids)  # product codes follow the ids' order (sort=True): ties break by code
        self._product_of_review = codes.astype(np.int64)
        self._ratings = catalog["star_rating"].to_numpy(np.int64)
        n_products = self._n_products
        self._body = _Passages(corpus.text_column("sentences", "sentence"), corpus.vectors, corpus.sentences["review_row"].to_numpy(),
                               self._product_of_review, n_products, index, ranking)
        self._sources = [self._body]
        if ranking.headlines and corpus.headlines is not None and corpus.headline_vectors is not None and headline_index is not None:
            self._sources.append(_Passages(corpus.text_column("headlines", "headline"), corpus.headline_vectors,
                                           corpus.headlines["review_row"].to_numpy(), self._product_of_review,
                                           n_products, headline_index, ranking))
        self._eligible_all = np.unique(np.concatenate([source.product for source in self._sources]))
        self._overlap = sum(len(source) for source in self._sources) >= OVERLAP_FROM_PASSAGES
        self._walker_pool = None
        self._columns = {name: catalog.columns.get_loc(name) for name in RESULT_FIELDS if name in catalog.columns}
        self.lexical = corpus.lexical if ranking.lexical_weight > 0 else None
        if self.lexical is not None and self.lexical.n_documents != len(catalog):
            raise ValueError(f"the lexical index has {self.lexical.n_documents} documents for {len(catalog)} reviews")
        self.passage_lexical = corpus.passage_lexical if ranking.lexical_weight > 0 else None
        self._review_rows = np.arange(len(catalog), dtype=np.int64)  # review-level BM25 documents -> reviews
        # Each product's reviews (the review-level BM25 documents a candidate is scored on).
        self._reviews_by_product = np.argsort(self._product_of_review, kind="stable")
        self._review_offsets = np.concatenate([[0], np.cumsum(np.bincount(self._product_of_review,
                                                                          minlength=n_products))])
        self._title_vectors, self._title_lexical = self._titles(corpus, product_ids, ranking)
        if self.passage_lexical is not None:
            n_headlines = len(corpus.headlines) if corpus.headlines is not None else 0
            if self.passage_lexical.n_documents != len(corpus.sentences) + n_headlines:
                raise ValueError(f"the passage lexical index has {self.passage_lexical.n_documents} documents for "
                                 f"{len(corpus.sentences) + n_headlines} passages")
            # Passage rows -> review rows (headline rows only count when headlines are searched).
            rows = [corpus.sentences["review_row"].to_numpy(np.int64)]
            if n_headlines:
                head_rows = corpus.headlines["review_row"].to_numpy(np.int64)
                rows.append(head_rows if len(self._sources) > 1 else np.full(n_headlines, -1, np.int64))
            self._review_of_passage = np.concatenate(rows).astype(np.int32)
            # ... and straight to products (-1: none), so that BM25's hits need one gather, not two.
            self._product_of_passage = np.where(self._review_of_passage >= 0,
                                                self._product_of_review[self._review_of_passage], -1).astype(np.int32)
        # BM25 per review, then per passage: (index, its documents' reviews, their products, the documents
        # of given products, whether every document has a product, i.e. none is dropped without a filter)
        self._lexical_levels = []
        if self.lexical is not None:
            self._lexical_levels.append((self.lexical, self._review_rows, self._product_of_review, self._reviews_of,
                                         bool((self._product_of_review >= 0).all())))
        if self.passage_lexical is not None:
            self._lexical_levels.append((self.passage_lexical, self._review_of_passage, self._product_of_passage,
                                         self._passages_of, bool((self._product_of_passage >= 0).all())))

    @staticmethod
    def _titles(corpus: Corpus, product_ids, ranking: Ranking):
        """The title vectors and title BM25 the ranking uses (None where it gives them no weight or the
        model has none): one row per product, in product-code order."""
        if corpus.titles is not None and not pd.Index(corpus.titles["product_id"].astype(str)).equals(
                pd.Index(product_ids).astype(str)):
            raise ValueError(f"the {len(corpus.titles)} titles are not one per product ({len(product_ids)}) in "
                             "product_id order")
        vectors = corpus.title_vectors if ranking.title_weight > 0 else None
        if vectors is not None and len(vectors) != len(product_ids):
            raise ValueError(f"{len(vectors)} title vectors for {len(product_ids)} products")
        lexical = corpus.title_lexical if ranking.title_lexical_weight > 0 else None
        if lexical is not None and lexical.n_documents != len(product_ids):
            raise ValueError(f"the title lexical index has {lexical.n_documents} documents for {len(product_ids)} products")
        return vectors, lexical

    def _walker(self):
        """The second thread: BM25 while a query is embedded, walks beside BM25 and the other walk (made at
        the first query that needs it)."""
        if self._walker_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._walker_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graph-walk")
        return self._walker_pool

    def with_ranking(self, ranking: Ranking | None = None, index: VectorIndex | None = None,
                     headline_index: VectorIndex | None = None) -> "ProductSearch":
        """The same data searched with another ranking and/or other indexes (for comparisons)."""
        return ProductSearch(self.encoder, index or self.index, self.corpus, self.candidates_per_sentence,
                             ranking or self.ranking, headline_index or self.headline_index)

    @property
    def n_products(self) -> int:
        return self._n_products

    def query_sentences(self, query: str | Sequence[str]) -> list[str]:
        """The sentences of a query (a string or a list of strings), empty ones removed."""
        texts = [query] if isinstance(query, str) else list(query)
        sentences = [s for text in texts for s in split_sentences(text)]
        if not sentences:
            raise QueryError("the query has no words to search for; send a phrase such as 'my kids loved it'")
        return sentences

    def search(self, query: str | Sequence[str], n_items: int = 3, min_star_rating: int | None = None,
               offset: int = 0) -> list[dict]:
        """The `n_items` best products for `query`, best first, each a dict of RESULT_FIELDS.

        `min_star_rating` (1-5): only reviews rated at least this count, for matching and for display.
        `offset`: skip the first `offset` products (pagination: offset=10 with n_items=10 is page 2).
        """
        n_items = _whole_number("n_items", n_items, minimum=1)
        offset = _whole_number("offset", offset, minimum=0)
        if min_star_rating is not None:
            min_star_rating = _whole_number("min_star_rating", min_star_rating, minimum=1, maximum=5)
        sentences = self.query_sentences(query)
        if not any(len(source) for source in self._sources):
            return []
        # The word scores (BM25 of reviews, passages and titles) need only the text: they are computed on
        # the walker thread while this one embeds the query (ONNX Runtime runs without the GIL).
        words = None
        if self.lexical is not None or self._title_lexical is not None:
            words = self._walker().submit(self._word_scores, sentences, self._allowed(min_star_rating))
        try:
            query_vectors = self.encoder.encode(sentences, progress=False)
        finally:
            words = words.result() if words is not None else None  # its errors are the request's
        return self._rank(query_vectors, n_items, sentences, min_star_rating, offset, words)

    def search_vectors(self, query_vectors: np.ndarray, n_items: int, query_text: str | Sequence[str] = (),
                       min_star_rating: int | None = None, offset: int = 0) -> list[dict]:
        """Rank with already-embedded query sentences; `query_text` feeds the lexical signal."""
        return self._rank(query_vectors, n_items, query_text, min_star_rating, offset)

    def _allowed(self, min_star_rating: int | None) -> np.ndarray | None:
        return None if not min_star_rating or min_star_rating <= 1 else self._ratings >= min_star_rating

    def _rank(self, query_vectors: np.ndarray, n_items: int, query_text: str | Sequence[str],
              min_star_rating: int | None, offset: int, words: "_WordScores | None" = None) -> list[dict]:
        """search_vectors, with the word scores already computed when `words` is given."""
        query_vectors = np.atleast_2d(np.asarray(query_vectors, dtype=np.float32))
        wanted = offset + n_items
        allowed = self._allowed(min_star_rating)

        if not self._overlap:
            candidates = [self._nearest_products(source, query_vectors, wanted, allowed) for source in self._sources]
            words = words or self._word_scores(query_text, allowed)
        else:
            candidates, words = self._walks_beside(
                query_vectors, wanted, allowed, lambda: words or self._word_scores(query_text, allowed))
        lexical_of = words.lexical
        if words.candidates is not None:
            candidates.append(words.candidates)
        candidates = np.unique(np.concatenate(candidates)) if candidates else np.zeros(0, np.int64)
        eligible = self._eligible_products(allowed)
        if len(candidates) < min(wanted, len(eligible)):
            candidates = eligible  # the caller wants more products than the neighbours cover: score them all
        if len(candidates) == 0:
            return []
        query_negated = None
        if self.ranking.negation_penalty:
            texts = [query_text] if isinstance(query_text, str) else list(query_text)
            if len(texts) == len(query_vectors):
                query_negated = negated(texts)
        scores, best_kind, best_row = self._score(candidates, query_vectors, allowed, query_negated)
        if lexical_of is not None:
            scores = scores + self.ranking.lexical_weight * lexical_of(candidates)
        scores = scores + self._title_scores(candidates, query_vectors, words.titles)
        keep = np.flatnonzero(np.isfinite(scores))
        order = keep[np.lexsort((candidates[keep], -scores[keep]))][offset:offset + n_items]
        return [self._result(*self._shown(int(best_kind[i]), int(best_row[i])), float(scores[i])) for i in order]

    # --- candidates -------------------------------------------------------------------------------
    def _walks_beside(self, query_vectors: np.ndarray, wanted: int, allowed: np.ndarray | None,
                      meanwhile: Callable[[], "_WordScores"]) -> tuple[list[np.ndarray], "_WordScores"]:
        """Each source's nearest products (in source order), and what `meanwhile` returns, run on this
        thread while the walker thread walks. The walker takes the sources from the first, this thread
        from the last once `meanwhile` is done, so neither waits on a walk the other could take (at 1M:
        the sentences' inverted file ~7 ms, the headlines' graph ~1.2 ms, BM25 ~2-25 ms). Indexes are safe
        to walk from two threads (GraphIndex walks one query at a time)."""
        pending = list(range(len(self._sources)))
        found: list[np.ndarray | None] = [None] * len(pending)
        lock = threading.Lock()

        def walk(first: bool) -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    number = pending.pop(0 if first else -1)
                found[number] = self._nearest_products(self._sources[number], query_vectors, wanted, allowed)

        walking = self._walker().submit(walk, True)
        try:
            result = meanwhile()
            walk(False)
        finally:
            walking.result()  # waited for even when this thread failed: its errors are the request's too
        return found, result

    def _nearest_products(self, source: _Passages, query_vectors: np.ndarray, wanted: int,
                          allowed: np.ndarray | None) -> np.ndarray:
        n = len(source)
        if n == 0 or source.index is None:
            return np.zeros(0, np.int64)
        k = min(max(self.candidates_per_sentence, 2 * wanted), n)
        if allowed is None:
            ids, _ = source.index.query(query_vectors, k)
            return source.product[ids.ravel()]
        usable = allowed[source.review]
        share = usable.mean()
        if share == 0:
            return np.zeros(0, np.int64)
        # Over-fetch in proportion to what the filter removes; too few left -> caller scores all.
        ids, _ = source.index.query(query_vectors, min(n, int(np.ceil(2 * k / share))))
        ids = ids.ravel()
        return source.product[ids[usable[ids]]]

    def _lexical(self, query_text: str | Sequence[str], allowed: np.ndarray | None
                 ) -> tuple[Callable[[np.ndarray], np.ndarray] | None, np.ndarray]:
        """What BM25 of reviews and passages gives: each product's lexical score (0..1), as a function
        of the products to score, and the lexical candidates.

        BM25 at two granularities: per review (the query's words may be spread over a review) and per
        passage (a sentence holding all of them is not penalised for sitting in a long review). Each is
        divided by the BM25 of a full match ("coverage", capped at 1) or by the best document's ("max");
        a product takes the best over its reviews and passages. The candidates are the products of the
        `candidates_per_sentence` best documents of each (LexicalIndex.best); a product's score is read
        from its own documents (LexicalIndex.scores_of), so that it costs the same however common the
        query's words are."""
        levels, candidates = [], []
        for index, review_of_document, product_of_document, documents_of, all_have_products in self._lexical_levels:
            columns = index.columns(query_text)
            if not len(columns):
                continue

            def usable(documents, review_of=review_of_document, product_of=product_of_document):
                keep = product_of[documents] >= 0
                if allowed is not None:
                    keep &= allowed[np.maximum(review_of[documents], 0)]
                return keep

            every = allowed is None and all_have_products  # no document to drop
            documents, scores, _exact = index.best(columns, self.candidates_per_sentence, None if every else usable)
            documents = documents[scores > 0]
            if not len(documents):
                continue
            coverage = self.ranking.lexical_norm == "coverage"
            levels.append((index, columns, index.full_match(query_text) if coverage else float(scores[0]),
                           coverage, documents_of))
            candidates.append(product_of_document[documents].astype(np.int64))

        def by_product(products: np.ndarray) -> np.ndarray:
            best = np.zeros(len(products), np.float32)
            for index, columns, divisor, coverage, documents_of in levels:
                documents, owner = documents_of(products, allowed)
                if len(documents):
                    normalised = index.scores_of(documents, columns) / divisor
                    np.maximum.at(best, owner, np.minimum(normalised, 1.0) if coverage else normalised)
            return best

        return (by_product if levels else None), (np.concatenate(candidates) if candidates else np.zeros(0, np.int64))

    def _reviews_of(self, products: np.ndarray, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The reviews (review-level BM25 documents) of `products`, and the position of each one's
        product in `products`; only `allowed` reviews."""
        rows, owner = _rows_of_groups(self._reviews_by_product, self._review_offsets, products)
        if allowed is not None:
            keep = allowed[rows]
            rows, owner = rows[keep], owner[keep]
        return rows, owner

    def _passages_of(self, products: np.ndarray, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The passage-level BM25 documents of `products` (body sentences, then headlines when they are
        searched: passage_documents' rows), and the position of each one's product in `products`."""
        found = []
        for offset, source in zip((0, len(self._body)), self._sources):
            rows, owner = source.rows_of(products)
            if allowed is not None:
                keep = allowed[source.review[rows]]
                rows, owner = rows[keep], owner[keep]
            found.append((rows + offset, owner))
        return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])

    def _word_scores(self, query_text: str | Sequence[str], allowed: np.ndarray | None) -> "_WordScores":
        """Everything the ranking takes from the query's words: BM25 of reviews and passages (each
        product's score and the lexical candidates) and of titles (each product's title score)."""
        lexical = candidates = titles = None
        if self.lexical is not None:
            lexical, candidates = self._lexical(query_text, allowed)
        title_lexical = self._title_lexical
        if title_lexical is not None and query_text is not None and len(query_text):
            columns = title_lexical.columns(query_text)
            if len(columns):
                full = title_lexical.full_match(query_text)

                def titles(products: np.ndarray) -> np.ndarray:  # a title is the document of its product
                    return np.minimum(title_lexical.scores_of(products, columns) / full, 1.0)
        return _WordScores(lexical, candidates, titles)

    def _title_scores(self, products: np.ndarray, query_vectors: np.ndarray,
                      title_words: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray | float:
        """What each product's title adds: title_weight x its similarity to the query (the mean over the
        query's sentences), plus title_lexical_weight x its title's BM25 over a full match's (at most 1).
        Titles name what a product is, which review sentences often leave out ("it broke in a day")."""
        added = 0.0
        if self._title_vectors is not None and len(products):
            rows = self._title_vectors
            rows = rows.take(products) if isinstance(rows, FileRows) else np.asarray(rows[products])
            added = added + self.ranking.title_weight * (rows.astype(np.float32) @ query_vectors.T).mean(axis=1)
        if title_words is not None and len(products):
            added = added + self.ranking.title_lexical_weight * title_words(products)
        return added

    def _eligible_products(self, allowed: np.ndarray | None) -> np.ndarray:
        if allowed is None:
            return self._eligible_all
        products = [source.product[allowed[source.review]] for source in self._sources]
        return np.unique(np.concatenate(products))

    # --- scoring ----------------------------------------------------------------------------------
    def _score(self, products: np.ndarray, query_vectors: np.ndarray, allowed: np.ndarray | None,
               query_negated: np.ndarray | None = None):
        """Dense score of each product and its best passage (kind, row).

        Per query sentence: a review's score is its best passage similarity (+ review_weight x the
        similarity of the whole review); a product's is its best review's (+ second_weight x its
        second-best review's, when it has one). Then the mean over the query sentences."""
        ranking = self.ranking
        penalty = ranking.negation_penalty if query_negated is not None else 0.0
        parts = []
        for kind, source in enumerate(self._sources):
            rows, owner = source.rows_of(products)
            if allowed is not None:
                keep = allowed[source.review[rows]]
                rows, owner = rows[keep], owner[keep]
            if isinstance(source.vectors, QuantizedVectors):  # the int8 codes: no float16 row is read
                raw = source.vectors.approximate(query_vectors, rows).T
            elif source.vectors.dtype == np.float16:  # computed in float32, no float32 copy of the rows
                raw = similarities(query_vectors, source.vectors, rows).T
            else:
                raw = source.vectors[rows] @ query_vectors.T
            sims = raw * source.weight[rows, None]
            if penalty and source.negated is not None:
                sims = sims - penalty * (source.negated[rows, None] != query_negated[None, :])
            parts.append((np.full(len(rows), kind), rows, owner, source.review[rows], raw, sims))
        kinds, rows, owner, reviews, raw, sims = (np.concatenate(column) for column in zip(*parts))
        overall = sims.max(axis=1) if len(rows) else np.zeros(0, np.float32)
        scored_owner, scored_reviews, scored_raw, scored_sims = owner, reviews, raw, sims
        if ranking.window_weight and len(parts[0][1]) > 1:
            # Body rows of one review are consecutive and ascending: a window is rows j and j+1.
            _, body_rows, body_owner, body_reviews, body_raw, _ = parts[0]
            pair = np.flatnonzero((body_rows[1:] == body_rows[:-1] + 1) & (body_reviews[1:] == body_reviews[:-1]))
            if pair.size:
                window = (body_raw[pair] + body_raw[pair + 1]) / self._pair_norms()[body_rows[pair], None]
                if penalty and self._body.negated is not None:
                    either = self._body.negated[body_rows[pair]] | self._body.negated[body_rows[pair] + 1]
                    window = window - penalty * (either[:, None] != query_negated[None, :])
                scored_sims = np.vstack([sims, ranking.window_weight * window])
                scored_owner = np.concatenate([owner, body_owner[pair]])
                scored_reviews = np.concatenate([reviews, body_reviews[pair]])
                scored_raw = np.vstack([raw, np.zeros_like(window)])  # windows add nothing to the review's vector sum
        # The best passage of each product; ties -> body before headline, then the earlier row.
        pick = np.lexsort((rows, kinds, -overall, owner))
        first = pick[np.flatnonzero(np.diff(owner[pick], prepend=-1))]
        best_kind = np.zeros(len(products), np.int64)
        best_row = np.full(len(products), -1, np.int64)
        best_kind[owner[first]], best_row[owner[first]] = kinds[first], rows[first]
        best = np.full((len(products), len(query_vectors)), -np.inf, dtype=np.float32)
        if not (ranking.review_weight or ranking.second_weight):
            np.maximum.at(best, scored_owner, scored_sims)
            return best.mean(axis=1), best_kind, best_row
        review_ids, local = np.unique(scored_reviews, return_inverse=True)
        per_review = np.full((len(review_ids), len(query_vectors)), -np.inf, dtype=np.float32)
        np.maximum.at(per_review, local, scored_sims)
        if ranking.review_weight:
            sums = np.zeros_like(per_review)
            np.add.at(sums, local, scored_raw)  # sum of passage vectors . query = review vector . query x its norm
            per_review += ranking.review_weight * sums / self._review_norms()[review_ids, None]
        review_owner = np.zeros(len(review_ids), np.int64)
        review_owner[local] = scored_owner
        np.maximum.at(best, review_owner, per_review)
        score = best.mean(axis=1)
        if ranking.second_weight and len(review_ids) > 1:
            second = np.zeros_like(best)
            for column in range(best.shape[1]):
                order = np.lexsort((-per_review[:, column], review_owner))
                group = review_owner[order]
                same = np.concatenate([[False], group[1:] == group[:-1]])  # not the best of its product
                is_second = same & ~np.concatenate([[False], same[:-1]])  # ... but right after it
                second[group[is_second], column] = np.maximum(per_review[order[is_second], column], 0)
            score = score + ranking.second_weight * second.mean(axis=1)
        return score, best_kind, best_row

    def _pair_norms(self) -> np.ndarray:
        """|v[i] + v[i + 1]| for every body sentence i (the last one: 1), computed once."""
        if getattr(self, "_pairs", None) is None:
            vectors = self._body.vectors
            norms = np.ones(len(vectors), np.float32)
            for begin in range(0, max(len(vectors) - 1, 0), _BLOCK_ROWS):
                end = min(begin + _BLOCK_ROWS, len(vectors) - 1)
                block = _float32_rows(vectors, begin, end + 1)  # one block upcast at a time
                norms[begin:end] = np.linalg.norm(block[:-1] + block[1:], axis=1)
            self._pairs = np.where(norms > 0, norms, 1.0).astype(np.float32)
        return self._pairs

    def _review_norms(self) -> np.ndarray:
        """|sum of a review's passage vectors| for every review (1 where it has none), computed once."""
        if getattr(self, "_norms", None) is None:
            dimensions = self._body.vectors.shape[1]
            sums = np.zeros((len(self._ratings), dimensions), np.float32)
            for source in self._sources:
                for begin in range(0, len(source), _BLOCK_ROWS):
                    block = slice(begin, begin + _BLOCK_ROWS)
                    order = np.argsort(source.review[block], kind="stable")
                    owners = source.review[block][order]
                    starts = np.flatnonzero(np.diff(owners, prepend=-1))
                    passages = _float32_rows(source.vectors, begin, begin + _BLOCK_ROWS)[order]  # this block only
                    sums[owners[starts]] += np.add.reduceat(passages, starts, axis=0)
            norms = np.sqrt((sums.astype(np.float64) ** 2).sum(axis=1))
            self._norms = np.where(norms > 0, norms, 1.0).astype(np.float32)
        return self._norms

    def _shown(self, kind: int, row: int) -> tuple[int, str, str]:
        """The review row, the matched passage's text and its field ("body" or "headline") for a
        product whose best passage is (kind, row). A headline is shown as the headline it is."""
        source = self._sources[kind]
        return int(source.review[row]), source.text(row), "body" if kind == 0 else "headline"

    def _catalog_text(self, name: str, review_row: int) -> str:
        stored = (self.corpus.texts or {}).get(f"catalog.{name}")
        if stored is not None:
            return stored[review_row]
        return str(self.corpus.catalog.iat[review_row, self._columns[name]])

    def _result(self, review_row: int, sentence: str, field: str, score: float) -> dict:
        catalog, column, text = self.corpus.catalog, self._columns, self._catalog_text
        return {
            "review_id": text("review_id", review_row),
            "product_id": str(catalog.iat[review_row, column["product_id"]]),
            "product_title": text("product_title", review_row),
            "star_rating": int(catalog.iat[review_row, column["star_rating"]]),
            "review_headline": text("review_headline", review_row),
            "review_body": text("review_body", review_row),
            "product_search_score": round(score, 6),
            "matched_sentence": sentence,
            "matched_field": field,
        }


def _words_and_negation(texts, negation: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Words in each passage (runs of letters and digits) and, when asked, whether it is negated;
    stored texts are read once, a block at a time."""
    if not len(texts):
        return np.zeros(0, int), (np.zeros(0, bool) if negation else None)
    if not isinstance(texts, StoredTexts):
        return texts.str.count(r"[^\W_]+").to_numpy(), (negated(texts) if negation else None)
    words, flags = [], []
    for block in texts.blocks(_BLOCK_ROWS):
        words.append(pd.Series(block, dtype="str").str.count(r"[^\W_]+").to_numpy())
        if negation:
            flags.append(negated(block))
    return np.concatenate(words), (np.concatenate(flags) if negation else None)


def _float32_rows(vectors, begin: int, end: int) -> np.ndarray:
    """Rows begin..end-1 as float32: from the int8 codes of QuantizedVectors (what `_score` ranks with),
    else from the (float16 or float32) array."""
    if isinstance(vectors, QuantizedVectors):
        return vectors.float32_block(begin, end)
    return vectors[begin:end].astype(np.float32)


def _whole_number(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum or (
            maximum is not None and value > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise QueryError(f"{name} must be a whole number {bounds}, got {value!r}")
    return int(value)
