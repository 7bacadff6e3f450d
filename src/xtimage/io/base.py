"""The reader and writer contracts.

A *reader* answers windows of one image, random access, at any pyramid level; it never
decides what to read (the tiler does). Arrays are channel-first, (C, h, w), in the
file's dtype; normalisation is a separate transform. A window must lie inside the level;
`read_padded` serves windows that extend past the border (region margins, padding):
with a constant, or repeating the nearest pixel (``mode="edge"``, what the engine reads).

A *writer* receives windows of an output, chunk by chunk, never the whole array, and
makes the file appear under its final name only when `close` succeeds (write to a
temporary name, then rename), so an interrupted run leaves nothing that looks finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from xtimage.errors import ConfigError, InputError
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


@dataclass(frozen=True)
class GeoInfo:
    """Georeference of level 0: the affine map from pixel to map coordinates, and the CRS.

    ``transform`` is ``(a, b, c, d, e, f)`` in GDAL/rasterio order: a continuous pixel
    position (col, row), (0, 0) being the top-left corner of the image, lies at map
    ``x = a * col + b * row + c``, ``y = d * col + e * row + f``.
    """

    transform: tuple[float, float, float, float, float, float]
    crs_wkt: str
    epsg: int | None = None

    def pixel_to_map(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates (x, y) of continuous pixel positions."""
        a, b, c, d, e, f = self.transform
        rows, cols = np.asarray(rows, np.float64), np.asarray(cols, np.float64)
        return a * cols + b * rows + c, d * cols + e * rows + f


@runtime_checkable
class Reader(Protocol):
    """Random-access window reads of one (possibly pyramidal) image.

    Besides the geometry, a reader says which ``backend`` serves it, the ``nodata`` value
    of pixels without data (None when the file declares none), its georeference ``geo``
    (None for files without one) and descriptive ``metadata`` (plain JSON values: tile
    size, compression, vendor, ...) for `xt info`.
    """

    path: str | None
    height: int
    width: int
    channels: int
    dtype: np.dtype
    levels: list[Level]
    pixel_size: PixelSize | None
    backend: str
    nodata: float | None
    geo: GeoInfo | None
    metadata: dict[str, Any]

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


def check_channels(reader: Reader, expected: int) -> None:
    """Fail clearly when the image's band count is not the ``expected`` one (the model's)."""
    if reader.channels != expected:
        raise InputError(
            f"{reader.path or 'array'}: the image has {reader.channels} channel(s) but the "
            f"model expects {expected}; select or stack bands to match (e.g. VV and VH as "
            f"2 channels) or train the model with model.in_chans={reader.channels}"
        )


PadMode = Literal["constant", "edge"]


def read_padded(
    reader: Reader, window: Window, level: int = 0, fill: Any = None, mode: PadMode = "constant"
) -> np.ndarray:
    """Read ``window`` even where it extends past the image.

    Args:
        reader: the image.
        window: pixels to read, at ``level``; it may lie partly or wholly outside.
        level: pyramid level.
        fill: the value outside the image with ``mode="constant"``; default: the reader's
            nodata value when it declares one, else 0.
        mode: ``"constant"`` fills outside with ``fill``; ``"edge"`` repeats the nearest
            image pixel, pixel (r, c) being the image's ``(clip(r, 0, H - 1),
            clip(c, 0, W - 1))`` (numpy's ``"edge"``, torch's ``"replicate"``), also for
            a window wholly past the border. The engine reads regions this way.

    Returns:
        (C, window.height, window.width) in the reader's dtype.
    """
    if mode not in ("constant", "edge"):
        raise ConfigError(f"padding mode {mode!r} is not one of 'constant', 'edge'")
    lv = reader.levels[level] if 0 <= level < len(reader.levels) else None
    if lv is None:
        check_window(reader, window, level)  # raises the clear error
    inside = window.intersect(Window(0, 0, lv.height, lv.width))
    if inside == window:
        return reader.read_region(window, level)  # no padding: skip the fill and the copy
    if mode == "edge":
        source, rows, cols = window.edge_index(lv.height, lv.width)
        near = reader.read_region(source, level)  # (C, h', w'), the pixels to repeat
        return near[:, rows[:, None], cols[None, :]]
    if fill is None:
        fill = 0 if reader.nodata is None else reader.nodata
    out = np.full((reader.channels, window.height, window.width), fill, dtype=reader.dtype)
    if inside is not None:
        rows, cols = inside.shift(-window.top, -window.left).slices()
        out[:, rows, cols] = reader.read_region(inside, level)
    return out


def clip_to_image(
    name: str, window: Window, data: np.ndarray, channels: int, height: int, width: int
) -> tuple[Window, np.ndarray] | None:
    """The part of a writer's ``data`` (C, h, w) at ``window`` that lies inside the image.

    Writers drop what falls outside (margins, padding). None when nothing is inside; a
    shape that does not match the window is an `InputError` naming the output ``name``.
    """
    if data.shape != (channels, window.height, window.width):
        raise InputError(
            f"{name}: data of shape {tuple(data.shape)} does not match window {window} "
            f"with {channels} channel(s)"
        )
    inside = window.intersect(Window(0, 0, height, width))
    if inside is None:
        return None
    rows, cols = inside.shift(-window.top, -window.left).slices()
    return inside, data[:, rows, cols]
