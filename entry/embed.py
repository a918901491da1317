"""The embed step of a two-step fit: a SageMaker processing job (FrameworkProcessor / PyTorchProcessor).

Each instance splits its share of the review part files into sentences and embeds them
(knn.shards.embed_part), writing one shard per part into the output; the training job (entry_point.py
with the channel `embedded`) then joins the shards and builds the index.

    inputs:  /opt/ml/processing/input/reviews/part-NNNNN-of-NNNNN.csv ...  (ShardedByS3Key: this host's share)
    outputs: /opt/ml/processing/output/embedded/part-NNNNN-of-NNNNN/...   (uploaded when the job ends)

--share-by-host: the channel holds every part (FullyReplicated) and this host takes parts i, i+N, ...
by its position in resourceconfig.json's `hosts`. The docker backend needs it: the SDK's local mode
refuses ShardedByS3Key. On SageMaker and in sim the channel is sharded and the flag is off.

Paths: /opt/ml is `$SAGEMAKER_BASE_DIR` when set (sim runs a job's hosts under temp dirs; see
local_runs/sim/processing.py), else /opt/ml. A bad part (a row without a valid star_rating, say) ends
the job with a message naming the part, the row and the column, in /opt/ml/output/message (the job's
ExitMessage) and on stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_LIB = os.path.join(_HERE, "lib")
if os.path.isdir(_LIB) and _LIB not in sys.path:
    sys.path.insert(0, _LIB)

log = logging.getLogger("embed")

BASE = os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Embed this instance's share of the review parts.")
    parser.add_argument("--input", default=f"{BASE}/processing/input/reviews")
    parser.add_argument("--output", default=f"{BASE}/processing/output/embedded")
    parser.add_argument("--threads", type=int, default=0, help="encoder threads (default: this machine's cores)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="float32", choices=["float32", "int8"])
    parser.add_argument("--share-by-host", action="store_true",
                        help="take this host's share of a fully replicated channel (the SDK's local mode)")
    return parser.parse_args(argv)


def _hosts() -> tuple[str, list[str]]:
    path = os.path.join(BASE, "config", "resourceconfig.json")
    if not os.path.isfile(path):
        return "algo-1", ["algo-1"]
    config = json.load(open(path))
    return config["current_host"], list(config["hosts"])


def _parts(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    found = []
    for root, _dirs, files in os.walk(directory):
        found += [os.path.join(root, name) for name in files if name.startswith("part-")]
    return sorted(found, key=os.path.basename)


def run(argv=None) -> dict:
    from knn.encoder import load_encoder
    from knn.shards import embed_part, encoder_path

    args = parse_args(argv)
    host, hosts = _hosts()
    position = hosts.index(host)
    parts = _parts(args.input)
    if args.share_by_host:
        parts = parts[position::len(hosts)]
    os.makedirs(args.output, exist_ok=True)
    threads = args.threads or _cpus()
    start = time.perf_counter()
    summary = {"host": host, "host_index": position + 1, "hosts": len(hosts), "threads": threads,
               "parts": [os.path.basename(p) for p in parts], "sentences": 0, "headlines": 0, "reviews": 0,
               "embed_s": 0.0}
    if not parts:
        log.info("%s: no part to embed (more instances than parts); finishing without output", host)
    else:
        encoder = load_encoder(encoder_path(args.precision), threads=threads, verify=False)
        for part in parts:
            figures = embed_part(part, args.output, encoder, batch_size=args.batch_size)
            log.info("%s: %s -> %d sentences, %d headlines in %.1f s", host, figures["part"], figures["sentences"],
                     figures["headlines"], figures["embed_s"])
            for key in ("sentences", "headlines", "reviews", "embed_s"):
                summary[key] += figures[key]
    summary["total_s"] = round(time.perf_counter() - start, 3)
    summary["sentences_per_s"] = round(summary["sentences"] / summary["embed_s"], 1) if summary["embed_s"] else None
    if parts:  # a host with nothing to do writes nothing (no output, no upload)
        with open(os.path.join(args.output, f"host-{position + 1:03d}-of-{len(hosts):03d}.json"), "w") as f:
            json.dump(summary, f, indent=1)
    print(f"embed: {json.dumps(summary)}", flush=True)
    return summary


def _exit_message(text: str) -> None:
    try:
        os.makedirs(os.path.join(BASE, "output"), exist_ok=True)
        with open(os.path.join(BASE, "output", "message"), "w", encoding="utf-8") as f:
            f.write(text[:1024])
    except OSError:
        pass


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from knn.errors import SearchError

    try:
        run(argv)
    except SearchError as exc:
        kind = "ValueError" if isinstance(exc, ValueError) else "RuntimeError"
        text = f"{kind}: {exc}"
        _exit_message(text)
        print(text, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
