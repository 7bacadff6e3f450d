"""Test-time views: an image's flips and quarter turns, and the average of their answers.

A model trained on flipped and turned images should answer the same in every view, yet
it can learn some views through a shortcut: on the built-in tasks a 1-px texture known
by which of its phases the stem's stride-2 grid samples, so that a seed fails in the two
views where two textures sample alike (docs/context_pays.md, session 25). Averaging the
class probabilities of the views (test-time augmentation, ``model.tta``) answers as the
majority of views do. Each view is read window by window from the image as it is (no
turned copy is made) and its outputs are turned back before they are summed.

Sets of views: ``none``; ``flips``: the identity, the left-right and top-bottom mirrors
and the half turn (the image keeps its shape); ``d4``: all eight symmetries of a square
(quarter turns swap height and width, which a model of any image size takes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xtimage.engine.source import RegionSource
from xtimage.limits import check_alloc
from xtimage.tiling import RegionPlan
from xtimage.window import Window


@dataclass(frozen=True)
class View:
    """``turns`` quarter turns (``torch.rot90`` over the last two axes), then a left-right
    mirror when ``flip``."""

    turns: int
    flip: bool

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H, W) -> the view, (..., H, W) or (..., W, H)."""
        x = torch.rot90(x, self.turns, (-2, -1))
        return x.flip(-1) if self.flip else x

    def undo(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of `apply`."""
        x = x.flip(-1) if self.flip else x
        return torch.rot90(x, -self.turns, (-2, -1))

    def shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the view of a ``height`` x ``width`` image."""
        return (width, height) if self.turns % 2 else (height, width)

    def base_window(self, window: Window, height: int, width: int) -> Window:
        """The window of the ``height`` x ``width`` image whose view is ``window`` of
        the viewed image (both may reach outside their images)."""
        _, view_width = self.shape(height, width)
        t, h, w = window.top, window.height, window.width
        left = view_width - window.left - w if self.flip else window.left
        turn = self.turns % 4
        if turn == 0:
            return Window(t, left, h, w)
        if turn == 1:  # view[i, j] = image[j, W - 1 - i]
            return Window(left, width - t - h, w, h)
        if turn == 2:  # view[i, j] = image[H - 1 - i, W - 1 - j]
            return Window(height - t - h, width - left - w, h, w)
        return Window(height - left - w, t, w, h)  # view[i, j] = image[H - 1 - j, i]


# the views of each model.tta setting (`xtimage.config.TTA`, checked there)
VIEW_SETS: dict[str, tuple[View, ...]] = {
    "none": (View(0, False),),
    "flips": (View(0, False), View(0, True), View(2, False), View(2, True)),
    "d4": tuple(View(turns, flip) for turns in range(4) for flip in (False, True)),
}


class ViewedSource(RegionSource):
    """A view of a `RegionSource`: each window is read from the image as it is, then
    turned (edge padding commutes with flips and turns, so padded windows agree)."""

    def __init__(self, base: RegionSource, view: View) -> None:
        self.base, self.view = base, view
        self.channels, self.dtype = base.channels, base.dtype
        self.height, self.width = view.shape(base.height, base.width)

    def read(self, window: Window) -> torch.Tensor:
        base = self.view.base_window(window, self.base.height, self.base.width)
        return self.view.apply(self.base.read(base))

    def chunks(
        self, plan: RegionPlan, chunks: Sequence[Sequence[int]], read_ahead: bool = True
    ) -> Iterator[tuple[Sequence[int], torch.Tensor]]:
        for chunk in chunks:  # read in place of the base's prefetch of unturned windows
            yield chunk, self.regions(plan, chunk)


@dataclass(frozen=True)
class OutputKind:
    """A group of output channels and how its views are averaged: ``softmax`` (class
    logits), ``sigmoid`` (independent maps) or ``raw`` (regressions)."""

    channels: slice
    kind: str


def output_kinds(outputs: Sequence[Any]) -> list[OutputKind]:
    """The kinds of a dense head's outputs (`DenseOutput`: ``ce`` class logits, ``bce``
    and ``focal`` maps, ``l1`` and ``mse`` regressions), in channel order."""
    kinds, start = [], 0
    for o in outputs:
        kind = {"ce": "softmax", "bce": "sigmoid", "focal": "sigmoid"}.get(o.loss, "raw")
        kinds.append(OutputKind(slice(start, start + o.channels), kind))
        start += o.channels
    return kinds


def to_probabilities(x: torch.Tensor, kinds: Sequence[OutputKind]) -> torch.Tensor:
    """Raw outputs (C, ...) -> the quantities averaged over views, channel group by group."""
    out = x.clone()
    for k in kinds:
        if k.kind == "softmax":
            out[k.channels] = x[k.channels].softmax(0)
        elif k.kind == "sigmoid":
            out[k.channels] = x[k.channels].sigmoid()
    return out


def to_logits(p: torch.Tensor, kinds: Sequence[OutputKind]) -> torch.Tensor:
    """Averaged quantities -> outputs in the raw form the task decodes (log-probabilities
    for class logits, whose argmax and softmax are the average's; logits for maps)."""
    out = p.clone()
    tiny = torch.finfo(p.dtype).tiny
    for k in kinds:
        q = p[k.channels].clamp_min(tiny)
        if k.kind == "softmax":
            out[k.channels] = q.log()
        elif k.kind == "sigmoid":
            out[k.channels] = q.log() - (1 - p[k.channels]).clamp_min(tiny).log()
    return out


BAND = 512  # rows of the averaged outputs handed to the writer at a time


class ViewAverage:
    """Sums the views' dense outputs of one image (turned back, as probabilities), then
    hands their mean to a writer in bands of `BAND` rows.

    Holds (C, H, W) float32 in memory: test-time views of an image too large for that
    are refused by `check_alloc` with the size named. ``tick`` is called once per
    window each view writes (a progress bar).
    """

    def __init__(
        self,
        kinds: Sequence[OutputKind],
        height: int,
        width: int,
        tick: Callable[[], Any] | None = None,
    ) -> None:
        channels = kinds[-1].channels.stop
        check_alloc(4 * channels * height * width,
                    f"test-time views (model.tta) of a {height} x {width} px image")  # fmt: skip
        self.kinds, self.tick = kinds, tick
        self.sum = np.zeros((channels, height, width), dtype=np.float32)
        self.count = 0

    def writer(self, view: View) -> _Unviewed:
        """The writer one view's `Engine.segment` feeds."""
        self.count += 1
        return _Unviewed(self, view)

    def add(self, window: Window, data: torch.Tensor) -> None:
        """Add (C, h, w) probabilities at ``window`` of the image (clipped to it)."""
        _, height, width = self.sum.shape
        inside = window.intersect(Window(0, 0, height, width))
        if inside is not None:
            rows, cols = inside.shift(-window.top, -window.left).slices()
            self.sum[(slice(None), *inside.slices())] += data[:, rows, cols].numpy()

    def flush(self, writer: Any) -> None:
        """Write the mean over views to a dense writer as raw outputs, band by band."""
        _, height, width = self.sum.shape
        for top in range(0, height, BAND):
            rows = min(BAND, height - top)
            mean = torch.from_numpy(self.sum[:, top : top + rows] / self.count)
            writer.write(Window(top, 0, rows, width), to_logits(mean, self.kinds).numpy())


class _Unviewed:
    """A writer of one view's outputs that turns them back and adds them to the sum."""

    def __init__(self, average: ViewAverage, view: View) -> None:
        self.average, self.view = average, view
        _, height, width = average.sum.shape
        self.height, self.width = height, width

    def write(self, window: Window, data: np.ndarray) -> None:
        base = self.view.base_window(window, self.height, self.width)
        probs = to_probabilities(torch.from_numpy(np.ascontiguousarray(data)), self.average.kinds)
        self.average.add(base, self.view.undo(probs))
        if self.average.tick is not None:
            self.average.tick()
