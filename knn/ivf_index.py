"""An inverted-file index for catalogues of millions of sentences: the vectors clustered into lists, a
query scanning the lists of its nearest centroids.

Why: a pynndescent graph took 545 s and held 6.7 GB to build for 1M sentences on 2 cores (~4 KB a
vector), so 5M cannot be built on one 24 GiB machine in half an hour; hnswlib's insertion slowed to
~4,600 rows/s by 1M rows here (over 20 min for 5M sentences and their headlines, and still slowing).
Clustering needs one k-means on a sample and one matrix product per block of rows: 15 s in all at 1M
on these 2 cores (7.1 s of k-means, 8.0 s to assign every row).

How a query runs: its similarity to every centroid (one small matrix product), the `nprobe` nearest
lists, an approximate score for each of their rows (the model's int8 codes, `QuantizedVectors`, the
same codes the ranking reads, so no second copy of the vectors is held; a model dir stores them in the
lists' order, so that a list is read in one pass), the best RESCORED of them (or `k`, when more)
re-scored exactly from the float16 rows (read from the model's file), and the best `k` of those
returned. `nprobe` is calibrated per catalogue when the index is built, as a graph's epsilon is
(`calibrate`): the least number of lists that holds CALIBRATION_TARGET of the true top 10 of held-out
queries.

Why not faiss's IVF: it keeps its own copy of the codes in its own layout, beside the model's int8 codes
that the ranking reads (1.9 GB more per machine at 5M); here faiss would only have done the k-means,
which `spherical_kmeans` does on a sample in one matrix product an iteration.

Saved as one `.npz` of plain arrays (allow_pickle off; the centroids, the lists' offsets and rows,
64-byte aligned so that serving maps them: one copy for all the workers of a machine) and a JSON file.
"""
from __future__ import annotations

import json
import logging
import math
import time
import zipfile
from pathlib import Path

import numpy as np

from knn.errors import IndexFileError
from knn.exact import ExactIndex, check_queries, similarities, top_k
from knn.mapped_npz import load_npz, save_npz
from knn.quantized_vectors import QuantizedVectors

log = logging.getLogger(__name__)

CALIBRATION_QUERIES = 200
CALIBRATION_TARGET = 0.995  # a graph's is 0.99; 0.99 on the 200 calibration queries gave 0.9885 on others (200k)
RESCORED = 64  # candidates re-scored exactly from the float16 rows, at least (when fewer than k are asked)
SAMPLE_PER_LIST = 40  # k-means sample: rows per list (scikit-learn's and faiss's rule of thumb: 30-256)
KMEANS_ITERATIONS = 15
_ASSIGN_BLOCK_ROWS = 1 << 16
_STATE_FILE = "ivf_state.json"
_ARRAYS_FILE = "ivf_arrays.npz"
_FORMAT = 1


def default_lists(n: int) -> int:
    """Lists for n rows: the power of two nearest sqrt(n) (1M rows: 1024 lists of ~1k rows), 1 at least."""
    return max(1, 2 ** round(math.log2(math.sqrt(max(n, 1)))))


def spherical_kmeans(sample: np.ndarray, lists: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """Unit centroids of `lists` clusters of the unit rows of `sample` by cosine (Lloyd's iterations,
    each centroid the normalised mean of its rows; a list left empty takes a random row).

    Written here, not taken from scikit-learn: its KMeans took 52.7 s for 40,960 rows x 1,024 lists
    (15 iterations) on these 2 cores, where one matrix product an iteration takes ~5 s, and cosine
    clusters are what the lists are scanned by."""
    centroids = sample[rng.choice(len(sample), lists, replace=False)].copy()
    for _ in range(iterations):
        assignment = np.concatenate([_nearest(sample[begin:begin + _ASSIGN_BLOCK_ROWS], centroids)
                                     for begin in range(0, len(sample), _ASSIGN_BLOCK_ROWS)])
        order = np.argsort(assignment, kind="stable")
        counts = np.bincount(assignment, minlength=lists)
        filled = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[filled]
        sums = np.add.reduceat(sample[order], starts, axis=0)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids[filled] = sums / np.where(norms > 0, norms, 1.0)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            centroids[empty] = sample[rng.choice(len(sample), len(empty), replace=False)]
    return centroids


def _nearest(rows, centroids: np.ndarray) -> np.ndarray:
    """Each row's most similar centroid (int32)."""
    return np.argmax(np.asarray(rows, dtype=np.float32) @ centroids.T, axis=1).astype(np.int32)


class IvfIndex:
    """Rows clustered into lists by k-means; a query scans the lists of its `nprobe` nearest centroids."""

    kind = "ivf"

    def __init__(self, vectors, centroids: np.ndarray, offsets: np.ndarray, rows: np.ndarray, nprobe: int = 8):
        if len(offsets) != len(centroids) + 1 or int(offsets[-1]) != len(rows) or len(rows) != len(vectors):
            raise IndexFileError(f"the inverted file ({len(centroids)} lists, {len(rows)} rows) does not match "
                                 f"the model's {len(vectors)} vectors; rebuild the model")
        self.vectors = vectors
        self.centroids = centroids
        self.offsets = offsets
        self.rows = rows
        self.nprobe = int(nprobe)
        self.calibration: dict | None = None
        code_rows = getattr(vectors, "code_rows", None)
        # Codes stored in this index's list order (knn.quantized_vectors.QuantizedVectors.in_order): a
        # probed list is one run of codes.
        self._coded = code_rows is not None and np.array_equal(code_rows, rows)

    @classmethod
    def build(cls, vectors, lists: int | None = None, random_state: int = 42) -> "IvfIndex":
        """Cluster unit `vectors` (float16 or float32 rows) into `lists` lists (default_lists)."""
        n, dimensions = vectors.shape
        lists = min(lists or default_lists(n), n)
        started = time.perf_counter()
        rng = np.random.default_rng(random_state)
        sample_rows = np.arange(n) if n <= SAMPLE_PER_LIST * lists else np.sort(
            rng.choice(n, SAMPLE_PER_LIST * lists, replace=False))
        sample = np.asarray(vectors[sample_rows], dtype=np.float32)
        centroids = spherical_kmeans(sample, lists, KMEANS_ITERATIONS, rng)
        trained = time.perf_counter() - started
        assignment = np.empty(n, dtype=np.int32)
        for begin in range(0, n, _ASSIGN_BLOCK_ROWS):
            assignment[begin:begin + _ASSIGN_BLOCK_ROWS] = _nearest(vectors[begin:begin + _ASSIGN_BLOCK_ROWS], centroids)
        order = np.argsort(assignment, kind="stable").astype(np.int32)  # each list's rows ascending
        offsets = np.zeros(lists + 1, dtype=np.int64)
        np.cumsum(np.bincount(assignment, minlength=lists), out=offsets[1:])
        sizes = np.diff(offsets)
        log.info("inverted file over %d rows: %d lists (k-means on %d rows %.1f s, all rows assigned %.1f s; "
                 "list sizes median %d, largest %d)", n, lists, len(sample), trained,
                 time.perf_counter() - started - trained, int(np.median(sizes)), int(sizes.max()))
        return cls(vectors, centroids, offsets, order)

    def query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = check_queries(queries, self.vectors.shape[1])
        k = min(k, len(self.vectors))
        ids = np.zeros((len(queries), k), dtype=np.int64)
        sims = np.zeros((len(queries), k), dtype=np.float32)
        nearest = top_k(queries @ self.centroids.T, min(self.nprobe, len(self.centroids)))[0]
        for number, query in enumerate(queries):
            positions = np.concatenate([np.arange(self.offsets[c], self.offsets[c + 1]) for c in nearest[number]])
            if len(positions) < k:  # too few rows in the probed lists: scan them all
                positions = np.arange(len(self.vectors), dtype=np.int64)
            candidates = np.asarray(self.rows[positions], dtype=np.int64)
            kept = max(k, RESCORED)
            if isinstance(self.vectors, QuantizedVectors) and kept < len(candidates):
                # approximate over the codes (in list order: a list at a time), then exact for the best
                rough = (self.vectors.approximate_at(query, positions) if self._coded
                         else self.vectors.approximate(query, candidates))[0]
                candidates = candidates[np.argpartition(-rough, kept - 1)[:kept]]
            candidates = np.sort(candidates)
            scores = similarities(query, self.vectors, candidates)
            top, top_sims = top_k(scores, k)
            ids[number], sims[number] = candidates[top[0]], top_sims[0]
        return ids, sims

    def calibrate(self, queries: np.ndarray, k: int = 10, target: float = CALIBRATION_TARGET) -> dict:
        """Set `nprobe` to the least number of lists that holds `target` of the true top 10 of up to
        CALIBRATION_QUERIES of `queries` (unit rows not in the index), against exact search over the same
        rows, then measure the recall@10 of queries asked for their top `k` as serving asks (an id counts
        when it is as similar as the 10th true neighbour).

        Why by the lists that hold the neighbours and not by trying settings: one exact search per query
        gives, for each neighbour, the rank of its list among the query's nearest centroids, so the
        recall that every nprobe would reach is known at once. On 1M synthetic vectors a few queries
        (~2%) far from every centroid have neighbours in lists ranked 100th and beyond: the least nprobe
        for 0.99 is then far above the typical query's."""
        queries = np.asarray(queries, dtype=np.float32)
        if len(queries) == 0 or len(self.vectors) <= 10:
            self.calibration = {"nprobe": self.nprobe, "queries": 0, "covered": {}}
            return self.calibration
        if len(queries) > CALIBRATION_QUERIES:
            picked = np.random.default_rng(0).choice(len(queries), CALIBRATION_QUERIES, replace=False)
            queries = queries[np.sort(picked)]
        exact = ExactIndex(self.vectors)
        answers = [exact.query(queries[i:i + 16], 10) for i in range(0, len(queries), 16)]
        truth = np.vstack([ids for ids, _ in answers])
        tenth = np.concatenate([sims[:, -1] for _, sims in answers])
        list_of = np.empty(len(self.vectors), dtype=np.int32)
        list_of[np.asarray(self.rows)] = np.repeat(np.arange(len(self.centroids), dtype=np.int32), np.diff(self.offsets))
        ranks = np.argsort(np.argsort(-(queries @ self.centroids.T), axis=1, kind="stable"), axis=1)
        needed = np.take_along_axis(ranks, list_of[truth], axis=1) + 1  # lists to probe for each neighbour
        reach = np.sort(needed.ravel())
        nprobe = int(reach[min(len(reach) - 1, int(np.ceil(target * len(reach))) - 1)])
        covered = {str(p): round(float(np.mean(needed <= p)), 4) for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, nprobe)
                   if p <= len(self.centroids)}
        self.nprobe = nprobe
        found = sum(int(np.count_nonzero(self.query(query[None], k)[1][0, :10] >= bound - 1e-5))
                    for query, bound in zip(queries, tenth))
        recall = found / (10 * len(queries))
        log.info("inverted file nprobe %d of %d lists: recall@10 %.4f (top 10 of k=%d, %d held-out queries; "
                 "share of the true top 10 in the nearest lists: %s)", nprobe, len(self.centroids), recall, k,
                 len(queries), covered)
        self.calibration = {"nprobe": nprobe, "recall_at_10": round(recall, 4), "k": k, "queries": len(queries),
                            "target": target, "covered": covered}
        return self.calibration

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        state_path, arrays_path = directory / _STATE_FILE, directory / _ARRAYS_FILE
        state_path.write_text(json.dumps({"format": _FORMAT, "nprobe": self.nprobe, "lists": len(self.centroids),
                                          "calibration": self.calibration}, indent=1, sort_keys=True))
        save_npz(arrays_path, {"centroids": self.centroids, "offsets": self.offsets, "rows": self.rows})
        return [state_path, arrays_path]

    @classmethod
    def load(cls, directory: Path, vectors) -> "IvfIndex":
        try:
            meta = json.loads((directory / _STATE_FILE).read_text())
            arrays = load_npz(directory / _ARRAYS_FILE, mapped=True)
            centroids, offsets, rows = arrays["centroids"], arrays["offsets"], arrays["rows"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise IndexFileError(f"cannot read the inverted file in {directory}: {exc}; rebuild the model") from None
        if meta.get("format") != _FORMAT:
            raise IndexFileError(f"the inverted file in {directory} has format {meta.get('format')}, "
                                 f"this knn reads {_FORMAT}: rebuild the model")
        index = cls(vectors, centroids, offsets, rows, nprobe=int(meta["nprobe"]))
        index.calibration = meta.get("calibration")
        return index
