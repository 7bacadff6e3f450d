"""Plot peak memory against image side: xT against the whole-image backbone.

Reads benchmarks/results/memory_scaling.json (and widest_image.json for the training
runs when present) and draws the whole process's peak resident memory against the image
side, log-log, with the 4 GB budget: xT with a streamable context stays flat, the pooled
global context grows slowly, the whole-image backbone grows with the area until it
passes the budget. Strips (H x W) are placed at the side of the square of the same
area, sqrt(H x W).

    python benchmarks/plot_memory.py        # writes benchmarks/results/memory_vs_side.png

`plot_memory_vs_side` is the reusable part (the demo report calls it on the same rows).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BUDGET_MB = 4e9 / 2**20
SERIES = {  # kind -> (label, style)
    "streaming": ("xT, streamable context (XL)", dict(color="tab:blue", marker="o")),
    "global_pooled": ("xT, global context, 1 token/region", dict(color="tab:green", marker="s")),
    "global": ("xT, global context, 64 tokens/region", dict(color="tab:orange", marker="^")),
    "whole": ("whole-image backbone", dict(color="tab:red", marker="x")),
}


def plot_memory_vs_side(rows: Sequence[dict], path: str | Path, title: str | None = None) -> Path:
    """Draw total peak memory (GiB) against side for each kind of run; save to ``path``.

    Args:
        rows: memory_scaling rows (``kind``, ``height``, ``width``, ``total_peak_mb``;
            whole-image rows may have ``fits`` False: drawn at the budget, hollow).
        path: the image file to write (PNG).
        title: the figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, (label, style) in SERIES.items():
        pts = sorted(
            (math.sqrt(r["height"] * r["width"]), r["total_peak_mb"] / 1024, r.get("fits", True))
            for r in rows
            if r.get("kind") == kind and r.get("height") and r.get("total_peak_mb")
        )
        if not pts:
            continue
        fit = [(x, y) for x, y, ok in pts if ok]
        if fit:
            ax.plot(*zip(*fit, strict=True), label=label, **style)
        over = [(x, BUDGET_MB / 1024) for x, _, ok in pts if not ok]
        if over:
            ax.plot(*zip(*over, strict=True), linestyle="none", markersize=12, color=style["color"],
                    marker="$!$", label=f"{label}: over budget")  # fmt: skip
    ax.axhline(BUDGET_MB / 1024, color="black", linestyle="--", linewidth=1, label="4 GB budget")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("image side, px (sqrt(H x W) for strips)")
    ax.set_ylabel("peak resident memory of the process, GiB")
    ax.set_title(title or "Inference memory against image side (mobilenetv3_small_050, CPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    rows = json.loads((RESULTS / "memory_scaling.json").read_text())
    out = plot_memory_vs_side(rows, RESULTS / "memory_vs_side.png")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
