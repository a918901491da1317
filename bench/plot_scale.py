"""Serving memory and latency against catalogue size, from the scale benchmark's results, with a
projection to 10M sentences against an ml.m4.xlarge's 16 GiB.

    .venv/bin/python bench/plot_scale.py [--results bench/results] [--out docs/scale.png]

Reads every bench/results/scale*.json that bench/scale_bench.py wrote (e.g. `scale_bench.py --sentences
100000 --out bench/results/scale-100k.json`) and keeps the newest run of each size. Left: the peak RSS of one
serving process, and the PSS in all of the 2-worker runs where there are some; the dashed line is a
least-squares line through the one-process points (RSS grows linearly with the sentences held),
carried on to 10M, beside the 16 GiB line. Right: single-query p50 and p99 of the search. The
projection is arithmetic on measured points, not a measurement, and the plot says so.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from common import RESULTS, ROOT

GIB = 2 ** 30
INSTANCE_GIB = 16  # ml.m4.xlarge
PROJECT_TO = 10_000_000


def load_points(directory: Path) -> list[dict]:
    points = []
    for path in sorted(Path(directory).glob("scale*.json")):
        try:
            results = json.loads(path.read_text())["results"]
            serve = results["serve"]
        except (ValueError, KeyError, TypeError):
            continue
        peak = max(m["vm_hwm_bytes"] or m["ru_maxrss_bytes"] for m in serve["memory"].values())
        workers = results.get("workers")
        points.append({"file": path.name, "date": json.loads(path.read_text()).get("date", ""),
                       "sentences": serve["sentences"], "peak_rss": peak,
                       "index_kind": (results.get("build") or {}).get("index_kind"),
                       "vectors": serve["holdings_bytes"].get("vectors", 0),
                       "workers_pss": sum(workers["pss_bytes_each"]) if workers else None,
                       "workers": workers["count"] if workers else None,
                       "p50": serve["search_vectors_ms"]["p50"], "p99": serve["search_vectors_ms"]["p99"]})
    newest: dict[int, dict] = {}  # one point per size: the latest run (older files keep their history)
    for point in points:
        if point["sentences"] not in newest or point["date"] > newest[point["sentences"]]["date"]:
            newest[point["sentences"]] = point
    return sorted(newest.values(), key=lambda point: point["sentences"])


def projection(points: list[dict]) -> tuple[float, float] | None:
    """(bytes per sentence, fixed bytes) of a least-squares line through the one-process peaks."""
    if len(points) < 2:
        return None
    slope, intercept = np.polyfit([p["sentences"] for p in points], [p["peak_rss"] for p in points], 1)
    return float(slope), float(intercept)


def render(points: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not points:
        raise SystemExit("no scale results found: run bench/scale_bench.py first (see bench/README.md)")
    figure, (memory, latency) = plt.subplots(1, 2, figsize=(12, 4.5))
    sizes = np.array([p["sentences"] for p in points])
    memory.plot(sizes, [p["peak_rss"] / GIB for p in points], "o-", label="peak RSS, 1 process (measured)")
    pairs = [p for p in points if p["workers_pss"]]
    if pairs:
        memory.plot([p["sentences"] for p in pairs], [p["workers_pss"] / GIB for p in pairs], "s",
                    label=f"PSS in all, {pairs[0]['workers']} workers (measured)")
    line = projection(points)
    if line is not None:
        slope, intercept = line
        xs = np.array([sizes.min(), PROJECT_TO])
        memory.plot(xs, (slope * xs + intercept) / GIB, "--", color="grey",
                    label=f"projection: {slope:.0f} B/sentence + {intercept / GIB:.2f} GiB "
                          f"-> {(slope * PROJECT_TO + intercept) / GIB:.1f} GiB at 10M (not measured)")
    memory.axhline(INSTANCE_GIB, color="#c62828", linewidth=1, label=f"{INSTANCE_GIB} GiB (ml.m4.xlarge)")
    memory.set_xscale("log")
    memory.set_xlabel("sentences served")
    memory.set_ylabel("GiB")
    memory.set_title("serving memory", fontsize=10)
    memory.legend(fontsize=7)
    latency.plot(sizes, [p["p50"] for p in points], "o-", label="p50")
    latency.plot(sizes, [p["p99"] for p in points], "o-", label="p99")
    latency.axhline(30, color="#c62828", linewidth=1, label="p99 target 30 ms")
    latency.set_xscale("log")
    latency.set_xlabel("sentences served")
    latency.set_ylabel("ms per query (search, query vector given)")
    latency.set_title("single-query search latency", fontsize=10)
    latency.legend(fontsize=7)
    figure.suptitle("bench/scale_bench.py, synthetic vectors; " + ", ".join(f"{p['file']} ({p['index_kind']})"
                                                                      for p in points), fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--out", default=str(ROOT / "docs" / "scale.png"))
    args = parser.parse_args(argv)
    points = load_points(Path(args.results))
    path = render(points, Path(args.out))
    for point in points:
        print(f"{point['sentences']:>10,} sentences: peak RSS {point['peak_rss'] / GIB:.2f} GiB, "
              f"p50 {point['p50']:.2f} / p99 {point['p99']:.2f} ms ({point['file']}, {point['index_kind']} index)")
    line = projection(points)
    if line is not None:
        print(f"projection (arithmetic, not measured): {(line[0] * PROJECT_TO + line[1]) / GIB:.1f} GiB at 10M")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
