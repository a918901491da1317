"""BM25: the lexical signal that search blends with the dense (embedding) score.

Dense sentence embeddings blur rare, specific words (names, species, materials, brands: "sloth",
"Paw Patrol", "Funko"); BM25 does not. Search keeps two BM25 indexes: one document per review (its
headline, unless it is an automatic "Five Stars"-style one, and its body), and one document per
passage (each body sentence and each kept headline). Tokens are runs of letters/digits, lower-cased,
accents folded, English stop words dropped, Porter-stemmed (nltk, pure Python, no data download).

An index is a sparse matrix of precomputed BM25 term weights plus the vocabulary, held twice: by term
(CSC: a term's postings, stored heaviest first) and by document (CSR: a document's terms). Search asks
two things of it:
- `best`: the documents with the highest BM25, read from the heaviest postings of the query's terms.
  It reads them to a depth of 4,096 per term, then 16,384 (`_DEPTHS`), and stops as soon as no
  document it has not read can reach the best `count` (the threshold algorithm of Fagin et al. on
  impact-ordered postings; the documents read that might still reach them are scored whole by
  document). Only when 16,384 postings of a term do not settle it (common words in a catalogue of
  millions) is the answer approximate: ranked by the sums of the postings read. In the 5M-passage
  bench catalogue that was a third of the calls, and the final top 10 products shared 0.95-0.97
  with reading every posting (bench/lexical_depth_bench.py). The second depth's extra postings
  (4,097-16,384 of each common term) are also stored sorted by document (the "tier copy": 1.6M
  postings, 13 MB, at 1M sentences), so that the merge sorts a few long sorted runs instead of adding
  ~100k postings into an array over every document. Only an index of TIER_COPY_FROM_DOCUMENTS or more
  documents has one: below, that array fits the CPU's caches and adding into it is cheaper.
- `scores_of`: the exact BM25 of given documents (the candidates' reviews, passages and titles), read
  by document, so that a candidate's score never depends on how common the query's words are.
`hits` (every document holding a query term, with its BM25) stays for whole-catalogue uses. The
arrays are saved as one `.npz` (allow_pickle off) with the vocabulary in JSON, and rebuilt from the
catalog when a model dir has none (older model dirs); a model dir written before the by-document copy
gets it built when it is first needed (in memory, not shared between workers).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import unicodedata
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from knn.errors import IndexFileError
from knn.mapped_npz import load_npz, save_npz
from knn.ranges import expand
from knn.sentences import clean_text

K1 = 1.2
B = 0.75
_FORMAT = 1
# A query whose postings number under 1/_DENSE_BELOW of the documents is merged by sorting, more by a
# dense sum (at 1M passages, side by side: p50 4.97 ms vs 9.83 by sorting alone). Crossover measured at
# 1.2M documents, 4 columns: 50k postings 3.7 ms dense vs 3.3 sorted, 100k 6.5 vs 6.9, 300k 6.1 vs 23.0.
_DENSE_BELOW = 16
# The most postings `hits` reads per term (the heaviest: a fit stores them by weight). Only terms in
# more documents than this lose any, i.e. the common words of a catalogue of millions of passages.
POSTINGS_PER_TERM = 1 << 16
# The depths `best` reads each term's postings to, in turn. At 5M passages, side by side
# (bench/lexical_depth_bench.py): adding 65,536 made the top 10 closer to exact (0.99 against 0.95
# shared) at 3-4x the p99; 4,096 alone was 0.84.
_DEPTHS = (1 << 12, 1 << 14)
# `best` reads every posting of a query whose terms have this many in all: one merge of them costs
# less than reading to a depth and scoring the documents that might still reach the best (a
# catalogue of thousands of reviews is always read whole).
_READ_ALL_UP_TO = 1 << 16
# `best` scores by document at most this many documents that might still reach the best `count`;
# more, and it reads deeper instead (each document's row costs about what its postings cost).
_SCORED_AT_MOST = 1 << 14
# An index of this many documents or more stores the tier copy (see the module docstring). Measured
# side by side on the 1M-sentence bench model's second-depth merges (65k-150k postings), adding into
# the dense array against one stable sort of the runs: 367,751 reviews 0.76 vs 2.54 ms per 100k
# postings; 1,210,716 passages 8.41 vs 4.87 (medians 6.3-7.4 vs 2.4-3.8 ms).
TIER_COPY_FROM_DOCUMENTS = 1 << 20
_TOKEN = re.compile(r"[^\W_]+")
# Headlines Amazon fills in from the star rating: they say nothing the rating does not.
STAR_HEADLINE = re.compile(r"^\s*(one|two|three|four|five)\s+stars?\s*$", re.IGNORECASE)
STOPWORDS = frozenset("""
a an the and or but nor of to in on at for with is it its this that these those was were be been are am
i me my we our you your he she they them his her their as so if not no do does did have has had just
very too also than then there here what which who whom will would can could should cannot from by about
into out up down over all any some more most much many such only own same both each few other off again
once s t d m ll re ve don didn doesn isn wasn aren weren hasn haven hadn won wouldn couldn shouldn mustn
""".split())


def kept_headline(headline: str) -> str:
    """The headline as search uses it: empty for automatic star headlines ("Five Stars")."""
    headline = (headline or "").strip()
    return "" if STAR_HEADLINE.match(headline) else headline


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _stemmer().stem(word)


@lru_cache(maxsize=1)
def _stemmer():
    from knn.nltk_parts import porter_module

    return porter_module().PorterStemmer()


def tokens(text: str) -> list[str]:
    """The index terms of a text, in order (stop words removed, stemmed)."""
    text = " ".join(clean_text(text)).lower()
    if not text.isascii():
        text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return [_stem(word) for word in _TOKEN.findall(text) if word not in STOPWORDS]


class LexicalIndex:
    """BM25 weights of every document for every term; `scores(query)` adds up the query's columns."""

    def __init__(self, vocabulary: Sequence[str], weights, by_weight: bool = False, by_document=None,
                 tier_copy: tuple | None = None):
        from scipy.sparse import csc_array

        self.vocabulary = list(vocabulary)
        self._column = {term: column for column, term in enumerate(self.vocabulary)}
        self.weights = csc_array(weights)
        # The same weights by document (CSR, each row's terms ascending); made from `weights` when
        # first needed if not given (model dirs written before it was stored).
        self._by_document = by_document
        # True: each term's postings are stored heaviest first (`by_weight`), and a query reads at most
        # POSTINGS_PER_TERM of them (`best`: stops early); False (model dirs written before): stored by
        # document, all read.
        self.by_weight = by_weight
        # (bounds, documents, weights, indptr): each term's postings at positions bounds[0]..bounds[1]-1
        # (heaviest first) again, sorted by document (`tier_copy`); None: not stored (model dirs written before)
        self.tier_copy = tier_copy
        if self.weights.shape[1] != len(self.vocabulary):
            raise ValueError(f"{self.weights.shape[1]} weight columns for {len(self.vocabulary)} terms")

    @property
    def n_documents(self) -> int:
        return int(self.weights.shape[0])

    @classmethod
    def build(cls, documents: Iterable[str], k1: float = K1, b: float = B) -> "LexicalIndex":
        from scipy.sparse import csc_array

        vocabulary: dict[str, int] = {}
        rows: list[int] = []
        columns: list[int] = []
        counts: list[int] = []
        lengths: list[int] = []
        for row, document in enumerate(documents):
            terms = tokens(document)
            lengths.append(len(terms))
            frequency: dict[int, int] = {}
            for term in terms:
                column = vocabulary.setdefault(term, len(vocabulary))
                frequency[column] = frequency.get(column, 0) + 1
            rows.extend([row] * len(frequency))
            columns.extend(frequency)
            counts.extend(frequency.values())
        n_documents = len(lengths)
        rows_a = np.asarray(rows, dtype=np.int64)
        columns_a = np.asarray(columns, dtype=np.int64)
        tf = np.asarray(counts, dtype=np.float32)
        length = np.asarray(lengths, dtype=np.float32)
        average = float(length.mean()) if n_documents and length.mean() > 0 else 1.0
        df = np.bincount(columns_a, minlength=len(vocabulary)).astype(np.float32)
        idf = np.log1p((n_documents - df + 0.5) / (df + 0.5)).astype(np.float32)
        weight = idf[columns_a] * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length[rows_a] / average))
        matrix = csc_array((weight.astype(np.float32), (rows_a, columns_a)), shape=(n_documents, len(vocabulary)))
        matrix.sum_duplicates()
        heaviest_first = by_weight(matrix)
        return cls(list(vocabulary), heaviest_first, by_weight=True, by_document=_by_document(matrix),
                   tier_copy=_tier_copy_if_big(heaviest_first))

    def _terms(self, query: str | Sequence[str]) -> set[str]:
        return set(tokens(query if isinstance(query, str) else " ".join(query)))

    def columns(self, query: str | Sequence[str]) -> np.ndarray:
        """The query's distinct terms that some document holds, as ascending column numbers."""
        return np.asarray(sorted(self._column[t] for t in self._terms(query) if t in self._column), dtype=np.int64)

    @property
    def by_document(self):
        """The weights as CSR (documents x terms, each row's terms ascending)."""
        if self._by_document is None:
            self._by_document = _by_document(self.weights)
        return self._by_document

    def scores_of(self, documents: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """The BM25 of each of `documents` (any order, repeats allowed) for the terms `columns`
        (`columns(query)`), float32: what `hits` gives those documents, to the bit (float64 sums in
        column order), read from each document's own terms."""
        documents = np.asarray(documents, dtype=np.int64)
        if len(documents) == 0 or len(columns) == 0:
            return np.zeros(len(documents), np.float32)
        matrix = self.by_document
        entries, owner = expand(matrix.indptr[documents], matrix.indptr[documents + 1])  # each document's terms
        terms = matrix.indices[entries]
        wanted = np.zeros(self.weights.shape[1], dtype=bool)
        wanted[columns] = True
        keep = wanted[terms]
        return np.bincount(owner[keep], weights=matrix.data[entries[keep]],
                           minlength=len(documents)).astype(np.float32)

    def best(self, columns: np.ndarray, count: int, usable=None) -> tuple[np.ndarray, np.ndarray, bool]:
        """The `count` documents with the highest BM25 for the terms `columns`, best first (ties by
        document), among those `usable(documents) -> bool mask` keeps; their BM25 (float32); and
        whether that is exact (False only when the last of `_DEPTHS` did not settle it: then they are
        ranked by the sums of the postings read).

        Reads each term's heaviest postings to a depth (see the module docstring). A document not
        read yet scores at most the sum of each term's next weight (F); one read scores at most what
        was read of it plus the next weights of the terms it was not read in. Once the `count`-th best
        sum read beats F, the documents that can still reach it are scored whole by document, and the
        best of them are the answer."""
        columns = np.asarray(columns, dtype=np.int64)
        if len(columns) == 0 or count <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), True
        indptr = self.weights.indptr
        starts = np.asarray(indptr[columns], dtype=np.int64)
        lengths = np.asarray(indptr[columns + 1], dtype=np.int64) - starts
        if not self.by_weight or lengths.sum() <= _READ_ALL_UP_TO:  # by document: no order to stop early in
            depths = (int(lengths.max()),)
        else:
            depths = _DEPTHS
        for depth in depths:
            read = np.minimum(lengths, depth)
            frontiers = np.zeros(len(columns))  # each term's next weight not read (0: all read)
            deeper = np.flatnonzero(lengths > depth)
            frontiers[deeper] = self.weights.data[starts[deeper] + depth]
            frontier = float(frontiers.sum())
            documents, sums, seen = self._merge(*self._read_to(columns, starts, read, depth, frontiers),
                                                many_columns=len(columns) > 1)
            if usable is not None and len(documents):
                keep = usable(documents)
                documents, sums, seen = documents[keep], sums[keep], seen[keep]
            if frontier == 0.0:  # every posting read: the sums are the scores
                return _top(documents, sums, count) + (True,)
            kth = float(np.partition(sums, len(sums) - count)[len(sums) - count]) if len(sums) >= count else 0.0
            if frontier < kth:
                # a document read scores at most its sum plus the next weights of the terms it was not read in
                maybe = documents[sums.astype(np.float64) + (frontier - seen) >= kth * (1 - 1e-6)]
                if len(maybe) <= _SCORED_AT_MOST:
                    return _top(maybe, self.scores_of(maybe, columns), count) + (True,)
        return _top(documents, sums, count) + (False,)

    def _read_to(self, columns: np.ndarray, starts: np.ndarray, read: np.ndarray, depth: int,
                 frontiers: np.ndarray) -> tuple[list, np.ndarray, bool]:
        """The postings `best` reads to `depth` (`read` of each term from `starts`) as (documents,
        weights) parts, each part's frontier, and whether the parts are runs sorted by document past
        the first depth (read from the tier copy)."""
        indices, data = self.weights.indices, self.weights.data
        copy = self.tier_copy
        if copy is None or depth != copy[0][1]:
            parts = [(indices[a:a + r], data[a:a + r]) for a, r in zip(starts.tolist(), read.tolist())]
            return parts, frontiers, False
        (first, _), documents, weights, indptr = copy
        parts, per_part = [], []
        for column, start, count, frontier in zip(columns.tolist(), starts.tolist(), read.tolist(), frontiers.tolist()):
            head = min(count, first)
            parts.append((indices[start:start + head], data[start:start + head]))
            per_part.append(frontier)
            if count > first:  # the postings past the first depth, sorted by document
                begin, end = int(indptr[column]), int(indptr[column + 1])
                parts.append((documents[begin:end], weights[begin:end]))
                per_part.append(frontier)
        return parts, np.asarray(per_part), True

    def scores(self, query: str | Sequence[str]) -> np.ndarray:
        """BM25 of every document for the query's terms (each distinct term once), float32."""
        rows, values = self.hits(query)
        scores = np.zeros(self.n_documents, dtype=np.float32)
        scores[rows] = values
        return scores

    def hits(self, query: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The documents holding any of the query's terms (ascending) and their BM25, float32.

        Reads only the query terms' postings, so its cost follows how common the words are, not how
        many documents there are (what keeps a query fast at a million passages); of a term stored by
        weight, its POSTINGS_PER_TERM heaviest."""
        columns = self.columns(query)
        if not len(columns):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        indptr, indices, data = self.weights.indptr, self.weights.indices, self.weights.data
        if self.by_weight:  # each term's heaviest POSTINGS_PER_TERM documents
            spans = [slice(indptr[c], min(indptr[c + 1], indptr[c] + POSTINGS_PER_TERM)) for c in columns]
        else:
            spans = [slice(indptr[c], indptr[c + 1]) for c in columns]
        rows, values = self._merge([(indices[span], data[span]) for span in spans], many_columns=len(columns) > 1)
        if len(columns) == 1 and self.by_weight:  # back to document order
            order = np.argsort(rows, kind="stable")
            rows, values = rows[order], values[order]
        return rows, values

    def _merge(self, parts: list[tuple[np.ndarray, np.ndarray]], per_part: np.ndarray | None = None,
               sorted_runs: bool = False, many_columns: bool = True):
        """The documents of the postings `parts` ((documents, weights) of each term, in column order; a
        term may have several parts, none sharing a document) and their summed weights, float32;
        ascending by document when the postings come from several columns. With `per_part` (a number
        per part), also each document's sum of the numbers of the parts holding it. `sorted_runs`: most
        postings lie in parts sorted by document, which one stable sort merges fastest."""
        rows = np.concatenate([documents for documents, _ in parts])  # the postings, column after column
        values = np.concatenate([weights for _, weights in parts])
        extra = None if per_part is None else np.repeat(per_part, [len(documents) for documents, _ in parts])
        if many_columns and not sorted_runs and len(rows) * _DENSE_BELOW > self.n_documents:
            # Many postings (common words in a big catalogue): add them into one dense array (bincount)
            # in column order (a column lists each document once) instead of sorting them all. The
            # sums are the same as below, to the bit: float64, each document's terms added in column order.
            sums = np.bincount(rows, weights=values, minlength=self.n_documents)
            unique = np.flatnonzero(sums != 0)  # BM25 weights are > 0; a bool mask: 1.8 vs 8.1 ms at 1.2M
            merged = unique, sums[unique].astype(np.float32)
            if extra is None:
                return merged
            return merged + (np.bincount(rows, weights=extra, minlength=self.n_documents)[unique],)
        values = values.astype(np.float32, copy=False)
        if not many_columns:
            merged = rows.astype(np.int64, copy=False), values
            return merged if extra is None else merged + (extra,)
        if len(rows) == 0:
            merged = np.zeros(0, np.int64), np.zeros(0, np.float32)
            return merged if extra is None else merged + (np.zeros(0),)
        shift = max(int(len(rows) - 1).bit_length(), 1)
        if shift + max(self.n_documents - 1, 1).bit_length() > 63:  # no room to pack: sort by np.unique
            unique, inverse = np.unique(rows, return_inverse=True)
            merged = unique.astype(np.int64, copy=False), np.bincount(inverse, weights=values).astype(np.float32)
            return merged if extra is None else merged + (np.bincount(inverse, weights=extra),)
        # Sort (document, posting) pairs packed in one int64, not an argsort (1.8x faster at 65k postings):
        # each document's postings then follow in column order, and are summed in float64 in that order,
        # as np.bincount sums them (the same bits).
        keys = (rows.astype(np.int64) << shift) | np.arange(len(rows), dtype=np.int64)
        keys.sort(kind="stable" if sorted_runs else None)  # numpy's stable sort (timsort) merges sorted runs
        order = keys & ((1 << shift) - 1)
        documents = keys >> shift
        starts = np.flatnonzero(np.concatenate(([True], documents[1:] != documents[:-1])))
        merged = (documents[starts], np.add.reduceat(values[order].astype(np.float64), starts).astype(np.float32))
        return merged if extra is None else merged + (np.add.reduceat(extra[order], starts),)

    def full_match(self, query: str | Sequence[str]) -> float:
        """BM25 of an average-length document holding every query term once: the sum of their idf.
        Terms no review contains count too (with the idf of a term in no document): a review matching
        1 word of a 7-word query is a weak match even when the other 6 words occur nowhere."""
        terms = self._terms(query)
        columns = [self._column[t] for t in terms if t in self._column]
        df = np.concatenate([np.diff(self.weights.indptr)[columns], np.zeros(len(terms) - len(columns))])
        return float(np.log1p((self.n_documents - df + 0.5) / (df + 0.5)).sum())

    @staticmethod
    def files(name: str) -> tuple[str, str]:
        return f"{name}.npz", f"{name}_vocabulary.json"

    def save(self, directory: Path, name: str) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        matrix = self.weights
        arrays_path, vocabulary_path = (directory / f for f in self.files(name))
        rows = self.by_document
        save_npz(arrays_path, {"data": matrix.data.astype(np.float32), "indices": matrix.indices.astype(np.int32),
                               "indptr": matrix.indptr.astype(np.int64),
                               "shape": np.asarray(matrix.shape, dtype=np.int64),
                               "document_data": rows.data.astype(np.float32),
                               "document_terms": rows.indices.astype(np.int32),
                               "document_indptr": rows.indptr.astype(np.int64),
                               **_tier_arrays(self.tier_copy)})  # aligned: load maps them
        vocabulary_path.write_text(json.dumps({"format": _FORMAT, "k1": K1, "b": B, "vocabulary": self.vocabulary,
                                               "postings": "by_weight" if self.by_weight else "by_document"},
                                              ensure_ascii=False))
        return [arrays_path, vocabulary_path]

    @classmethod
    def load(cls, directory: Path, name: str, n_documents: int) -> "LexicalIndex":
        from scipy.sparse import csc_array

        arrays_file, vocabulary_file = cls.files(name)
        try:
            meta = json.loads((directory / vocabulary_file).read_text())
            npz = load_npz(directory / arrays_file)  # mapped read-only: one copy for a machine's workers
            shape = tuple(int(x) for x in npz["shape"])
            indices, indptr = npz["indices"], npz["indptr"]
            if len(indices) < 2 ** 31 and indices.dtype == np.int32:
                # indptr is saved as int64: with int32 indices scipy would copy them to int64 (at 1M
                # passages and their reviews: 93 MB more held); all-int32 arrays are kept as loaded
                indptr = indptr.astype(np.int32)
            matrix = csc_array((npz["data"], indices, indptr), shape=shape)
            by_document = None
            if "document_indptr" in npz:  # model dirs written before it was stored: made when needed
                from scipy.sparse import csr_array

                terms, document_indptr = npz["document_terms"], npz["document_indptr"]
                if len(terms) < 2 ** 31 and terms.dtype == np.int32:
                    document_indptr = document_indptr.astype(np.int32)
                by_document = csr_array((npz["document_data"], terms, document_indptr), shape=shape)
                by_document.has_sorted_indices = True
            copy = None
            if "tier_indptr" in npz:  # model dirs written before it was stored: the second depth merges as before
                copy = (tuple(int(b) for b in npz["tier_bounds"]), npz["tier_documents"], npz["tier_weights"],
                        npz["tier_indptr"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise IndexFileError(f"cannot read the lexical index {name} in {directory}: {exc}; rebuild the model") from None
        if meta.get("format") != _FORMAT or shape[0] != n_documents or shape[1] != len(meta.get("vocabulary", ())):
            raise IndexFileError(f"the lexical index {name} in {directory} does not match the model's data; rebuild the model")
        by_weight_order = meta.get("postings") == "by_weight"
        return cls(meta["vocabulary"], matrix, by_weight=by_weight_order, by_document=by_document,
                   tier_copy=copy if by_weight_order else None)


def _tier_arrays(copy: tuple | None) -> dict:
    if copy is None:
        return {}
    bounds, documents, weights, indptr = copy
    return {"tier_bounds": np.asarray(bounds, dtype=np.int64), "tier_documents": documents,
            "tier_weights": weights, "tier_indptr": indptr}


def upgrade(directory: Path, name: str) -> list[Path]:
    """Rewrite a lexical index saved before the by-document copy or the tier copy (or with its postings
    by document) as a fit now saves it: the same weights, postings heaviest first, the copies beside them. Returns
    the files rewritten (none when it is already so)."""
    from knn.mapped_npz import load_npz

    arrays = load_npz(directory / LexicalIndex.files(name)[0])
    meta = json.loads((directory / LexicalIndex.files(name)[1]).read_text())
    if "document_indptr" in arrays and meta.get("postings") == "by_weight" and (
            "tier_indptr" in arrays or int(arrays["shape"][0]) < TIER_COPY_FROM_DOCUMENTS):
        return []
    index = LexicalIndex.load(directory, name, int(arrays["shape"][0]))
    weights = by_weight(index.weights) if not index.by_weight else index.weights
    index = LexicalIndex(index.vocabulary, weights, by_weight=True, tier_copy=_tier_copy_if_big(weights))
    staging = directory / f".{name}.upgrading"  # the old files stay whole (and mapped) until replaced
    shutil.rmtree(staging, ignore_errors=True)
    written = []
    for path in index.save(staging, name):
        os.replace(path, directory / path.name)
        written.append(directory / path.name)
    staging.rmdir()
    return written


def by_weight(matrix):
    """The CSC weights with each term's postings heaviest first (ties by document), the same entries."""
    from scipy.sparse import csc_array

    matrix = csc_array(matrix)
    indptr = np.asarray(matrix.indptr)
    columns = np.repeat(np.arange(matrix.shape[1]), np.diff(indptr))
    order = np.lexsort((matrix.indices, -matrix.data, columns))
    reordered = csc_array((matrix.data[order], matrix.indices[order], indptr), shape=matrix.shape)
    reordered.has_sorted_indices = False
    return reordered


def tier_copy(matrix, bounds: tuple[int, int] | None = None) -> tuple:
    """`LexicalIndex.tier_copy` of CSC weights stored heaviest first: each term's postings at positions
    bounds[0]..bounds[1]-1 (default: the first two of `_DEPTHS`), sorted by document (int32 documents,
    float32 weights, int64 indptr by term; empty for terms with no more than bounds[0] postings)."""
    first, last = (int(b) for b in (bounds or (_DEPTHS[0], _DEPTHS[min(1, len(_DEPTHS) - 1)])))
    indptr = np.asarray(matrix.indptr, dtype=np.int64)
    starts = indptr[:-1] + first
    ends = np.maximum(np.minimum(indptr[1:], indptr[:-1] + last), starts)
    entries, owner = expand(starts, ends)
    documents = np.asarray(matrix.indices)[entries]
    order = np.lexsort((documents, owner))  # by term, then document
    copy_indptr = np.concatenate(([0], np.cumsum(ends - starts))).astype(np.int64)
    return ((first, last), documents[order].astype(np.int32), np.asarray(matrix.data)[entries][order].astype(np.float32),
            copy_indptr)


def _tier_copy_if_big(matrix) -> tuple | None:
    return tier_copy(matrix) if matrix.shape[0] >= TIER_COPY_FROM_DOCUMENTS else None


def _by_document(matrix):
    """The weights as CSR, each document's terms ascending (what `scores_of` reads)."""
    rows = matrix.tocsr()
    rows.sort_indices()
    return rows


def _top(documents: np.ndarray, scores: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The `count` best (documents, scores), best first, ties by the lower document."""
    if len(scores) > count:
        kth = np.partition(scores, len(scores) - count)[len(scores) - count]
        pick = np.flatnonzero(scores >= kth)
        documents, scores = documents[pick], scores[pick]
    order = np.lexsort((documents, -scores))[:count]
    return documents[order].astype(np.int64, copy=False), scores[order].astype(np.float32, copy=False)


def review_documents(catalog) -> list[str]:
    """One lexical document per review: kept headline and body."""
    return [f"{kept_headline(h)}\n{b}" for h, b in zip(catalog["review_headline"].tolist(), catalog["review_body"].tolist())]


def title_documents(titles) -> list[str]:
    """One lexical document per product: its title (knn.reviews.product_titles' rows)."""
    return titles["product_title"].tolist()


def passage_documents(sentences, headlines) -> list[str]:
    """One lexical document per passage: the body sentences, then the kept headlines (may be None)."""
    texts = sentences["sentence"].tolist()
    return texts + (headlines["headline"].tolist() if headlines is not None else [])
