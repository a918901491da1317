"""Read reviews in the Amazon Customer Reviews schema: the 6-column CSV or the original 15-column TSV.

Both may be gzip-compressed (detected from the file's magic bytes, not its name). The result is one
DataFrame with the catalog columns, validated: unique review ids, star ratings 1-5, no missing
required columns. Reviews with an empty body are kept (they yield no sentences later).
"""
from __future__ import annotations

import csv
import gzip
import io
import zlib
from pathlib import Path

import pandas as pd

from knn.errors import ReviewDataError

CATALOG_COLUMNS = [
    "review_id",
    "product_id",
    "product_title",
    "star_rating",
    "review_headline",
    "review_body",
]
REQUIRED_COLUMNS = ["review_id", "product_id", "star_rating", "review_body"]
_GZIP_MAGIC = b"\x1f\x8b"


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise ReviewDataError(
                f"{path}: the gzip data is cut off or corrupt ({exc}); re-create or re-download the file"
            ) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ReviewDataError(
            f"{path}: line {line} is not valid UTF-8 (byte {exc.start}); save the file as UTF-8"
        ) from None


def _parse(text: str, path: Path) -> pd.DataFrame:
    first_line = text.split("\n", 1)[0]
    is_tsv = "\t" in first_line
    try:
        if is_tsv:
            # The original dataset files are unquoted TSV: quotes are part of the text.
            frame = pd.read_csv(
                io.StringIO(text), sep="\t", dtype=str, keep_default_na=False,
                quoting=csv.QUOTE_NONE, on_bad_lines="error",
            )
        else:
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, on_bad_lines="error")
    except pd.errors.EmptyDataError:
        raise ReviewDataError(f"{path}: the file is empty; give a reviews file with a header and rows") from None
    except pd.errors.ParserError as exc:
        hint = ("every line needs the header's number of tab-separated fields (a tab inside a text field splits it)"
                if is_tsv else "put a field that holds a comma, a quote or a line break in double quotes")
        raise ReviewDataError(f"{path}: cannot parse as {'TSV' if is_tsv else 'CSV'}: {str(exc).strip()}; {hint}".replace("\n", " ")) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _validate(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ReviewDataError(
            f"{path}: missing column(s) {', '.join(missing)}; expected the 6-column CSV "
            f"({','.join(CATALOG_COLUMNS)}) or the 15-column Amazon reviews TSV"
        )
    if frame.empty:
        raise ReviewDataError(f"{path}: the file has a header but no reviews")
    for optional in ("product_title", "review_headline"):
        if optional not in frame.columns:
            frame[optional] = ""
    frame = frame[CATALOG_COLUMNS].copy()
    for column in ("review_id", "product_id"):
        frame[column] = frame[column].str.strip()
        empty = frame.index[frame[column] == ""]
        if len(empty):
            raise ReviewDataError(f"{path}: data row {empty[0] + 1} has an empty {column}; every review needs one")
    dup = frame["review_id"].duplicated(keep="first")
    if dup.any():
        row = int(dup.to_numpy().nonzero()[0][0])
        raise ReviewDataError(
            f"{path}: duplicate review_id {frame['review_id'].iloc[row]!r} (data row {row + 1}); review ids must be unique"
        )
    ratings = pd.to_numeric(frame["star_rating"].str.strip(), errors="coerce")
    bad = ratings.isna() | (ratings % 1 != 0) | (ratings < 1) | (ratings > 5)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise ReviewDataError(
            f"{path}: data row {row + 1} (review_id {frame['review_id'].iloc[row]!r}) has star_rating "
            f"{frame['star_rating'].iloc[row]!r}; star ratings must be whole numbers from 1 to 5"
        )
    frame["star_rating"] = ratings.astype("int64")
    return frame.reset_index(drop=True)


def read_reviews(path: str | Path) -> pd.DataFrame:
    """Read and validate a reviews file; return the catalog columns, one row per review."""
    path = Path(path)
    if not path.is_file():
        raise ReviewDataError(f"{path}: no such file; give the path of a reviews CSV/TSV (optionally .gz)")
    return _validate(_parse(_read_text(path), path), path)


def product_titles(catalog: pd.DataFrame, sort: bool = True) -> pd.DataFrame:
    """One row per product: product_id and the product_title of its first review (catalog order);
    sorted by product_id (the order of knn.search's product codes) unless `sort` is False."""
    first = catalog.drop_duplicates("product_id", keep="first")
    titles = pd.DataFrame({"product_id": first["product_id"].astype(str).to_numpy(),
                           "product_title": first["product_title"].fillna("").astype(str).to_numpy()})
    return titles.sort_values("product_id", kind="stable", ignore_index=True) if sort else titles


def find_reviews_file(directory: str | Path) -> Path:
    """The single reviews file in a data directory (what a training channel holds)."""
    directory = Path(directory)
    candidates = sorted(
        p for p in directory.rglob("*")
        if p.is_file() and not p.name.startswith(".")
        and p.name.lower().endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz", ".gz", ".txt"))
    )
    if not candidates:
        raise ReviewDataError(f"{directory}: no reviews file (.csv, .tsv, optionally .gz) in the training data")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates[:5])
        raise ReviewDataError(f"{directory}: {len(candidates)} reviews files ({names}); put exactly one in the channel")
    return candidates[0]
