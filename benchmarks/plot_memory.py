"""Plot peak memory against image side: xT against the whole-image backbone.

Reads benchmarks/results/memory_scaling.json (square images; the 100,000 x 4,096 strip)
and the inference rows of widest_image.json (the authors' way: every region in one batch,
on 4,096-px strips) and draws the whole process's peak resident memory against the image
side, log-log, with the 4 GB budget: xT with a streamable context stays flat, the pooled
global context grows slowly, the unpooled one and the whole-image backbone grow with the
area. Strips (H x W) are placed at the side of the square of the same area, sqrt(H x W);
a run stopped at the budget is drawn as "!" on the budget line.

    python benchmarks/plot_memory.py        # writes benchmarks/results/memory_vs_side.png

`plot_memory_vs_side(rows, path)` is the reusable part.
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
    "authors": (
        "authors' way, all regions in one batch (strips)",
        dict(color="tab:purple", marker="D", linestyle=":"),
    ),
}


def plot_memory_vs_side(rows: Sequence[dict], path: str | Path, title: str | None = None) -> Path:
    """Draw total peak memory (GiB) against side for each kind of run; save to ``path``.

    Args:
        rows: memory_scaling rows (``kind``, ``height``, ``width``, ``total_peak_mb``;
            rows with ``fits`` False were stopped at the budget: drawn as "!" on its line).
        path: the image file to write (PNG).
        title: the figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    stopped = False
    for kind, (label, style) in SERIES.items():
        pts = sorted(
            (math.sqrt(r["height"] * r["width"]), r["total_peak_mb"] / 1024, r.get("fits", True))
            for r in rows
            if r.get("kind") == kind and r.get("height") and r.get("total_peak_mb")
        )
        fit = [(x, y) for x, y, ok in pts if ok]
        if fit:
            ax.plot(*zip(*fit, strict=True), label=label, **style)
        over = [(x, BUDGET_MB / 1024) for x, _, ok in pts if not ok]
        if over:
            ax.plot(*zip(*over, strict=True), linestyle="none", markersize=14,
                    color=style["color"], marker="$!$")  # fmt: skip
            stopped = True
    ax.axhline(BUDGET_MB / 1024, color="black", linestyle="--", linewidth=1, label="4 GB budget")
    if stopped:
        ax.plot([], [], linestyle="none", marker="$!$", markersize=10, color="black",
                label="stopped on passing the budget")  # fmt: skip
    ax.set_xscale("log", base=2)
    ticks = [2**i for i in range(10, 18)]
    ax.set_xticks(ticks, [f"{t // 1024}k" for t in ticks])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("image side, px (sqrt(H x W) for strips)")
    ax.set_ylabel("peak resident memory of the whole process, GiB")
    ax.set_title(title or "Inference memory against image side (mobilenetv3_small_050, CPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    rows = json.loads((RESULTS / "memory_scaling.json").read_text())
    widest = RESULTS / "widest_image.json"
    if widest.exists():  # the authors' way: only measured on strips, in the widest-image runs
        rows += [{**r, "kind": "authors"} for r in json.loads(widest.read_text())
                 if r.get("method") == "authors" and r.get("mode") == "inference"]  # fmt: skip
    out = plot_memory_vs_side(rows, RESULTS / "memory_vs_side.png")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
