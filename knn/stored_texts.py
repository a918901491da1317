"""Text columns stored in a model dir as one UTF-8 file each plus row offsets, read a row at a time with
os.pread: what a big catalogue only shows (review bodies, titles, headlines, sentences) costs a serving
process its offsets (4 or 8 bytes a row), not its text.

Layout, per column: `<name>.txt` (the rows' UTF-8 bytes, one after another) and `<name>.offsets.npy`
(n + 1 ascending byte offsets, uint32 when the text is under 4 GiB, else int64).

Why not a library: pandas and pyarrow hold a column in memory (at 1M sentences the three tables held
0.19 GiB of a 1.5 GB budget), or map it, and on this kernel a mapped file read at random ends up wholly
resident (knn.quantized_vectors); Parquet and Arrow IPC read a whole page or record batch to get a row.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

BLOCK_ROWS = 16_384  # rows per read when every row is wanted (loading, checks)


def files(name: str) -> tuple[str, str]:
    return f"{name}.txt", f"{name}.offsets.npy"


def write_texts(directory: Path, name: str, texts: Iterable[str]) -> list[Path]:
    """Write one text column (each value str()-ed); returns the two files."""
    directory.mkdir(parents=True, exist_ok=True)
    text_path, offsets_path = (directory / f for f in files(name))
    offsets = [0]
    with open(text_path, "wb") as handle:
        for text in texts:
            data = str(text).encode("utf-8")
            handle.write(data)
            offsets.append(offsets[-1] + len(data))
    dtype = np.uint32 if offsets[-1] < 2 ** 32 else np.int64
    np.save(offsets_path, np.asarray(offsets, dtype=dtype), allow_pickle=False)
    return [text_path, offsets_path]


class StoredTexts:
    """One stored text column: `len`, `texts[row]` (one read) and `blocks()` (every row, in order)."""

    def __init__(self, directory: Path, name: str):
        text_name, offsets_name = files(name)
        self.path = Path(directory) / text_name
        self.offsets = np.load(Path(directory) / offsets_name, allow_pickle=False)
        if (self.offsets.ndim != 1 or len(self.offsets) == 0 or self.offsets[0] != 0
                or np.any(np.diff(self.offsets.astype(np.int64)) < 0) or int(self.offsets[-1]) != self.path.stat().st_size):
            raise ValueError(f"{self.path}: its offsets do not fit the text")
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def __getitem__(self, row: int) -> str:
        row = int(row)
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} of {len(self)} in {self.path.name}")
        begin, end = int(self.offsets[row]), int(self.offsets[row + 1])
        return os.pread(self._fd, end - begin, begin).decode("utf-8")

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[list[str]]:
        """Every row, in order, `rows` at a time (one read per block)."""
        for first in range(0, len(self), rows):
            last = min(first + rows, len(self))
            begin = int(self.offsets[first])
            data = os.pread(self._fd, int(self.offsets[last]) - begin, begin)
            cuts = (self.offsets[first:last + 1].astype(np.int64) - begin).tolist()
            yield [data[a:b].decode("utf-8") for a, b in zip(cuts[:-1], cuts[1:])]
