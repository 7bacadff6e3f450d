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


Table = list[list[str]]  # rows of cells, the first row the header


@dataclass
class Report:
    """What the report shows, in order.

    Attributes:
        title: page title.
        intro: paragraphs of Markdown-free text under the title.
        table: rows of the metrics table (first row: the header).
        figures: pictures under the table.
        sections: further (heading, content) pairs; content is text (paragraphs split by
            blank lines, code lines in ``` fences) or a `Table`.
        metrics: the numbers, written as ``metrics.json``.
    """

    title: str
    intro: list[str] = field(default_factory=list)
    table: Table = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    sections: list[tuple[str, str | Table]] = field(default_factory=list)
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
        lines += _markdown_table(self.table)
        for f in self.figures:
            lines += [f"![{f.caption}]({f.file})", "", f"*{f.caption}*", ""]
        for heading, content in self.sections:
            lines += [f"## {heading}", ""]
            lines += [content, ""] if isinstance(content, str) else _markdown_table(content)
        return "\n".join(lines)

    def html(self) -> str:
        esc = html.escape
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{esc(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
            "line-height:1.45}table{border-collapse:collapse;margin:1em 0}td,th{border:1px "
            "solid #ccc;padding:4px 10px;text-align:right}td:first-child,th:first-child"
            "{text-align:left}th{background:#f3f3f3}figure{margin:1.5em 0}img{width:100%;"
            "height:auto}figcaption{margin-top:.4em}pre{background:#f6f6f6;padding:.8em;"
            "overflow-x:auto}</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
        ]
        parts += [f"<p>{esc(p)}</p>" for p in self.intro]
        parts += _html_table(self.table)
        for f in self.figures:
            parts.append(
                f"<figure><img src='{esc(f.file)}' alt='{esc(f.caption)}'>"
                f"<figcaption>{esc(f.caption)}</figcaption></figure>"
            )
        for heading, content in self.sections:
            parts.append(f"<h2>{esc(heading)}</h2>")
            if not isinstance(content, str):
                parts += _html_table(content)
                continue
            chunks = content.split("```")
            for i, chunk in enumerate(chunks):
                if i % 2:
                    parts.append(f"<pre>{esc(chunk.strip())}</pre>")
                elif chunk.strip():
                    parts += [f"<p>{esc(p.strip())}</p>" for p in chunk.split("\n\n") if p.strip()]
        parts.append("</body></html>")
        return "\n".join(parts)


def _markdown_table(table: Table) -> list[str]:
    if not table:
        return []
    header, *rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _html_table(table: Table) -> list[str]:
    if not table:
        return []
    esc = html.escape
    header, *rows = table
    parts = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
    return parts + ["</table>"]


def save_panels(
    path: Path,
    panels: Sequence[tuple[str, np.ndarray]],
    cmap: str = "viridis",
    boxes: Mapping[int, tuple[int, int, int, int]] | None = None,
    columns: int | None = None,
    frame: Sequence[int] = (),
) -> None:
    """Images with large titles as one PNG, in rows of ``columns``.

    Args:
        path: the PNG to write.
        panels: (title, image) pairs; images are (H, W) maps or (H, W, 3) RGB in [0, 1].
        cmap: colour map of (H, W) panels.
        boxes: panel index -> (top, left, height, width) rectangle to outline in red.
        columns: panels per row (default: all in one row).
        frame: panel indices drawn with a red frame (the contents of a red box).
    """
    plt = _pyplot()
    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    for i, (ax, (title, image)) in enumerate(zip(axes.flat, panels, strict=False)):
        ax.imshow(
            image,
            cmap=None if image.ndim == 3 else cmap,
            interpolation="nearest",
            vmin=0,
            vmax=max(1, float(image.max())) if image.ndim == 2 else None,
        )
        ax.set_title(title, fontsize=17, pad=8)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(i in frame)
            spine.set_color("red")
            spine.set_linewidth(4)
        if boxes and i in boxes:
            top, left, h, w = boxes[i]
            ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), w, h, fill=False, color="red",
                                       lw=2.5))  # fmt: skip
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _pyplot():
    matplotlib = require("matplotlib", "report", "drawing the report's figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
