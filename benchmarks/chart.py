"""Draw docs/performance.png from the JSON the benchmark scripts write into benchmarks/results/.

    python benchmarks/chart.py
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import GFLOP_PER_IMAGE, ROOT  # noqa: E402


def main() -> None:
    results = ROOT / "benchmarks" / "results"
    build = json.loads((results / "build.json").read_text())
    query = json.loads((results / "query.json").read_text())
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.25, 1]})

    labels = ["recipe loop", "build fp32", "model alone\nfp32", "FLOP ceiling\nfp32", "build bf16", "model alone\nbf16"]
    values = [build["recipe"], build["build_fp32"], build["model_fp32"], build["gflops_fp32"] / GFLOP_PER_IMAGE,
              build["build_bf16"], build["model_bf16"]]
    colours = ["#9ca3af", "#2563eb", "#93c5fd", "#e5e7eb", "#16a34a", "#86efac"]
    bars = left.bar(labels, values, color=colours, edgecolor="#374151")
    left.bar_label(bars, fmt="%.1f")
    left.set_ylabel("images per second")
    left.set_title("Build throughput, ViT-B/32, 640x480 JPEGs, 2 CPU cores")

    sql, web = query["sql"], query["json"]
    names = ["imgsearch()\nnew query", "imgsearch()\nrepeated", "score over\na WHERE", "JSON, 8 clients\nrepeated pool",
             "JSON, 8 clients\ndistinct"]
    p50 = [sql["fresh"][0], sql["repeated"][0], sql["score"][0], web["pool"][0][0], web["distinct"][0][0]]
    bars = right.bar(names, p50, color=["#2563eb", "#93c5fd", "#f59e0b", "#16a34a", "#86efac"], edgecolor="#374151")
    right.bar_label(bars, fmt="%.1f")
    right.set_ylabel("p50 latency, ms (log scale)")
    right.set_yscale("log")
    right.set_title(f"Queries at {query['rows']:,} rows, warm")
    for axis in (left, right):
        axis.tick_params(axis="x", labelsize=8)
        axis.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    target = ROOT / "docs" / "performance.png"
    target.parent.mkdir(exist_ok=True)
    figure.savefig(target, dpi=110)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
