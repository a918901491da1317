"""Many index ranges at once: the positions start..end-1 of every range, one array, without a Python loop.

numpy has no vectorised "concatenate these aranges"; both the ranking (each product's passages and
reviews) and BM25 (each document's terms) need it per query, over hundreds to thousands of ranges.
"""
from __future__ import annotations

import numpy as np


def expand(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions of every range [starts[i], ends[i]), range after range, and for each position the
    number i of its range (int64 both)."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(ends, dtype=np.int64) - starts
    owner = np.repeat(np.arange(len(starts)), lengths)
    if owner.size == 0:
        return np.zeros(0, np.int64), owner
    return np.arange(owner.size) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(starts, lengths), owner
