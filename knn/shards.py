"""The two-step fit for big catalogues: reviews split into part files, each part embedded on its own
("embed", a processing job on N instances), then every part's sentences and vectors joined into one
model dir ("index", the training job on one instance).

    split_reviews_file(reviews, parts_dir, parts)   # part-00000-of-00004.csv ... (the launcher)
    embed_part(part, out_dir, encoder)              # out_dir/part-00000-of-00004/  (a shard)
    build_model_dir_from_shards(shards_dir, model)  # the one model dir

A shard (one directory per part) holds what `knn.build.build_corpus` computes for that part (split by the
same `knn.build.sentence_tables`):

    catalog.parquet        the part's reviews (knn.reviews.CATALOG_COLUMNS), validated
    sentences.parquet      sentence, review_row (row within the part)
    vectors.npy            float32, one row per sentence
    headlines.parquet      headline, review_row (row within the part)
    headline_vectors.npy   float32, one row per headline
    titles.parquet         product_id, product_title: one row per product of the part (its first review's title)
    title_vectors.npy      float32, one row per title
    shard.json             written last: part name, index, count, row counts, encoder

The index step takes the shards in part order and shifts each part's review rows by the reviews of
the parts before it, so the joined catalog, sentences and headlines are row for row those of a
one-step fit of the whole file (a product's title is its first part's, as a one-step fit takes its first
review's); BM25 and the vector indexes are then built exactly as there. A shard
without its `shard.json`, a part missing from the set, or a part counted twice fails the index step
naming the part (no partial output looks complete).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from knn.errors import ReviewDataError
from knn.reviews import _validate, product_titles, read_reviews

log = logging.getLogger(__name__)

SHARD_FILE = "shard.json"
PART_NAME = re.compile(r"^part-(\d{5})-of-(\d{5})$")
SHARD_FORMAT = 1


class ShardError(ReviewDataError):
    """The embed step's output is incomplete or inconsistent."""


def part_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}"


def _records(path: Path) -> tuple[str, list[str], bool]:
    """The header line and the raw records of a reviews file (quoted CSV fields may span lines)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig")
    header, _, body = text.partition("\n")
    is_tsv = "\t" in header
    if is_tsv:  # unquoted TSV: one record per line
        return header, [line for line in body.split("\n") if line.strip()], True
    records = []
    for row in csv.reader(io.StringIO(body)):
        if not row or row == [""]:
            continue
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow(row)
        records.append(buffer.getvalue())
    return header, records, False


def split_reviews_file(reviews_path: str | Path, out_dir: str | Path, parts: int) -> list[Path]:
    """Split a reviews file (CSV/TSV, optionally gzip) into `parts` files of consecutive reviews.

    Each part keeps the header and the format (CSV stays CSV, TSV stays TSV). Rows are not
    validated here: the embed step does that, naming the part, row and column. With fewer reviews
    than parts, the last parts hold only the header (a host given one embeds nothing)."""
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    path = Path(reviews_path)
    header, records, is_tsv = _records(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".tsv" if is_tsv else ".csv"
    bounds = np.linspace(0, len(records), parts + 1).round().astype(int)
    written = []
    for index in range(parts):
        target = out / (part_name(index, parts) + suffix)
        chunk = records[bounds[index]:bounds[index + 1]]
        target.write_text(header.rstrip("\r") + "\n" + "".join(r + "\n" for r in chunk), encoding="utf-8")
        written.append(target)
    return written


def _part_parts(part: Path) -> tuple[int, int]:
    stem = part.name.split(".")[0]
    match = PART_NAME.match(stem)
    if not match:
        raise ShardError(f"{part.name}: a part file is named part-NNNNN-of-NNNNN.csv (or .tsv, .gz); "
                         "split the reviews with knn.shards.split_reviews_file")
    return int(match.group(1)), int(match.group(2))


def _read_part(part: Path) -> pd.DataFrame:
    """A part's reviews, validated; a part with a header only is an empty catalog."""
    try:
        return read_reviews(part)
    except ReviewDataError as exc:
        if "has a header but no reviews" not in str(exc):
            raise
    frame = pd.read_csv(part, sep="\t" if part.suffix == ".tsv" else ",", dtype=str, keep_default_na=False, nrows=0)
    frame.columns = [str(c).strip() for c in frame.columns]
    for column in ("review_id", "product_id", "product_title", "star_rating", "review_headline", "review_body"):
        if column not in frame.columns:
            frame[column] = pd.Series(dtype=object)
    frame = frame[["review_id", "product_id", "product_title", "star_rating", "review_headline", "review_body"]]
    return frame.astype({"star_rating": "int64"})


def embed_part(part: str | Path, out_dir: str | Path, encoder, batch_size: int = 64) -> dict:
    """Split and embed one part file into `out_dir/<part name>/`; returns the shard's figures."""
    part = Path(part)
    index, count = _part_parts(part)
    start = time.perf_counter()
    catalog = _read_part(part)
    from knn.build import sentence_tables

    table, headline_table = sentence_tables(catalog)
    titles = product_titles(catalog, sort=False)
    mark = time.perf_counter()
    vectors = encoder.encode(table["sentence"].tolist(), batch_size=batch_size)
    headline_vectors = encoder.encode(headline_table["headline"].tolist(), batch_size=batch_size)
    title_vectors = encoder.encode(titles["product_title"].tolist(), batch_size=batch_size)
    embed_s = time.perf_counter() - mark
    shard = Path(out_dir) / part_name(index, count)
    shard.mkdir(parents=True, exist_ok=True)
    catalog.to_parquet(shard / "catalog.parquet", index=False)
    table.to_parquet(shard / "sentences.parquet", index=False)
    np.save(shard / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    headline_table.to_parquet(shard / "headlines.parquet", index=False)
    np.save(shard / "headline_vectors.npy", np.ascontiguousarray(headline_vectors, dtype=np.float32), allow_pickle=False)
    titles.to_parquet(shard / "titles.parquet", index=False)
    np.save(shard / "title_vectors.npy", np.ascontiguousarray(title_vectors, dtype=np.float32), allow_pickle=False)
    figures = {"format": SHARD_FORMAT, "part": part.name, "index": index, "count": count,
               "reviews": len(catalog), "sentences": len(table), "headlines": len(headline_table),
               "titles": len(titles),
               "precision": getattr(encoder, "precision", "float32"), "embed_s": round(embed_s, 3),
               "total_s": round(time.perf_counter() - start, 3),
               "sentences_per_s": round(len(table) / embed_s, 1) if embed_s > 0 and len(table) else None}
    (shard / SHARD_FILE).write_text(json.dumps(figures, indent=1))  # last: the shard is complete
    return figures


def find_shards(directory: str | Path) -> list[tuple[dict, Path]]:
    """Every complete shard under `directory`, in part order; fails naming a missing or extra part."""
    directory = Path(directory)
    found: dict[int, tuple[dict, Path]] = {}
    counts = set()
    incomplete = []
    for candidate in sorted(p for p in directory.rglob("part-*") if p.is_dir()):
        if not PART_NAME.match(candidate.name):
            continue
        info_path = candidate / SHARD_FILE
        if not info_path.is_file():
            incomplete.append(candidate.name)
            continue
        info = json.loads(info_path.read_text())
        if info["index"] in found:
            raise ShardError(f"{directory}: part {candidate.name} appears twice in the embed step's output")
        found[info["index"]] = (info, candidate)
        counts.add(info["count"])
    if incomplete:
        raise ShardError(f"{directory}: shard(s) {', '.join(incomplete)} have no {SHARD_FILE}: the embed step did not "
                         "finish them; run the embed step again")
    if not found:
        raise ShardError(f"{directory}: no embedded parts (part-NNNNN-of-NNNNN/{SHARD_FILE}); give the embed step's "
                         "output as the training channel")
    if len(counts) != 1:
        raise ShardError(f"{directory}: parts of different splits ({sorted(counts)} parts) are mixed; embed one split")
    count = counts.pop()
    missing = [part_name(i, count) for i in range(count) if i not in found]
    if missing:
        raise ShardError(f"{directory}: part(s) {', '.join(missing[:10])} of {count} are missing from the embed step's "
                         "output; run the embed step again")
    precisions = {info.get("precision", "float32") for info, _ in found.values()}
    if len(precisions) > 1:
        raise ShardError(f"{directory}: parts were embedded at different precisions ({sorted(precisions)})")
    return [found[i] for i in range(count)]


def read_shards(directory: str | Path):
    """The joined catalog, sentences, vectors, headlines and headline vectors of every shard, in part
    order, then the product titles and their vectors (None when a shard predates titles) and the shards."""
    shards = find_shards(directory)
    catalogs, tables, vectors, headline_tables, headline_vectors = [], [], [], [], []
    title_tables, title_vectors = [], []
    offset = 0
    for info, path in shards:
        catalog = pd.read_parquet(path / "catalog.parquet")
        table = pd.read_parquet(path / "sentences.parquet")
        headlines = pd.read_parquet(path / "headlines.parquet")
        if len(catalog) != info["reviews"] or len(table) != info["sentences"] or len(headlines) != info["headlines"]:
            raise ShardError(f"{path.name}: its files do not match its {SHARD_FILE}; run the embed step again")
        table["review_row"] = table["review_row"].astype("int64") + offset
        headlines["review_row"] = headlines["review_row"].astype("int64") + offset
        offset += len(catalog)
        catalogs.append(catalog)
        tables.append(table)
        headline_tables.append(headlines)
        vectors.append(np.load(path / "vectors.npy", allow_pickle=False))
        headline_vectors.append(np.load(path / "headline_vectors.npy", allow_pickle=False))
        if (path / "titles.parquet").is_file() and (path / "title_vectors.npy").is_file():
            title_tables.append(pd.read_parquet(path / "titles.parquet"))
            title_vectors.append(np.load(path / "title_vectors.npy", allow_pickle=False))
            if len(title_tables[-1]) != len(title_vectors[-1]):
                raise ShardError(f"{path.name}: its titles and title vectors differ in length; run the embed step again")
    catalog = pd.concat(catalogs, ignore_index=True)
    catalog["star_rating"] = catalog["star_rating"].astype("str")
    catalog = _validate(catalog, Path(directory))  # across parts: review ids stay unique
    dims = {v.shape[1] for v in vectors + headline_vectors if v.ndim == 2 and len(v)}
    dim = dims.pop() if dims else 384
    join = lambda arrays: np.ascontiguousarray(  # noqa: E731
        np.concatenate([a.reshape(-1, dim) for a in arrays]) if arrays else np.zeros((0, dim)), dtype=np.float32)
    titles = joined_title_vectors = None
    if shards and len(title_tables) == len(shards):
        # A product in several parts: its first part's row, as a one-step fit takes its first review's title.
        titles = pd.concat(title_tables, ignore_index=True)
        titles["product_id"] = titles["product_id"].astype(str)
        first = ~titles["product_id"].duplicated(keep="first").to_numpy()
        order = np.flatnonzero(first)[np.argsort(titles["product_id"].to_numpy()[first], kind="stable")]
        titles = titles.iloc[order].reset_index(drop=True)
        joined_title_vectors = join(title_vectors)[order]
    elif title_tables:
        log.warning("some shards have no product titles (embedded by an older version): the model gets none")
    return (catalog, pd.concat(tables, ignore_index=True), join(vectors),
            pd.concat(headline_tables, ignore_index=True), join(headline_vectors), titles, joined_title_vectors, shards)


def encoder_path(precision: str = "float32") -> Path:
    """The encoder both steps use: built once per machine at `precision`, then cached."""
    from knn.encoder_export import encoder_model_path

    return Path(encoder_model_path(precision))


def build_model_dir_from_shards(shards_dir: str | Path, model_dir: str | Path, encoder: str | Path | None = None,
                                index_kind: str = "auto", n_neighbors: int | None = None) -> dict:
    """The index step: join the shards, build BM25 and the vector indexes, write the model dir.

    `encoder`: the encoder dir the model dir keeps for serving; default: the one the parts were
    embedded with (its precision is in every shard.json)."""
    from knn.build import build_passage_indexes, corpus_with_lexical, graph_epsilons
    from knn.model_dir import save_model_dir

    start = time.perf_counter()
    catalog, table, vectors, headline_table, headline_vectors, titles, title_vectors, shards = read_shards(shards_dir)
    read_s = time.perf_counter() - start
    precision = shards[0][0].get("precision", "float32")
    encoder = Path(encoder) if encoder is not None else encoder_path(precision)
    log.info("joined %d part(s): %d reviews, %d sentences, %d headlines", len(shards), len(catalog), len(table),
             len(headline_table))
    corpus = corpus_with_lexical(catalog, table, vectors, headline_table, headline_vectors, titles, title_vectors)
    mark = time.perf_counter()
    index, headline_index = build_passage_indexes(corpus, index_kind, n_neighbors)
    index_s = time.perf_counter() - mark
    save_model_dir(model_dir, corpus, index, encoder, headline_index=headline_index)
    return {"parts": len(shards), "reviews": len(catalog), "sentences": len(table), "headlines": len(headline_table),
            "index_kind": index.kind, "read_s": read_s, "index_s": index_s, "total_s": time.perf_counter() - start,
            "precision": precision, **graph_epsilons(index, headline_index)}
