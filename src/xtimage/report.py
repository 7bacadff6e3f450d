"""The demo report: a metrics table and pictures as HTML (any browser) and Markdown.

Everything is written into one folder: ``index.html``, ``README.md`` (the Markdown twin),
``metrics.json`` and the PNG figures both pages embed by relative path.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xtimage.errors import require
from xtimage.io.atomic import atomic_path


@dataclass
class Figure:
    """A PNG in the report folder with its caption."""

    file: str
    caption: str


@dataclass
class Report:
    """What the report shows, in order.

    Attributes:
        title: page title.
        intro: paragraphs of Markdown-free text under the title.
        table: rows of the metrics table (first row: the header).
        figures: pictures under the table.
        sections: further (heading, text) pairs; text may hold code lines in ``` fences.
        metrics: the numbers, written as ``metrics.json``.
    """

    title: str
    intro: list[str] = field(default_factory=list)
    table: list[list[str]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "metrics.json") as tmp:
            tmp.write_text(json.dumps(self.metrics, indent=2, sort_keys=True))
        with atomic_path(folder / "README.md") as tmp:
            tmp.write_text(self.markdown())
        with atomic_path(folder / "index.html") as tmp:
            tmp.write_text(self.html())

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for p in self.intro:
            lines += [p, ""]
        if self.table:
            header, *rows = self.table
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            lines.append("")
        for f in self.figures:
            lines += [f"![{f.caption}]({f.file})", "", f"*{f.caption}*", ""]
        for heading, text in self.sections:
            lines += [f"## {heading}", "", text, ""]
        return "\n".join(lines)

    def html(self) -> str:
        esc = html.escape
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{esc(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;"
            "text-align:right}th{background:#f3f3f3}img{max-width:100%}"
            "pre{background:#f6f6f6;padding:.8em;overflow-x:auto}</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
        ]
        parts += [f"<p>{esc(p)}</p>" for p in self.intro]
        if self.table:
            header, *rows = self.table
            parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
            parts.append("</table>")
        for f in self.figures:
            parts.append(
                f"<figure><img src='{esc(f.file)}' alt='{esc(f.caption)}'>"
                f"<figcaption>{esc(f.caption)}</figcaption></figure>"
            )
        for heading, text in self.sections:
            parts.append(f"<h2>{esc(heading)}</h2>")
            chunks = text.split("```")
            for i, chunk in enumerate(chunks):
                if i % 2:
                    parts.append(f"<pre>{esc(chunk.strip())}</pre>")
                elif chunk.strip():
                    parts += [f"<p>{esc(p.strip())}</p>" for p in chunk.split("\n\n") if p.strip()]
        parts.append("</body></html>")
        return "\n".join(parts)


def save_panels(
    path: Path,
    panels: Sequence[tuple[str, np.ndarray]],
    cmap: str = "viridis",
    boxes: Mapping[int, tuple[int, int, int, int]] | None = None,
) -> None:
    """A row of images with titles as one PNG.

    Args:
        path: the PNG to write.
        panels: (title, image) pairs; images are (H, W) maps or (H, W, 3) RGB in [0, 1].
        cmap: colour map of (H, W) panels.
        boxes: panel index -> (top, left, height, width) rectangle to outline (a zoom).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for i, (ax, (title, image)) in enumerate(zip(np.atleast_1d(axes), panels, strict=True)):
        ax.imshow(
            image,
            cmap=None if image.ndim == 3 else cmap,
            interpolation="nearest",
            vmin=0,
            vmax=max(1, float(image.max())) if image.ndim == 2 else None,
        )
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
        if boxes and i in boxes:
            top, left, h, w = boxes[i]
            ax.add_patch(plt.Rectangle((left, top), w, h, fill=False, color="red", lw=1.5))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def save_memory_plot(path: Path, rows: Sequence[Mapping], budget_mb: float | None = None) -> bool:
    """Peak memory against image side, one line per method, from benchmark JSON rows.

    Args:
        path: the PNG to write.
        rows: rows with ``method`` (or ``mode``), ``side`` and ``peak_mb``; failed points
            (``peak_mb`` None) are left out.
        budget_mb: draw the budget as a horizontal line.

    Returns:
        Whether a plot was written (False when no row has a measurement).
    """
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r.get("peak_mb") is None or r.get("side") is None:
            continue
        series.setdefault(str(r.get("method") or r.get("mode")), []).append(
            (int(r["side"]), float(r["peak_mb"]))
        )
    if not series:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in sorted(series.items()):
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    if budget_mb:
        ax.axhline(budget_mb, color="grey", ls="--", lw=1, label="budget")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("image side (px)")
    ax.set_ylabel("peak memory increase (MB)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return True


def _pyplot():
    matplotlib = require("matplotlib", "report", "drawing the report's figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
