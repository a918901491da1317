"""Scale benchmark (issue "Performance", item 7): a serving model at 1M sentences, its peak RSS and latency.

Run:  .venv/bin/python bench/scale_bench.py            (1M sentences; --sentences N for other sizes)

What it does:
1. Build (cached under --work-dir, default ~/.cache/review-search/bench/scale-<N>-<kind>/model; skipped when the
   model dir is already there, --rebuild forces it), in a child process: texts are the toys-10k reviews
   (catalog, body sentences, kept headlines, as knn.build makes them) tiled until there are N sentences
   (review and product ids suffixed per copy), or synthetic word soup when the toys-10k reviews are
   absent; vectors are synthetic clustered unit vectors (bench/knn_bench.py `clustered_unit_vectors`,
   calibrated on the real toys-10k MiniLM vectors, drawn as float16 a block at a time) for sentences,
   headlines and titles; then the product's own code builds the indexes as a fit does
   (knn.build.build_passage_indexes with --index-kind, default auto: a graph below 1M passages, an
   inverted file from 1M; each calibrated on the other kind of passage), BM25 (knn.lexical) and writes the model dir
   (knn.model_dir.save_model_dir, encoder copied from the cached ONNX export).
2. Serve, in a fresh child process, the way the endpoint does: knn.model_dir.load_model_dir (sha256
   verification included), then >= 1000 queries through ProductSearch.search_vectors with precomputed
   query vectors (held-out draws from the same generator) and, as query text for BM25, corpus sentences
   (whole review sentences: 10-20 words, most of them common ones), then the same vectors with the
   92 shopper queries of bench/eval's toys sets as text (3-20 words, what the product is searched with).
   The encoder is timed separately (ProductSearch.encoder.encode of one sentence), not in the search
   latency. Peak RSS: ru_maxrss and /proc/self/status VmHWM, after load and after the queries, plus what
   the big arrays and tables hold.
3. With --recall, in one more fresh process: recall@10 of the served index (the graph walked, or the
   inverted file's lists scanned, over the int8 codes, the candidates re-scored from the float16 rows;
   knn.quantized_vectors) against exact float32 search over the build's own vectors, regenerated from
   their seed: the top 10
   of the k=64 a search asks the index for (the target line), and of index.query(k=10).
Prints a table and the target lines ("target: ... measured: ... PASS / FALLS SHORT", via bench/common.py); writes --out
(default bench/results/scale.json).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from common import report as write_report, target  # noqa: E402
from knn_bench import clustered_unit_vectors, percentiles  # noqa: E402

TOYS_REVIEWS = ROOT.parent / "shared" / "data" / "toys-10k" / "reviews.csv"
DEFAULT_WORK_DIR = Path.home() / ".cache" / "review-search" / "bench"
TARGET_RSS_GB = 1.5  # issue 14, 1M sentences in one worker, read as 10^9 bytes (GiB are printed too)
BIG_SENTENCES = 5_000_000  # issue 14's second size: built in <= 30 min, served in <= 6 GB
TARGET_BIG_RSS_GB = 6.0
TARGET_BIG_BUILD_S = 30 * 60
TARGET_P99_MS = 30.0
TARGET_WORKERS_GB = 2.0  # issue 14, 1M sentences, 2 workers, in all
TARGET_RECALL = 0.99  # issue 14, recall@10 of the served index against exact float32 search, 1M


def memory_now() -> dict:
    """Current and peak resident memory of this process, in bytes."""
    status = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                status[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    try:  # proportional set size: pages shared with other processes count once in all
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "Pss":
                status["Pss"] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return {"pss_bytes": status.get("Pss"), "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "vm_rss_bytes": status.get("VmRSS"), "vm_hwm_bytes": status.get("VmHWM"),
            "rss_anon_bytes": status.get("RssAnon"), "rss_file_bytes": status.get("RssFile")}


# --- texts -------------------------------------------------------------------------------------------
def _synthetic_texts(n_reviews: int, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(5000)])
    zipf = 1.0 / np.arange(1, len(words) + 1)
    zipf /= zipf.sum()
    bodies, heads, sentences, owners = [], [], [], []
    for row in range(n_reviews):
        parts = [" ".join(rng.choice(words, rng.integers(4, 16), p=zipf)).capitalize() + "."
                 for _ in range(rng.integers(1, 5))]
        bodies.append(" ".join(parts))
        heads.append(" ".join(rng.choice(words, 3, p=zipf)))
        sentences.extend(parts)
        owners.extend([row] * len(parts))
    catalog = pd.DataFrame({"review_id": [f"R{i}" for i in range(n_reviews)],
                            "product_id": [f"P{i // 2}" for i in range(n_reviews)],
                            "product_title": [f"Product {i // 2}" for i in range(n_reviews)],
                            "star_rating": rng.integers(1, 6, n_reviews), "review_headline": heads,
                            "review_body": bodies})
    table = pd.DataFrame({"sentence": pd.Series(sentences, dtype=object), "review_row": np.asarray(owners, np.int64)})
    headlines = pd.DataFrame({"headline": pd.Series(heads, dtype=object), "review_row": np.arange(n_reviews, dtype=np.int64)})
    return catalog, table, headlines


def _toys_texts(path: Path):
    """Catalog, body sentences and kept headlines of a reviews file, exactly as knn.build.build_corpus makes them."""
    from knn.build import sentence_tables
    from knn.reviews import read_reviews

    catalog = read_reviews(path)
    return (catalog, *sentence_tables(catalog))


def tiled_texts(n_sentences: int, source: str | None):
    """Catalog, sentences and headlines with exactly `n_sentences` body sentences (whole reviews, last one cut)."""
    import pandas as pd

    if source == "synthetic" or (source is None and not TOYS_REVIEWS.is_file()):
        catalog, table, headlines = _synthetic_texts(max(10, n_sentences // 2 + 1))
        origin = "synthetic word soup"
    else:
        path = Path(source) if source else TOYS_REVIEWS
        catalog, table, headlines = _toys_texts(path)
        origin = str(path)
    copies = -(-n_sentences // len(table))
    catalogs, tables, heads = [], [], []
    for copy in range(copies):
        part = catalog.copy()
        part["review_id"] = part["review_id"].astype(str) + f"-{copy}"
        part["product_id"] = part["product_id"].astype(str) + f"-{copy}"
        catalogs.append(part)
        tables.append(table.assign(review_row=table["review_row"] + copy * len(catalog)))
        heads.append(headlines.assign(review_row=headlines["review_row"] + copy * len(catalog)))
    table = pd.concat(tables, ignore_index=True).iloc[:n_sentences]
    n_reviews = int(table["review_row"].iloc[-1]) + 1
    catalog = pd.concat(catalogs, ignore_index=True).iloc[:n_reviews].reset_index(drop=True)
    headlines = pd.concat(heads, ignore_index=True)
    headlines = headlines[headlines["review_row"] < n_reviews].reset_index(drop=True)
    return catalog, table.reset_index(drop=True), headlines, origin


# --- build (child process) ---------------------------------------------------------------------------
def synthetic_title_vectors(n_products: int):
    """The products' title vectors, synthetic like the passages' (a seed of their own)."""
    return clustered_unit_vectors(n_products, seed=3)


def float16_vectors(n: int, seed: int, progress: bool = False, block: int = 500_000):
    """clustered_unit_vectors(n, seed) as the float16 rows a model dir stores (knn.index.compact_vectors),
    drawn a block at a time: at 5M sentences the float32 stream alone would be 7.7 GB. The same rows as
    compacting the whole stream at once."""
    from knn.index import compact_vectors

    out = np.empty((n, 384), np.float16)
    blocks = range(0, n, block)
    if progress:
        from tqdm import tqdm

        blocks = tqdm(blocks, desc="vectors", unit="block", mininterval=2)
    for begin in blocks:
        out[begin:begin + block] = compact_vectors(clustered_unit_vectors(min(block, n - begin), seed=seed, skip=begin))
    return out


def build(model_dir: Path, n_sentences: int, texts: str | None, index_kind: str, encoder: str | None) -> dict:
    from tqdm import tqdm

    from knn.build import build_passage_indexes, corpus_with_lexical
    from knn.model_dir import save_model_dir
    from knn.reviews import product_titles

    timings = {}
    steps = tqdm(total=6, desc="build", unit="step")

    def step(name, started):
        timings[name] = round(time.perf_counter() - started, 2)
        steps.set_postfix_str(f"{name} {timings[name]:.0f}s")
        steps.update()

    mark = time.perf_counter()
    catalog, table, headlines, origin = tiled_texts(n_sentences, texts)
    step("texts_s", mark)
    mark = time.perf_counter()
    vectors = float16_vectors(len(table), seed=1, progress=True)
    headline_vectors = float16_vectors(len(headlines), seed=2)
    titles = product_titles(catalog)
    title_vectors = float16_vectors(len(titles), seed=3)
    step("vectors_s", mark)
    mark = time.perf_counter()
    corpus = corpus_with_lexical(catalog, table, vectors, headlines, headline_vectors, titles, title_vectors)
    step("bm25_s", mark)
    mark = time.perf_counter()
    index, headline_index = build_passage_indexes(corpus, index_kind)  # each graph's epsilon calibrated, as a fit does
    step("indexes_s", mark)
    mark = time.perf_counter()
    if encoder is None:
        from knn.encoder_export import onnx_model_path

        encoder = onnx_model_path()
    save_model_dir(model_dir, corpus, index, encoder, headline_index=headline_index,
                   extra={"bench": "scale_bench synthetic vectors"})
    step("save_s", mark)
    steps.update()
    steps.close()
    return {"texts_from": origin, "sentences": len(table), "reviews": len(catalog),
            "products": int(catalog["product_id"].nunique()), "headlines": len(headlines),
            "index_kind": index.kind, "headline_index_kind": headline_index.kind, "timings": timings,
            "calibration": {name: getattr(graph, "calibration", None) for name, graph in
                            (("sentences", index), ("headlines", headline_index))},
            "build_memory": memory_now()}


# --- serve (fresh child process) ---------------------------------------------------------------------
def _table_bytes(frame) -> int:
    return int(frame.memory_usage(deep=True).sum()) if frame is not None else 0


def _array_bytes(array) -> int:
    if array is None:
        return 0
    if hasattr(array, "codes"):  # knn.quantized_vectors.QuantizedVectors: the int8 codes are what it holds
        return int(array.codes.nbytes + array.scales.nbytes)
    if hasattr(array, "data") and hasattr(array, "indices"):  # scipy sparse
        return int(array.data.nbytes + array.indices.nbytes + array.indptr.nbytes)
    return int(array.nbytes)


def holdings(search) -> dict:
    """What the big objects of a loaded ProductSearch hold (bytes), and whether graphs copy the vectors."""
    corpus = search.corpus
    out = {"vectors": _array_bytes(corpus.vectors), "headline_vectors": _array_bytes(corpus.headline_vectors),
           "catalog": _table_bytes(corpus.catalog), "sentences": _table_bytes(corpus.sentences),
           "headlines": _table_bytes(corpus.headlines),
           "bm25_reviews": _array_bytes(corpus.lexical.weights) if corpus.lexical is not None else 0,
           "bm25_passages": _array_bytes(corpus.passage_lexical.weights) if corpus.passage_lexical is not None else 0,
           "bm25_titles": _array_bytes(corpus.title_lexical.weights) if corpus.title_lexical is not None else 0,
           "title_vectors_read_per_query": corpus.title_vectors is not None}
    for name, index, vectors in (("index", search.index, corpus.vectors),
                                 ("headline_index", search.headline_index, corpus.headline_vectors)):
        if getattr(index, "kind", None) == "ivf":
            out[f"{name}_ivf"] = int(index.centroids.nbytes + index.offsets.nbytes + index.rows.nbytes)
            continue
        nnd = getattr(index, "_nnd", None)
        if nnd is None:
            continue
        raw = nnd._raw_data
        out[f"{name}_graph"] = _array_bytes(nnd._search_graph)
        out[f"{name}_raw_data"] = _array_bytes(raw)
        out[f"{name}_raw_data_shares_vectors"] = bool(np.shares_memory(raw, getattr(vectors, "codes", vectors)))
    return out


def _barrier(directory: Path | None, name: str, workers: int) -> None:
    """Wait until every worker has reached `name` (a file each in `directory`)."""
    if directory is None:
        return
    import os

    (directory / f"{name}-{os.getpid()}").touch()
    while len(list(directory.glob(f"{name}-*"))) < workers:
        time.sleep(0.1)


def serve(model_dir: Path, n_queries: int, n_items: int, seed: int, together: Path | None = None,
          workers: int = 1) -> dict:
    from tqdm import tqdm

    before = memory_now()
    from knn.model_dir import load_model_dir

    imported = memory_now()
    mark = time.perf_counter()
    search = load_model_dir(model_dir)
    load_s = time.perf_counter() - mark
    loaded = memory_now()
    held = holdings(search)
    n = len(search.corpus.vectors)
    queries = clustered_unit_vectors(n_queries + 50, seed=1, skip=n)  # held out: drawn after the corpus rows
    rng = np.random.default_rng(seed)
    sentences = search.corpus.text_column("sentences", "sentence")  # stored texts: read a row at a time
    texts = [str(sentences[int(row)]) if not hasattr(sentences, "iat") else str(sentences.iat[int(row)])
             for row in rng.integers(0, len(search.corpus.sentences), n_queries + 50)]
    for i in range(50):  # warm-up (first numba calls, caches)
        search.search_vectors(queries[n_queries + i], n_items, texts[n_queries + i])
    times = np.empty(n_queries)
    for i in tqdm(range(n_queries), desc="queries", unit="q", mininterval=2):
        start = time.perf_counter()
        search.search_vectors(queries[i], n_items, texts[i])
        times[i] = time.perf_counter() - start
    shopper = shopper_queries()
    shopper_times = np.empty(n_queries)
    for i in range(n_queries):  # the same query vectors, a shopper's words as the text
        start = time.perf_counter()
        search.search_vectors(queries[i], n_items, shopper[i % len(shopper)])
        shopper_times[i] = time.perf_counter() - start
    after_queries = memory_now()
    index_times = np.empty(n_queries)
    for i in range(n_queries):
        start = time.perf_counter()
        search.index.query(queries[i], search.candidates_per_sentence)
        index_times[i] = time.perf_counter() - start
    encode_times = np.empty(min(200, n_queries))
    for i in range(len(encode_times)):
        start = time.perf_counter()
        search.encoder.encode([texts[i]], progress=False)
        encode_times[i] = time.perf_counter() - start
    _barrier(together, "served", workers)  # every worker loaded and queried: measure while all are alive
    after_encoder = memory_now()
    _barrier(together, "measured", workers)
    return {"sentences": n, "load_s": round(load_s, 2), "queries": n_queries, "n_items": n_items,
            "memory": {"at_start": before, "after_imports": imported, "after_load": loaded,
                       "after_queries": after_queries, "after_encoder": after_encoder},
            "holdings_bytes": held,
            "search_vectors_ms": percentiles(times * 1e3),
            "search_vectors_shopper_ms": percentiles(shopper_times * 1e3), "shopper_queries": len(shopper),
            "index_query_k64_ms": percentiles(index_times * 1e3),
            "encoder_one_sentence_ms": percentiles(encode_times * 1e3)}


def recall(model_dir: Path, n_queries: int = 200) -> dict:
    """Recall@10 of the served index (graph walk over the int8 codes, re-scored from the float16 rows) against exact float32 search
    over the vectors the build drew (the same stream, regenerated here; the model dir keeps float16 only).
    Held-out queries, as `serve` uses. A returned id counts when it is as similar as the 10th true
    neighbour (knn_bench.recall_at). Both k=10 and the top 10 of the k=64 that serving asks for."""
    from knn.index import ExactIndex
    from knn.model_dir import load_model_dir
    from knn_bench import recall_at

    search = load_model_dir(model_dir)
    n = len(search.corpus.vectors)
    exact = clustered_unit_vectors(n, seed=1)
    served = search.corpus.vectors
    first = served.rows.block(0, 1000) if hasattr(served, "rows") else served[:1000]  # QuantizedVectors: from the file
    if not np.allclose(exact[:1000].astype(np.float16), first, atol=1e-3):
        return {"skipped": "the model's vectors are not scale_bench's synthetic stream (another --model-dir?)"}
    queries = clustered_unit_vectors(n_queries, seed=1, skip=n)
    truth = ExactIndex(exact).query(queries, 10)[0]  # float32, as knn_bench's ground truth
    k10 = np.vstack([search.index.query(q, 10)[0] for q in queries])
    k64 = np.vstack([search.index.query(q, search.candidates_per_sentence)[0][:, :10] for q in queries])
    return {"queries": n_queries, "epsilon": getattr(search.index, "epsilon", None),
            "nprobe": getattr(search.index, "nprobe", None), "index_kind": search.index.kind,
            "recall_at_10_k10": recall_at(k10, truth, exact, queries),
            "recall_at_10_of_k64": recall_at(k64, truth, exact, queries)}


# --- driver ------------------------------------------------------------------------------------------
def _child(args: list[str]) -> dict:
    """Run this script in a fresh process and return the JSON it writes."""
    return _children(args, 1)[0]


def _children(args: list[str], count: int) -> list[dict]:
    """Run `count` fresh processes of this script at once (as an endpoint's workers); their JSON."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        together = ["--together", tmp, "--workers", str(count)] if count > 1 else []
        procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args, *together,
                                   "--child-out", str(Path(tmp) / f"result-{i}.json")]) for i in range(count)]
        if any(proc.wait() != 0 for proc in procs):
            sys.exit("a benchmark child process failed (its output is above)")
        return [json.loads((Path(tmp) / f"result-{i}.json").read_text()) for i in range(count)]


def shopper_queries() -> list[str]:
    """The query texts of the toys evaluation sets (bench/eval): what shoppers type, 3-20 words."""
    texts = []
    for name in ("toys_queries.json", "toys_paraphrase_queries.json"):
        texts += [item["query"] for item in json.loads((HERE / "eval" / name).read_text())]
    return texts


def gib(value) -> str:
    return "-" if value is None else f"{value / 1024 ** 3:.2f} GiB"


def report(data: dict) -> list[str]:
    serve_, build_ = data["serve"], data["build"]
    mem = serve_["memory"]
    lines = [f"scale bench: {serve_['sentences']:,} sentences, {build_.get('reviews', '?'):,} reviews, "
             f"{build_.get('headlines', '?'):,} headlines, index {build_.get('index_kind')}",
             f"build: {build_.get('timings')} (cached: {data['build_cached']})",
             f"load_model_dir: {serve_['load_s']} s",
             f"{'stage':<16}{'VmRSS':>12}{'VmHWM':>12}{'ru_maxrss':>12}"]
    for stage in ("after_imports", "after_load", "after_queries", "after_encoder"):
        m = mem[stage]
        lines.append(f"{stage:<16}{gib(m['vm_rss_bytes']):>12}{gib(m['vm_hwm_bytes']):>12}{gib(m['ru_maxrss_bytes']):>12}")
    lines.append("holdings: " + ", ".join(f"{k}={gib(v) if isinstance(v, int) and not isinstance(v, bool) else v}"
                                          for k, v in serve_["holdings_bytes"].items()))
    for name in ("search_vectors_ms", "search_vectors_shopper_ms", "index_query_k64_ms", "encoder_one_sentence_ms"):
        if name not in serve_:  # results written before the shopper queries
            continue
        p = serve_[name]
        lines.append(f"{name:<26} p50 {p['p50']:.2f}  p99 {p['p99']:.2f}  mean {p['mean']:.2f}  max {p['max']:.2f}")
    if "workers" in data:
        w = data["workers"]
        lines.append(f"{w['count']} workers at once: PSS {', '.join(gib(v) for v in w['pss_bytes_each'])} "
                     f"(in all {gib(sum(w['pss_bytes_each']))}); RSS {', '.join(gib(v) for v in w['rss_bytes_each'])}; "
                     f"peak RSS {', '.join(gib(v) for v in w['peak_rss_bytes_each'])}")
    return lines


def _search_setting(recall_data: dict) -> str:
    if recall_data.get("index_kind") == "ivf":
        return f"inverted file, nprobe {recall_data.get('nprobe', '?')}"
    return f"search epsilon {recall_data.get('epsilon', '?')}"


def targets_of(data: dict) -> list[dict]:
    serve_ = data["serve"]
    mem = serve_["memory"]
    peak = max(m["vm_hwm_bytes"] or m["ru_maxrss_bytes"] for m in mem.values())
    p99 = serve_["search_vectors_ms"]["p99"]
    encoder = serve_["encoder_one_sentence_ms"]
    big = serve_["sentences"] >= BIG_SENTENCES
    build = data.get("build") or {}
    built = ([target(f"build of {serve_['sentences']:,} sentences", sum(build["timings"].values()), TARGET_BIG_BUILD_S,
                     "s", note="texts, synthetic vectors, BM25, indexes (calibrated), model dir written: "
                               + ", ".join(f"{k} {v:.0f}" for k, v in build["timings"].items())
                               + f"; peak RSS {build['build_memory']['vm_hwm_bytes'] / 2 ** 30:.1f} GiB"
                               + ("; measured when the cached model was built" if data.get("build_cached") else ""))]
             if big and "timings" in build else [])
    return built + [
        target(f"peak RSS serving {serve_['sentences']:,} sentences", peak / 1e9,
               TARGET_BIG_RSS_GB if big else TARGET_RSS_GB, "GB",
               note=f"{peak / 2 ** 30:.2f} GiB; VmHWM of a fresh process: load_model_dir, "
                    f"{serve_['queries']} queries, encoder run; after load {mem['after_load']['vm_hwm_bytes'] / 1e9:.2f} GB"),
        *([target(f"{data['workers']['count']} workers serving {serve_['sentences']:,} sentences, memory in all",
                  sum(data["workers"]["pss_bytes_each"]) / 1e9, TARGET_WORKERS_GB, "GB",
                  note="the sum of the workers' PSS (shared pages counted once), measured while all are alive "
                       "after their queries; the mapped int8 codes, graph and BM25 arrays are one copy in the page cache")]
          if "workers" in data else []),
        *([target(f"recall@10 against exact float32 search, {serve_['sentences']:,} sentences",
                  data["recall"]["recall_at_10_of_k64"], TARGET_RECALL, "", higher_is_better=True,
                  note=f"{data['recall']['queries']} held-out queries; the top 10 of the k=64 a search asks "
                       f"the index for; index.query(k=10) alone: {data['recall']['recall_at_10_k10']:.4f}"
                       f"; {_search_setting(data['recall'])}")]
          if "recall_at_10_k10" in data.get("recall", {}) else []),
        target(f"p99 latency serving {serve_['sentences']:,} sentences, whole review sentences as query text", p99,
               TARGET_P99_MS, "ms",
               note=f"ProductSearch.search_vectors, query vectors precomputed, p50 {serve_['search_vectors_ms']['p50']:.2f} ms;"
                    f" the encoder adds p50 {encoder['p50']:.1f} / p99 {encoder['p99']:.1f} ms per one-sentence query"),
        *([target(f"p99 latency serving {serve_['sentences']:,} sentences, shopper queries as query text",
                  serve_["search_vectors_shopper_ms"]["p99"], TARGET_P99_MS, "ms",
                  note=f"the same query vectors, the {serve_['shopper_queries']} query texts of bench/eval's toys sets "
                       f"in turn; p50 {serve_['search_vectors_shopper_ms']['p50']:.2f} ms")]
          if "search_vectors_shopper_ms" in serve_ else []),
    ]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=1_000_000)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--model-dir", type=Path, help="serve this model dir instead of the cached synthetic one")
    parser.add_argument("--texts", help="reviews file to tile, or 'synthetic' (default: toys-10k when present)")
    parser.add_argument("--index-kind", default="auto", choices=("auto", "graph", "exact", "ivf"),
                        help="the sentence index (default auto, as a fit: a graph below 1M sentences, an "
                             "inverted file from 1M)")
    parser.add_argument("--encoder", help="encoder dir to copy into the model (default: the cached ONNX export)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--n-items", type=int, default=10)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--workers", type=int, default=1,
                        help="serving processes at once, each loading the model (as an endpoint's workers)")
    parser.add_argument("--together", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scale.json")
    parser.add_argument("--recall", action="store_true",
                        help="also measure recall@10 against exact float32 search (a separate process; "
                             "regenerates the float32 vectors: ~1.6 GB at 1M)")
    parser.add_argument("--child", choices=("build", "serve", "recall"), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    model_dir = args.model_dir or args.work_dir / f"scale-{args.sentences}-{args.index_kind}" / "model"
    if args.child == "build":
        args.child_out.write_text(json.dumps(build(model_dir, args.sentences, args.texts, args.index_kind, args.encoder)))
        return {}
    if args.child == "recall":
        args.child_out.write_text(json.dumps(recall(model_dir)))
        return {}
    if args.child == "serve":
        args.child_out.write_text(json.dumps(serve(model_dir, args.queries, args.n_items, seed=7,
                                                   together=args.together, workers=args.workers)))
        return {}

    build_record = model_dir.parent / "build.json"
    cached = (model_dir / "manifest.json").is_file() and not args.rebuild
    if args.model_dir is not None:
        build_info, cached = {"model_dir": str(args.model_dir)}, True
    elif cached and build_record.is_file():
        build_info = json.loads(build_record.read_text())
        from knn.model_dir import add_serving_files

        manifest = json.loads((model_dir / "manifest.json").read_text())
        titles = None if "titles.parquet" in manifest["files"] else synthetic_title_vectors(manifest["counts"]["products"])
        # A model built before the int8 codes, stored texts and titles gets them (synthetic title vectors).
        added = add_serving_files(model_dir, title_vectors=titles)
        if added:
            print(f"{model_dir}: added {', '.join(added)} (what a fit now writes for serving)")
    else:
        common = ["--sentences", str(args.sentences), "--work-dir", str(args.work_dir), "--index-kind", args.index_kind]
        common += ["--texts", args.texts] if args.texts else []
        common += ["--encoder", args.encoder] if args.encoder else []
        build_info = _child(common + ["--child", "build"])
        build_record.write_text(json.dumps(build_info, indent=1))
        cached = False
    serve_args = ["--sentences", str(args.sentences), "--work-dir", str(args.work_dir), "--index-kind", args.index_kind,
                  "--queries", str(args.queries), "--n-items", str(args.n_items)]
    serve_args += ["--model-dir", str(args.model_dir)] if args.model_dir else []
    serve_info = _child(serve_args + ["--child", "serve"])
    data = {"model_dir": str(model_dir),
            "model_dir_bytes": sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file()),
            "build_cached": cached, "build": build_info, "serve": serve_info}
    if args.workers > 1:
        workers = _children(serve_args + ["--child", "serve"], args.workers)
        data["workers"] = {
            "count": args.workers,
            "pss_bytes_each": [w["memory"]["after_encoder"]["pss_bytes"] for w in workers],
            "rss_bytes_each": [w["memory"]["after_encoder"]["vm_rss_bytes"] for w in workers],
            "peak_rss_bytes_each": [w["memory"]["after_encoder"]["vm_hwm_bytes"] for w in workers],
            "search_vectors_ms_each": [w["search_vectors_ms"] for w in workers]}
    if args.recall:
        data["recall"] = _child(serve_args + ["--child", "recall"])
    print("\n".join(report(data)))
    targets = targets_of(data)
    write_report("scale", data, targets, args.out)
    data["targets"] = targets
    return data


if __name__ == "__main__":
    main()
