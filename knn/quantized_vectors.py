"""Unit vectors served as int8 codes, with their exact float16 rows read from the model's file on demand.

A graph walk reads rows all over its vectors, so whatever array it walks ends up wholly resident: on
this kernel even a mapped file's random reads fault in whole page-cache folios (one query over a mapped
1M x 384 float16 file made all 0.77 GB of it resident). `QuantizedVectors` therefore keeps what the
walks and the ranking read as int8 codes, one byte a component with one scale per dimension (half the
float16 bytes; `quantize`), and reads the float16 rows with `os.pread`, never mapped, where a score
must be exact: the graph's re-scoring of its candidates and exact search (`FileRows`). Read that way
the float16 bytes stay in the page cache (shared by every process, and reclaimable) and out of every
process's RSS. A small catalogue's rows (`MappedRows`, up to knn.model_dir's size limit) are mapped
instead: resident either way, one copy for every worker, and ~0.7 ms a query faster on toys-10k than one
`pread` per run of rows. On 1M synthetic sentences the int8 codes alone found the exact top 10 for 0.978 of the
neighbours; the top 64 by int8, re-scored from the float16 rows, for 1.000.

An inverted file (knn.ivf_index) scans its lists' codes one list after another, so a model with one
stores its codes in the lists' order (`QuantizedVectors.in_order`: the codes' rows and each row's
position beside them); everything else still asks by row.

Why not a library: numpy's memmap (and pyarrow's or h5py's mapped reads) is the mapping being avoided;
pynndescent's own int8 quantization re-ranks on float32 rows held in memory.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from knn.mapped_npz import read_npy_header

BLOCK_ROWS = 16_384  # rows quantized, or read for exact search, at a time (no copy of all of them)
_NUMPY_MAX = 1 << 18  # values (rows x dimensions) scored with numpy; more go through the numba kernel


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and per-dimension float32 scales of unit `vectors` (any float dtype):
    vectors[i, d] ~ codes[i, d] x scales[d], each dimension's largest magnitude mapped to 127."""
    vectors = np.asarray(vectors)
    n, dimensions = vectors.shape
    largest = np.zeros(dimensions, np.float32)
    for begin in range(0, n, BLOCK_ROWS):
        block = np.abs(np.asarray(vectors[begin:begin + BLOCK_ROWS], dtype=np.float32))
        np.maximum(largest, block.max(axis=0), out=largest)
    scales = np.where(largest > 0, largest / np.float32(127), np.float32(1)).astype(np.float32)
    codes = np.empty((n, dimensions), np.int8)
    for begin in range(0, n, BLOCK_ROWS):
        block = np.asarray(vectors[begin:begin + BLOCK_ROWS], dtype=np.float32) / scales
        codes[begin:begin + BLOCK_ROWS] = np.clip(np.rint(block), -127, 127)
    return codes, scales


def _checked_rows(rows, count: int, path: Path) -> np.ndarray:
    """`rows` as a flat int64 array, each one of the `count` rows of the file `path` (IndexError if not)."""
    rows = np.asarray(rows, dtype=np.int64).ravel()
    if rows.size and (rows.min() < 0 or rows.max() >= count):
        raise IndexError(f"row out of range for {count} rows of {path.name}")
    return rows


class FileRows:
    """The rows of a 2-D `.npy` file, read with os.pread when asked for (never mapped, never all held)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            shape, fortran_order, dtype, self._start = read_npy_header(handle)
        if len(shape) != 2 or fortran_order or dtype.hasobject:
            raise ValueError(f"{self.path}: not a C-ordered 2-D array of numbers (shape {shape})")
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        self._row_bytes = self.shape[1] * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def block(self, begin: int, end: int) -> np.ndarray:
        """Rows begin..end-1 (clamped to the file), one read."""
        begin, end = max(0, begin), min(end, self.shape[0])
        return self._read(begin, max(end - begin, 0))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows `rows` in that order; each run of consecutive rows is one read."""
        rows = _checked_rows(rows, self.shape[0], self.path)
        wanted, where = np.unique(rows, return_inverse=True)
        out = np.empty((len(wanted), self.shape[1]), self.dtype)
        if not len(wanted):
            return out
        breaks = np.flatnonzero(np.diff(wanted) != 1) + 1
        for first, last in zip([0, *breaks.tolist()], [*breaks.tolist(), len(wanted)]):
            out[first:last] = self._read(int(wanted[first]), last - first)
        return out[where.ravel()]

    def _read(self, first: int, count: int) -> np.ndarray:
        size = count * self._row_bytes
        data = os.pread(self._fd, size, self._start + first * self._row_bytes)
        if len(data) != size:
            raise OSError(f"{self.path}: short read ({len(data)} of {size} bytes); the file changed under the model")
        return np.frombuffer(data, dtype=self.dtype).reshape(count, self.shape[1])


class MappedRows:
    """The rows of a small 2-D `.npy` file, mapped read-only: what FileRows gives, without a read per row."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.array = np.load(self.path, allow_pickle=False, mmap_mode="r")
        if self.array.ndim != 2:
            raise ValueError(f"{self.path}: not a 2-D array of numbers (shape {self.array.shape})")
        self.shape, self.dtype = self.array.shape, self.array.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def block(self, begin: int, end: int) -> np.ndarray:
        """Rows begin..end-1 (clamped to the file)."""
        return np.asarray(self.array[max(0, begin):max(min(end, self.shape[0]), 0)])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows `rows` in that order."""
        rows = _checked_rows(rows, self.shape[0], self.path)
        return self.array[rows]


class QuantizedVectors:
    """Unit vectors as int8 codes (walked and ranked; mapped read-only from the model dir) and their
    float16 rows in a file (`FileRows`, for exact scores). Looks like the rows array where knn.index
    needs only its shape and dtype (the float16 rows')."""

    ndim = 2

    def __init__(self, codes: np.ndarray, scales: np.ndarray, rows: FileRows | MappedRows, code_rows: np.ndarray | None = None,
                 positions: np.ndarray | None = None):
        if codes.dtype != np.int8 or codes.ndim != 2 or codes.shape != rows.shape:
            raise ValueError(f"int8 codes {codes.dtype} {codes.shape} do not match the rows {rows.shape}")
        if np.shape(scales) != (codes.shape[1],):
            raise ValueError(f"{np.shape(scales)} scales for {codes.shape[1]} dimensions")
        if (code_rows is None) != (positions is None) or (code_rows is not None and (
                np.shape(code_rows) != (len(codes),) or np.shape(positions) != (len(codes),))):
            raise ValueError("codes in another order need both their rows and the rows' positions, one per code")
        self.codes = codes
        self.scales = np.ascontiguousarray(scales, dtype=np.float32)
        self.rows = rows
        self.code_rows = code_rows  # None: codes[i] is row i; else codes[i] is row code_rows[i]
        self.positions = positions  # row -> its code's position (the inverse of code_rows)
        self.shape, self.dtype = rows.shape, rows.dtype

    @classmethod
    def in_order(cls, codes: np.ndarray, scales: np.ndarray, rows: FileRows | MappedRows, order: np.ndarray) -> "QuantizedVectors":
        """Row-ordered `codes` stored in `order` (codes[order], e.g. an inverted file's lists one after
        another, so that a list's codes are read in one pass: ~9x faster than the same rows apart)."""
        order = np.asarray(order, dtype=np.int32)
        return cls(np.ascontiguousarray(codes[order]), scales, rows, order, inverse_order(order))

    def __len__(self) -> int:
        return self.shape[0]

    def approximate(self, queries: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """queries . (codes x scales)[rows].T in float32 (all rows when None): within ~0.003 of exact."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32) * self.scales
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64).ravel()
        if self.positions is not None:  # codes stored in another order: where each row's code is
            rows = np.asarray(self.positions if rows is None else self.positions[rows], dtype=np.int64)
        return self.approximate_at(queries, rows, scaled=True)

    def approximate_at(self, queries: np.ndarray, positions: np.ndarray | None, scaled: bool = False) -> np.ndarray:
        """queries . (codes x scales)[positions].T: by position in the codes as stored (all when None)."""
        if not scaled:
            queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32) * self.scales
        count = len(self) if positions is None else len(positions)
        if count * self.shape[1] <= _NUMPY_MAX:
            codes = self.codes if positions is None else self.codes[positions]
            return queries @ codes.astype(np.float32).T
        from knn.float16_graph import float16_kernels

        positions = np.arange(len(self), dtype=np.int64) if positions is None else np.asarray(positions, np.int64)
        out = np.empty((len(queries), len(positions)), dtype=np.float32)
        if len(queries):
            float16_kernels()[1](self.codes, positions, queries, out)
        return out

    def float32_block(self, begin: int, end: int) -> np.ndarray:
        """Rows begin..end-1 as float32, from the codes (what `approximate` scores)."""
        if self.positions is not None:
            return self.codes[self.positions[begin:end]].astype(np.float32) * self.scales
        return self.codes[begin:end].astype(np.float32) * self.scales


def inverse_order(order: np.ndarray) -> np.ndarray:
    """positions such that positions[order[i]] == i (int32)."""
    positions = np.empty(len(order), dtype=np.int32)
    positions[np.asarray(order)] = np.arange(len(order), dtype=np.int32)
    return positions
