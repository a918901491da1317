"""Save and load everything search needs as one self-contained directory, verified by a manifest.

Layout:
    manifest.json          format version, encoder id and precision, index kind, vector dtype, counts, sha256 of
                           every file
    encoder/               the sentence encoder's files (a copy of the one that embedded the sentences, float32
                           or int8, so the endpoint embeds queries alike and needs no package)
    catalog.parquet        one row per review (knn.reviews.CATALOG_COLUMNS)
    sentences.parquet      sentence text and the catalog row it came from
    vectors.npy            unit vectors, one row per sentence, float16 ("vector_dtype" in the manifest; knn.index
                           searches float16 rows, computing in float32)
    vector_codes.npy       with a graph or ivf index: the same vectors as int8 codes (an ivf index: in its
                           lists' order, with vector_code_rows.npy and vector_code_positions.npy), and vector_scales.npy their
                           per-dimension scales (knn.quantized_vectors). The graph walks and the ranking read
                           the codes (mapped, so the workers of one machine share one copy); exact scores
                           read float16 rows from vectors.npy without mapping it (mapped when it holds <= 32
                           MiB: resident either way). Without codes (exact
                           search, or model dirs written before them) vectors.npy itself is mapped.
    index/                 the graph or ivf index's files (none for exact search)
    headlines.parquet      the review headlines that are searched (not "Five Stars"-style) and their catalog row
    headline_vectors.npy   unit vectors, one row per headline, in the same dtype (and headline_vector_codes.npy,
                           headline_vector_scales.npy with a graph or ivf index)
    headline_index/        the headlines' graph or ivf index files (none for exact search)
    titles.parquet         one row per product, sorted by product_id: product_id and its title (its first
                           review's product_title)
    title_vectors.npy      unit vectors, one row per title, in the same dtype; held when small (<= 32 MiB),
                           else read a few rows at a time when served (the candidates'), never mapped
    kernels/               with a float16 graph index: numba's compiled walk kernels, installed in a serving
                           process's numba cache before they are first needed (knn.shipped_kernels)
    texts/                 with a graph or ivf index: the text columns that answers show (knn.stored_texts: the
                           catalog's review_id, product_title, review_headline, review_body, each sentence and
                           headline) as UTF-8 plus row offsets, read a row at a time when served; the tables
                           above keep them too, but are then loaded without them
    lexical/               BM25 weights (knn.lexical), .npz + vocabulary JSON: reviews.* (one document
                           per review), passages.* (one per body sentence, then one per headline) and
                           titles.* (one per product); each .npz holds the weights by term (postings
                           heaviest first), by document, and (from 2**20 documents) each common term's
                           postings 4,097-16,384 again by document (the tier copy, knn.lexical)

Model dirs written before headlines and BM25 existed still load: without headlines, and with the BM25
index rebuilt from the catalog; those written before titles load without the title terms (and
`add_serving_files` gives them titles); those written before the encoder precision was recorded are
float32; those without "vector_dtype" store (and serve) float32 vectors.

No pickle of ours: Parquet, .npy/.npz with allow_pickle off, JSON. The one exception is kernels/,
numba's own cache files (pickles and machine code), which reach numba only after their sha256 matched
the manifest, as trusted as the entry point the archive carries. `load_model_dir` checks every
file's size and sha256 against the manifest before reading any of them (the sha256 once per machine
while the files stay unchanged: knn.verified), and refuses files that the
manifest does not list (except `code/`, which SageMaker adds when it repacks a model, and the
`model.tar.gz` that the SDK's local mode leaves beside what it extracted).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from knn import shipped_kernels, verified
from knn.encoder import ENCODER_ID, PRECISIONS, copy_model, encoder_precision, file_sha256, load_encoder, read_settings
from knn.errors import ModelDirError
from knn.index import DEFAULT_VECTOR_DTYPE, VECTOR_DTYPES, VectorIndex, compact_vectors, load_index
from knn.lexical import LexicalIndex, passage_documents, review_documents, title_documents
from knn.lexical import upgrade as upgrade_lexical
from knn.quantized_vectors import FileRows, MappedRows, QuantizedVectors, inverse_order, quantize
from knn.reviews import product_titles
from knn.stored_texts import StoredTexts, write_texts
from knn.stored_texts import files as text_files
from knn.search import Corpus, ProductSearch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Not ours to verify: SageMaker's repack adds code/, and the SDK's local mode leaves the downloaded
# archive beside what it extracted.
IGNORED_TOP_LEVEL = {"code", "model.tar.gz"}
CODED_INDEX_KINDS = ("graph", "ivf")  # indexes of big catalogues: int8 codes and stored texts are written


def save_model_dir(directory: str | Path, corpus: Corpus, index: VectorIndex, encoder_path: str | Path,
                   extra: dict | None = None, headline_index: VectorIndex | None = None,
                   vector_dtype: str = DEFAULT_VECTOR_DTYPE) -> Path:
    """Write the model dir; the manifest is written last, so a half-written dir never verifies.

    `vector_dtype`: how vectors.npy and headline_vectors.npy are stored and then served (float16 halves
    them; knn.index.compact_vectors)."""
    if vector_dtype not in VECTOR_DTYPES:
        raise ValueError(f"vector_dtype must be one of {', '.join(VECTOR_DTYPES)}, got {vector_dtype!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / MANIFEST).exists():
        (directory / MANIFEST).unlink()
    copy_model(encoder_path, directory / "encoder")
    precision = encoder_precision(read_settings(directory / "encoder"))
    corpus.catalog.to_parquet(directory / "catalog.parquet", index=False)
    corpus.sentences.to_parquet(directory / "sentences.parquet", index=False)
    _save_vectors(directory, "", corpus.vectors, vector_dtype, index)
    index.save(directory / "index")
    extra = dict(extra or {})
    counts_extra = {}
    if corpus.headlines is not None and corpus.headline_vectors is not None:
        if headline_index is None:
            raise ValueError("headlines need their index: pass headline_index")
        corpus.headlines.to_parquet(directory / "headlines.parquet", index=False)
        _save_vectors(directory, "headline_", corpus.headline_vectors, vector_dtype, headline_index)
        headline_index.save(directory / "headline_index")
        extra["headline_index_kind"] = headline_index.kind
        counts_extra["headlines"] = int(len(corpus.headlines))
    if corpus.lexical is not None:
        corpus.lexical.save(directory / "lexical", "reviews")
    if corpus.passage_lexical is not None:
        corpus.passage_lexical.save(directory / "lexical", "passages")
    if corpus.titles is not None and corpus.title_vectors is not None and corpus.title_lexical is not None:
        _save_titles(directory, corpus.titles, corpus.title_vectors, corpus.title_lexical, vector_dtype)
        counts_extra["titles"] = int(len(corpus.titles))
    if index.kind in CODED_INDEX_KINDS:  # a big catalogue's layout: its texts are read per row when served
        _save_texts(directory, corpus.catalog, corpus.sentences, corpus.headlines)
    rows = _walked_rows(index.kind, extra.get("headline_index_kind"), vector_dtype,
                       (directory / "vector_codes.npy").is_file())
    if rows:
        shipped_kernels.store(directory, rows)
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative == MANIFEST or relative.split("/")[0] in IGNORED_TOP_LEVEL:
            continue
        files[relative] = _file_entry(path)
    manifest = {
        "format_version": FORMAT_VERSION,
        "encoder_id": ENCODER_ID,
        "encoder_precision": precision,
        "index_kind": index.kind,
        "vector_dtype": vector_dtype,
        "counts": {
            "reviews": int(len(corpus.catalog)),
            "products": int(corpus.catalog["product_id"].nunique()),
            "sentences": int(len(corpus.sentences)),
            "dimensions": int(corpus.vectors.shape[1]),
            **counts_extra,
        },
        "files": files,
        **extra,
    }
    _write_manifest(directory, manifest)
    return directory


def _file_entry(path: Path) -> dict:
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


def _write_manifest(directory: Path, manifest: dict) -> None:
    """Write the manifest whole or not at all (a temporary file, then a rename)."""
    temporary = directory / (MANIFEST + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(temporary, directory / MANIFEST)


def _save_vectors(directory: Path, prefix: str, vectors: np.ndarray, vector_dtype: str, index) -> None:
    """{prefix}vectors.npy; for a float16 graph or inverted file also its int8 codes and their
    per-dimension scales ({prefix}vector_codes.npy, {prefix}vector_scales.npy: what the graph walks, the
    inverted file scans and the ranking reads). An inverted file's codes are stored in its lists' order,
    with {prefix}vector_code_rows.npy (the row of each code) and {prefix}vector_code_positions.npy (the
    position of each row's code)."""
    stored = compact_vectors(vectors, vector_dtype)
    np.save(directory / f"{prefix}vectors.npy", stored, allow_pickle=False)
    if vector_dtype == "float16" and index.kind in CODED_INDEX_KINDS:
        codes, scales = quantize(stored)
        if index.kind == "ivf":
            order = np.asarray(index.rows, dtype=np.int32)
            codes = codes[order]
            np.save(directory / f"{prefix}vector_code_rows.npy", order, allow_pickle=False)
            np.save(directory / f"{prefix}vector_code_positions.npy", inverse_order(order), allow_pickle=False)
        np.save(directory / f"{prefix}vector_codes.npy", codes, allow_pickle=False)
        np.save(directory / f"{prefix}vector_scales.npy", scales, allow_pickle=False)


# Text columns that a graph model stores in texts/ (knn.stored_texts) and serving reads per row; the
# tables keep them too (the tables of record), but a graph model's are loaded without them.
STORED_TEXTS = {"catalog": ("review_id", "product_title", "review_headline", "review_body"),
                "sentences": ("sentence",), "headlines": ("headline",)}


def _save_texts(directory: Path, catalog: pd.DataFrame, sentences: pd.DataFrame,
                headlines: pd.DataFrame | None) -> list[str]:
    written = []
    for table, frame in (("catalog", catalog), ("sentences", sentences), ("headlines", headlines)):
        if frame is None:
            continue
        for column in STORED_TEXTS[table]:
            for path in write_texts(directory / "texts", f"{table}.{column}", frame[column].tolist()):
                written.append(path.relative_to(directory).as_posix())
    return written


def add_serving_files(directory: str | Path, title_vectors: np.ndarray | None = None, threads: int = 1) -> list[str]:
    """Give a model dir written before them the files that a fit now writes for serving: the product
    titles, their vectors and BM25 (every model; the vectors embedded with the model's own encoder/
    unless `title_vectors` gives them, one row per product in product_id order), BM25 indexes saved as
    a fit now saves them (knn.lexical.upgrade: postings heaviest first, a by-document copy, the tier copy), and for a float16
    graph model the int8 codes (knn.quantized_vectors), the stored texts (knn.stored_texts) and the
    walk's compiled kernels (knn.shipped_kernels), so that it is served like a new one. The manifest
    is checked first and rewritten last. Returns the files added (none when there is nothing to add)."""
    directory = Path(directory)
    manifest = verify_model_dir(directory)
    files = manifest["files"]
    added = []
    if "titles.parquet" not in files:
        added += _add_titles(directory, manifest, title_vectors, threads)
    for name in ("reviews", "passages", "titles"):  # BM25 saved before the by-document copy
        if "lexical/" + LexicalIndex.files(name)[0] in files:
            added += [path.relative_to(directory).as_posix() for path in upgrade_lexical(directory / "lexical", name)]
    if manifest_vector_dtype(manifest) != "float16" or manifest.get("index_kind") != "graph":
        prefixes = ()
    else:
        prefixes = (("", manifest.get("index_kind")), ("headline_", manifest.get("headline_index_kind")))
    for prefix, kind in prefixes:
        if kind != "graph" or f"{prefix}vectors.npy" not in files or f"{prefix}vector_codes.npy" in files:
            continue
        codes, scales = quantize(np.load(directory / f"{prefix}vectors.npy", allow_pickle=False, mmap_mode="r"))
        for name, array in (("vector_codes.npy", codes), ("vector_scales.npy", scales)):
            np.save(directory / f"{prefix}{name}", array, allow_pickle=False)
            added.append(f"{prefix}{name}")
    if prefixes and not any(name.startswith("texts/") for name in files):
        headlines = pd.read_parquet(directory / "headlines.parquet") if "headlines.parquet" in files else None
        added += _save_texts(directory, pd.read_parquet(directory / "catalog.parquet"),
                             pd.read_parquet(directory / "sentences.parquet"), headlines)
    rows = _walked_rows(manifest.get("index_kind"), manifest.get("headline_index_kind"), manifest_vector_dtype(manifest),
                       "vector_codes.npy" in files or "vector_codes.npy" in added)
    if rows and not any(name.startswith(shipped_kernels.KERNELS_DIR + "/") for name in files):
        added += shipped_kernels.store(directory, rows)
    for name in added:
        files[name] = _file_entry(directory / name)
    if added:
        _write_manifest(directory, manifest)
    return added


def _add_titles(directory: Path, manifest: dict, title_vectors: np.ndarray | None, threads: int) -> list[str]:
    """Write titles.parquet, title_vectors.npy and lexical/titles.* into a model dir that lacks them."""
    titles = product_titles(pd.read_parquet(directory / "catalog.parquet", columns=["product_id", "product_title"]))
    if title_vectors is None:
        encoder = load_encoder(directory / "encoder", threads=threads, verify=False)  # verified by the caller
        title_vectors = encoder.encode(titles["product_title"].tolist())
    written = _save_titles(directory, titles, title_vectors, LexicalIndex.build(title_documents(titles)),
                           manifest_vector_dtype(manifest))
    manifest.setdefault("counts", {})["titles"] = int(len(titles))
    return written


def _save_titles(directory: Path, titles: pd.DataFrame, title_vectors, title_lexical: LexicalIndex,
                 vector_dtype: str) -> list[str]:
    """Write titles.parquet, title_vectors.npy (as `vector_dtype`) and lexical/titles.*; the files written."""
    if len(title_vectors) != len(titles):
        raise ValueError(f"{len(title_vectors)} title vectors for {len(titles)} titles")
    titles.to_parquet(directory / "titles.parquet", index=False)
    np.save(directory / "title_vectors.npy", compact_vectors(title_vectors, vector_dtype), allow_pickle=False)
    written = title_lexical.save(directory / "lexical", "titles")
    return ["titles.parquet", "title_vectors.npy", *(path.relative_to(directory).as_posix() for path in written)]


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        raise ModelDirError(f"{directory} is not a model dir (no {MANIFEST}); train a model first")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{path} is unreadable ({exc}); rebuild the model") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelDirError(
            f"{path}: model format {manifest.get('format_version') if isinstance(manifest, dict) else '?'} "
            f"is not the supported format {FORMAT_VERSION}; rebuild the model with this version"
        )
    if manifest.get("encoder_id") != ENCODER_ID:
        raise ModelDirError(f"{path}: encoder {manifest.get('encoder_id')!r} is not {ENCODER_ID}; rebuild the model")
    if manifest_precision(manifest) not in PRECISIONS:
        raise ModelDirError(f"{path}: encoder precision {manifest_precision(manifest)!r} is not one of "
                            f"{', '.join(PRECISIONS)}; rebuild the model")
    return manifest


def manifest_precision(manifest: dict) -> str:
    """The encoder precision a manifest records (model dirs written before it was recorded are float32)."""
    return manifest.get("encoder_precision", "float32")


def manifest_vector_dtype(manifest: dict) -> str:
    """The dtype of a model dir's vectors (model dirs written before it was recorded are float32)."""
    return manifest.get("vector_dtype", "float32")


def verify_model_dir(directory: str | Path) -> dict:
    """Check every file against the manifest; return the manifest. Raises ModelDirError naming the file.

    The sha256 of each file is computed once per model dir on a machine: a model dir whose files are
    unchanged since a passed check (knn.verified) is not hashed again, so the workers of one endpoint
    share one check. Sizes, missing files and foreign files are checked every time."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    listed = manifest.get("files") or {}
    for relative, expected in sorted(listed.items()):
        path = directory / relative
        if ".." in Path(relative).parts or not path.is_file():
            raise ModelDirError(f"{directory}: {relative} is missing; the model is incomplete, rebuild or re-download it")
        size = path.stat().st_size
        if size != expected.get("bytes"):
            raise ModelDirError(
                f"{directory}: {relative} has {size} bytes, the manifest says {expected.get('bytes')} "
                "(truncated or replaced); rebuild or re-download the model"
            )
    for path in directory.rglob("*"):
        relative = path.relative_to(directory).as_posix()
        if (path.is_file() and relative not in listed and relative != MANIFEST
                and relative.split("/")[0] not in IGNORED_TOP_LEVEL):
            raise ModelDirError(f"{directory}: {relative} is not part of the model (not in the manifest); remove it or rebuild")
    with verified.checking(directory, (directory / MANIFEST).read_bytes(), list(listed)) as already:
        if already:
            log.info("%s: files unchanged since their sha256 check on this machine; not hashed again", directory)
            return manifest
        started = time.perf_counter()
        for relative, expected in sorted(listed.items()):
            if file_sha256(directory / relative) != expected.get("sha256"):
                raise ModelDirError(f"{directory}: {relative} does not match its sha256 in the manifest (tampered or corrupt); rebuild the model")
        log.info("%s: %d files checked against the manifest's sha256 in %.1f s", directory, len(listed),
                 time.perf_counter() - started)
    return manifest


# Float16 rows files up to this size are mapped (toys-10k's sentences: 21 MB); a random read of a mapped
# file makes it wholly resident here, so bigger ones are read a run of rows at a time (FileRows). Mapped,
# the graph's re-scoring of its candidates took ~0.7 ms less a query on toys-10k (p50 9.6 vs 10.3 ms).
VECTOR_ROWS_MAPPED_BYTES = 32 * 2 ** 20


def _load_vectors(directory: Path, prefix: str, vector_dtype: str, listed: dict):
    """A model's vectors as they are served.

    With int8 codes (float16 graph and inverted-file models): QuantizedVectors, the codes mapped read-only and the float16
    rows read from their file when asked for (knn.quantized_vectors), never mapped, unless the file holds
    at most VECTOR_ROWS_MAPPED_BYTES (then mapped too: resident either way). Other float16 vectors
    (exact search, or model dirs written before the codes) are mapped read-only from the file. Either
    way every worker that serves the same model dir (the endpoint's, on one machine) reads the same
    page-cache pages, one copy in all. float32 vectors (model dirs written before) are read as before:
    pynndescent searches them."""
    path = directory / f"{prefix}vectors.npy"
    if vector_dtype == "float16" and f"{prefix}vector_codes.npy" in listed:
        codes = np.asarray(np.load(directory / f"{prefix}vector_codes.npy", allow_pickle=False, mmap_mode="r"))
        rows = MappedRows(path) if path.stat().st_size <= VECTOR_ROWS_MAPPED_BYTES else FileRows(path)
        scales = np.load(directory / f"{prefix}vector_scales.npy", allow_pickle=False)
        if f"{prefix}vector_code_rows.npy" in listed:  # stored in an inverted file's order
            code_rows, positions = (np.asarray(np.load(directory / f"{prefix}vector_code_{name}.npy",
                                                       allow_pickle=False, mmap_mode="r"))
                                    for name in ("rows", "positions"))
            return QuantizedVectors(codes, scales, rows, code_rows, positions)
        return QuantizedVectors(codes, scales, rows)
    if vector_dtype == "float16":
        return np.asarray(np.load(path, allow_pickle=False, mmap_mode="r"))
    return np.load(path, allow_pickle=False)


def _stored_texts(directory: Path, listed: dict) -> dict[str, StoredTexts]:
    """The model dir's stored text columns (graph models), by "table.column"; {} when it has none."""
    texts = {}
    for table, columns in STORED_TEXTS.items():
        for column in columns:
            name = f"{table}.{column}"
            if all(f"texts/{f}" in listed for f in text_files(name)):
                try:
                    texts[name] = StoredTexts(directory / "texts", name)
                except (OSError, ValueError) as exc:
                    raise ModelDirError(f"{directory}: cannot read the stored texts {name} ({exc}); "
                                        "rebuild the model") from None
    return texts


def _read_table(directory: Path, table: str, texts: dict[str, StoredTexts]) -> pd.DataFrame:
    """A table, without the columns that are stored texts (those are read per row when shown)."""
    path = directory / f"{table}.parquet"
    stored = {name.split(".", 1)[1] for name in texts if name.startswith(table + ".")}
    if not stored:
        return pd.read_parquet(path)
    import pyarrow.parquet as pq

    columns = [name for name in pq.read_schema(path).names if name not in stored]
    frame = pd.read_parquet(path, columns=columns)
    for column in stored:
        if len(texts[f"{table}.{column}"]) != len(frame):
            raise ModelDirError(f"{directory}: {len(texts[f'{table}.{column}'])} stored {column} texts for "
                                f"{len(frame)} rows of {table}; rebuild the model")
    return frame


def _hand_back_freed_memory() -> None:
    """Return to the system what loading freed but the allocators keep: Arrow's pool (the tables' read
    buffers) and glibc's heap (malloc_trim). At 1M sentences a worker then holds 63 MB less (672 -> 609
    MB anonymous after load, measured); the workers of one endpoint each pay it. A no-op where glibc is
    not the C library."""
    import ctypes
    import ctypes.util

    try:
        import pyarrow

        pyarrow.default_memory_pool().release_unused()
    except Exception as exc:  # an Arrow without release_unused: keep what it keeps
        log.debug("arrow pool not released: %s", exc)
    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        trim = None
    if trim is not None:
        trim(0)


def _walked_rows(index_kind: str | None, headline_index_kind: str | None, vector_dtype: str,
                has_codes: bool) -> str | None:
    """What the numba graph walk reads in a model dir: "int8" codes (when it has vector_codes.npy),
    "float16" bits, or None for a model that no float16 graph searches (nothing is compiled)."""
    if "graph" not in (index_kind, headline_index_kind) or vector_dtype != "float16":
        return None
    return "int8" if has_codes else "float16"


def _compile_graph_walk_meanwhile(directory: Path) -> None:
    """A model searched by float16 graph walks: their numba kernels compile (or load from numba's cache,
    where the kernels the fit shipped in kernels/ are installed first: knn.shipped_kernels) on a thread
    of their own while this process checks and loads the files (knn.float16_graph). Anything wrong
    with the manifest is left for verify_model_dir to report."""
    try:
        manifest = read_manifest(directory)
    except ModelDirError:
        return
    files = manifest.get("files") or {}
    rows = _walked_rows(manifest.get("index_kind"), manifest.get("headline_index_kind"), manifest_vector_dtype(manifest),
                       "vector_codes.npy" in files)
    if rows:
        from knn.float16_graph import compile_in_background

        shipped_kernels.install(directory, files)
        compile_in_background(rows)


# Title vectors up to this size are held in memory (toys-10k: 6.6 MB); bigger ones are read a row at a
# time (FileRows), which costs ~0.7 ms a query against ~0.2 ms held, but nothing resident at 1M (243 MB).
TITLE_VECTORS_HELD_BYTES = 32 * 2 ** 20


def _load_titles(directory: Path, listed: dict, vector_dtype: str, products: int):
    """The title vectors (held, or FileRows when big: rows read when asked for) and the titles' BM25,
    one row per product in product_id order (titles.parquet itself is not read: the answers take
    titles from the catalog); two Nones for model dirs written before titles."""
    if "titles.parquet" not in listed:
        log.info("%s has no product titles (built by an older version); rebuild it for the title ranking", directory)
        return None, None
    try:
        vectors = FileRows(directory / "title_vectors.npy")
        if vectors.shape[0] * vectors.shape[1] * vectors.dtype.itemsize <= TITLE_VECTORS_HELD_BYTES:
            vectors = np.load(directory / "title_vectors.npy", allow_pickle=False)
        lexical = LexicalIndex.load(directory / "lexical", "titles", products)
    except Exception as exc:  # a verified file that still fails to parse was written wrongly
        raise ModelDirError(f"{directory}: cannot read the product titles ({exc}); rebuild the model") from None
    if len(vectors) != products or vectors.dtype != np.dtype(vector_dtype):
        raise ModelDirError(f"{directory}: title_vectors.npy holds {len(vectors)} {vectors.dtype} rows for {products} "
                            f"products ({vector_dtype} expected); rebuild the model")
    return vectors, lexical


def load_model_dir(directory: str | Path, threads: int = 1) -> ProductSearch:
    """Verify, then load a model dir into a ready ProductSearch."""
    directory = Path(directory)
    _compile_graph_walk_meanwhile(directory)
    manifest = verify_model_dir(directory)
    vector_dtype = manifest_vector_dtype(manifest)
    listed = manifest.get("files") or {}
    texts = _stored_texts(directory, listed)
    try:
        catalog = _read_table(directory, "catalog", texts)
        sentences = _read_table(directory, "sentences", texts)
        vectors = _load_vectors(directory, "", vector_dtype, listed)
    except Exception as exc:  # a verified file that still fails to parse was written wrongly
        raise ModelDirError(f"{directory}: cannot read the model's data ({exc}); rebuild the model") from None
    if len(vectors) != len(sentences):
        raise ModelDirError(f"{directory}: {len(vectors)} vectors for {len(sentences)} sentences; rebuild the model")
    if vector_dtype not in VECTOR_DTYPES or vectors.dtype != np.dtype(vector_dtype):
        raise ModelDirError(f"{directory}: vectors.npy is {vectors.dtype}, the manifest says {vector_dtype}; "
                            "rebuild the model")
    # The graphs first: their loading is the peak of this function's memory, lower before the tables.
    index = load_index(manifest["index_kind"], directory / "index", vectors)
    headlines = headline_vectors = headline_index = None
    if "headlines.parquet" in listed:
        try:
            headlines = _read_table(directory, "headlines", texts)
            headline_vectors = _load_vectors(directory, "headline_", vector_dtype, listed)
        except Exception as exc:
            raise ModelDirError(f"{directory}: cannot read the model's headlines ({exc}); rebuild the model") from None
        if headline_vectors.dtype != vectors.dtype:
            raise ModelDirError(f"{directory}: headline_vectors.npy is {headline_vectors.dtype}, the manifest says "
                                f"{vector_dtype}; rebuild the model")
        if len(headline_vectors) != len(headlines):
            raise ModelDirError(f"{directory}: {len(headline_vectors)} vectors for {len(headlines)} headlines; rebuild the model")
        headline_index = load_index(manifest.get("headline_index_kind", "exact"), directory / "headline_index",
                                    headline_vectors)
    else:
        log.warning("%s has no headlines (built by an older version); rebuild it for the tuned ranking", directory)
    n_passages = len(sentences) + (len(headlines) if headlines is not None else 0)
    lexical = {}
    for name, n_documents, documents in (("reviews", len(catalog), lambda: review_documents(catalog)),
                                         ("passages", n_passages, lambda: passage_documents(sentences, headlines))):
        if "lexical/" + LexicalIndex.files(name)[0] in listed:
            lexical[name] = LexicalIndex.load(directory / "lexical", name, n_documents)
        elif texts:
            raise ModelDirError(f"{directory}: the BM25 index of {name} is missing; rebuild the model")
        else:
            log.info("%s has no BM25 index of %s (built by an older version); building it", directory, name)
            lexical[name] = LexicalIndex.build(documents())
    title_vectors, title_lexical = _load_titles(directory, listed, vector_dtype, int(catalog["product_id"].nunique()))
    encoder = load_encoder(directory / "encoder", threads=threads, verify=False)  # verified above
    if encoder.precision != manifest_precision(manifest):
        raise ModelDirError(f"{directory}: the manifest says the sentences were embedded at {manifest_precision(manifest)} "
                            f"but encoder/ is {encoder.precision}; rebuild the model")
    log.info("model loaded from %s: %s", directory, manifest["counts"])
    corpus = Corpus(catalog, sentences, vectors, headlines, headline_vectors, lexical["reviews"], lexical["passages"],
                    texts or None, title_vectors=title_vectors, title_lexical=title_lexical)
    search = ProductSearch(encoder, index, corpus, headline_index=headline_index)
    _hand_back_freed_memory()
    return search
