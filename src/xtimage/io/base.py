"""The reader and writer contracts.

A *reader* answers windows of one image, random access, at any pyramid level; it never
decides what to read (the tiler does). Arrays are channel-first, (C, h, w), in the
file's dtype; normalisation is a separate transform. A window must lie inside the level;
`read_padded` serves windows that extend past the border (region margins, padding).

A *writer* receives windows of an output, chunk by chunk, never the whole array, and
makes the file appear under its final name only when `close` succeeds (write to a
temporary name, then rename), so an interrupted run leaves nothing that looks finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from xtimage.errors import InputError
from xtimage.window import Window


@dataclass(frozen=True)
class Level:
    """One pyramid level: its size and its downsample factor relative to level 0."""

    height: int
    width: int
    downsample: float


@dataclass(frozen=True)
class PixelSize:
    """Physical size of a level-0 pixel along y and x, in ``unit`` ("um" or "m")."""

    y: float
    x: float
    unit: str


@runtime_checkable
class Reader(Protocol):
    """Random-access window reads of one (possibly pyramidal) image."""

    path: str | None
    height: int
    width: int
    channels: int
    dtype: np.dtype
    levels: list[Level]
    pixel_size: PixelSize | None

    def read_region(self, window: Window, level: int = 0) -> np.ndarray:
        """Pixels of ``window`` (in ``level`` coordinates) as (C, h, w)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Writer(Protocol):
    """Chunk-by-chunk output of a (C, H, W) map; atomic on `close`."""

    def write(self, window: Window, data: np.ndarray) -> None:
        """Store ``data`` (C, h, w) at ``window`` of level 0."""
        ...

    def close(self) -> None:
        """Finish the file and move it to its final name."""
        ...

    def abort(self) -> None:
        """Drop the partial output; the final name is never created."""
        ...


def check_window(reader: Reader, window: Window, level: int) -> Level:
    """The level's geometry, after checking that ``level`` exists and holds ``window``."""
    if not 0 <= level < len(reader.levels):
        raise InputError(
            f"{reader.path or 'array'}: level {level} does not exist "
            f"(the image has {len(reader.levels)} level(s), 0 to {len(reader.levels) - 1})"
        )
    lv = reader.levels[level]
    if window.height <= 0 or window.width <= 0:
        raise InputError(f"{reader.path or 'array'}: empty window {window}")
    if window.intersect(Window(0, 0, lv.height, lv.width)) != window:
        raise InputError(
            f"{reader.path or 'array'}: window {window} lies outside level {level} "
            f"of size {lv.height} x {lv.width}; use read_padded for windows past the border"
        )
    return lv


def read_padded(reader: Reader, window: Window, level: int = 0, fill: Any = 0) -> np.ndarray:
    """Read ``window`` even where it extends past the image, filling outside with ``fill``.

    Returns:
        (C, window.height, window.width) in the reader's dtype.
    """
    lv = reader.levels[level] if 0 <= level < len(reader.levels) else None
    if lv is None:
        check_window(reader, window, level)  # raises the clear error
    out = np.full((reader.channels, window.height, window.width), fill, dtype=reader.dtype)
    inside = window.intersect(Window(0, 0, lv.height, lv.width))
    if inside is not None:
        rows, cols = inside.shift(-window.top, -window.left).slices()
        out[:, rows, cols] = reader.read_region(inside, level)
    return out
