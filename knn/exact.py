"""Exact search over unit vectors, and the float32 dot products with float16 rows or int8-coded vectors
that every index re-scores its candidates with (`similarities`).

`ExactIndex` answers `query(queries, k) -> (ids, similarities)`, best first, ties by the lower id
(`top_k`), as every index in knn.index does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from knn.float16_graph import WIDEN, float16_kernels
from knn.quantized_vectors import BLOCK_ROWS as _FILE_BLOCK_ROWS, QuantizedVectors

_NUMPY_WIDEN_MAX = 1 << 18  # values (rows x dimensions) that `similarities` widens with numpy, not numba


def check_queries(queries: np.ndarray, dimensions: int) -> np.ndarray:
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if queries.shape[1] != dimensions:
        raise ValueError(f"query vectors have {queries.shape[1]} dimensions, the index {dimensions}")
    return queries


def similarities(queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """queries . vectors[rows].T (all rows when None), (n_queries, n_rows), computed in float32.

    float16 vectors are never upcast as a whole: a cached numba kernel widens each row's float16 bits
    as it reads them (knn.float16_graph). Measured at 200k x 384, one query: 20 ms, where numpy's
    float16 -> float32 conversion alone takes ~300 ms (~4 ns a component) and float32 BLAS 50-60 ms.
    QuantizedVectors are scored from their float16 rows, read from the file (the rows asked for, or a
    block at a time), never from their int8 codes."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if isinstance(vectors, QuantizedVectors):  # exact: the float16 rows, read from their file
        if rows is not None:
            return similarities(queries, vectors.rows.take(rows))
        blocks = [similarities(queries, vectors.rows.block(begin, begin + _FILE_BLOCK_ROWS))
                  for begin in range(0, len(vectors), _FILE_BLOCK_ROWS)]
        return np.hstack(blocks) if blocks else np.zeros((len(queries), 0), np.float32)
    if vectors.dtype != np.float16:
        return queries @ (vectors if rows is None else vectors[rows]).T
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64).ravel()
    if (len(vectors) if rows is None else len(rows)) * vectors.shape[1] <= _NUMPY_WIDEN_MAX:
        # a few hundred rows (a graph's candidates, a small catalogue): numpy widens them in well under
        # a millisecond, and a process that never needs the kernel never loads numba (~3.7 s)
        return queries @ (vectors if rows is None else vectors[rows]).astype(np.float32).T
    bits = vectors.view(np.int16)
    rows = np.arange(len(vectors), dtype=np.int64) if rows is None else rows
    out = np.empty((len(queries), len(rows)), dtype=np.float32)
    if len(rows) and len(queries):
        float16_kernels()[1](bits, rows, queries * WIDEN, out)
    return out


def top_k(similarities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-first top k per row; ties broken by the lower id (deterministic)."""
    n = similarities.shape[1]
    k = min(k, n)
    if k == 0:
        return np.zeros((similarities.shape[0], 0), np.int64), np.zeros((similarities.shape[0], 0), np.float32)
    if k < n:
        part = np.argpartition(-similarities, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(n), (similarities.shape[0], 1))
    part_sims = np.take_along_axis(similarities, part, axis=1)
    order = np.lexsort((part, -part_sims), axis=1)
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return ids, np.take_along_axis(part_sims, order, axis=1)


class ExactIndex:
    """Brute force: one matrix product against all vectors (float16 rows: `similarities`, in float32)."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors

    def query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = check_queries(queries, self.vectors.shape[1])
        return top_k(similarities(queries, self.vectors), k)  # float16: no float32 copy of the rows

    def save(self, directory: Path) -> list[Path]:
        return []
