"""Render every benchmark's targets as one PNG: measured against target, pass or short.

    .venv/bin/python bench/plot.py [--results bench/results] [--out docs/benchmarks.png]

Reads every bench/results/*.json (the shape is described in bench/common.py). Each target is one
horizontal bar: its measured value as a share of the target (for "at most" targets, measured/limit;
for "at least" targets, limit/measured), so every bar left of the 1.0 line passes. The measured
value and the target are written beside the bar; the title names the machine and the dates.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import ROOT, RESULTS


def load_results(directory: Path) -> list[dict]:
    documents = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(document, dict) and document.get("targets"):
            document["results_file"] = path.stem  # names the bar: one bench writes several files (knn-int8, scale-5m)
            documents.append(document)
    return documents


def share_of_target(entry: dict) -> float | None:
    """How much of the target is used: < 1 passes (measured/limit, or limit/measured when higher is better)."""
    measured, limit = entry.get("measured"), entry.get("limit")
    if measured is None or limit is None:
        return None
    if entry.get("higher_is_better"):
        return float("inf") if measured <= 0 else limit / measured
    if limit == 0:
        return 0.0 if measured <= 0 else float("inf")
    return measured / limit


def render(documents: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(document.get("results_file", document["name"]), entry)
            for document in documents for entry in document["targets"]]
    if not rows:
        raise SystemExit("no benchmark results with targets found; run the benchmarks first (see bench/README.md)")
    height = 1.2 + 0.42 * len(rows)
    figure, axes = plt.subplots(figsize=(11, height))
    labels, shares, colours, notes = [], [], [], []
    for name, entry in rows:
        share = share_of_target(entry)
        shown = 0.0 if share is None else min(share, 2.0)
        labels.append(f"{name}: {entry['name']}")
        shares.append(shown)
        colours.append("#9e9e9e" if entry.get("pass") is None else ("#2e7d32" if entry["pass"] else "#c62828"))
        measured = "not measured" if entry.get("measured") is None else f"{entry['measured']:g} {entry.get('unit', '')}"
        notes.append(f"{measured} (target {entry['target']})")
    positions = list(range(len(rows)))[::-1]
    axes.barh(positions, shares, color=colours)
    axes.axvline(1.0, color="black", linewidth=1, linestyle="--")
    for position, share, note in zip(positions, shares, notes):
        axes.text(min(share, 2.0) + 0.02, position, note, va="center", fontsize=8)
    axes.set_yticks(positions)
    axes.set_yticklabels(labels, fontsize=8)
    axes.set_xlim(0, 2.6)
    axes.set_xlabel("share of the target used (left of the dashed line = meets it; bars capped at 2)")
    machine = documents[0].get("machine", {})
    dates = sorted({str(document.get("date", ""))[:10] for document in documents} - {""})
    axes.set_title(f"review search benchmarks\n{machine.get('cpus', '?')} CPUs ({machine.get('cpu_model', '?')}), "
                   f"{machine.get('memory_gib', '?')} GiB; measured {dates[0] if dates else '?'} to {dates[-1] if dates else '?'}",
                   fontsize=9)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.png"))
    args = parser.parse_args(argv)
    path = render(load_results(Path(args.results)), Path(args.out))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
