"""Physical units: sizes in µm or m, and reading at a target resolution.

A slide scanned at 0.25 µm/px and a model trained at 0.5 µm/px, or a 10 m/px model on a
3 m/px scene: `ResampledReader` presents any reader at a target pixel size, reading from
the coarsest pyramid level that is still at least as fine as the target (the nearest
level, never upsampling from a coarser one) and resampling the remaining factor.

Resampling is exact area averaging ("area", for images) or the nearest source pixel
("nearest", for class maps). Output pixel ``i`` covers level-0 pixels
``[i * s, (i + 1) * s)`` with ``s = target / pixel size``, a rule that depends only on
``i``, so windows resampled one by one equal the whole image resampled at once (no seams
between regions). The last row and column cover what is left of the image
(``ceil(H / s)`` rows). With a nodata value, averages are over valid pixels only and a
pixel with no valid source is nodata.

A physical request on a file without pixel-size metadata is an error that says how to
supply the pixel size; it is never guessed.
"""

from __future__ import annotations

import math
import re

import numpy as np

from xtimage.errors import ConfigError, InputError
from xtimage.io.base import GeoInfo, Level, PixelSize, Reader, check_window
from xtimage.window import Window

# Metres per unit.
UNITS = {"nm": 1e-9, "um": 1e-6, "µm": 1e-6, "mm": 1e-3, "cm": 1e-2, "m": 1.0, "km": 1e3}


def parse_length(text: str) -> tuple[float, str]:
    """``"0.5um"`` -> (0.5, "um"); ``"10 m"`` -> (10.0, "m")."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zµ]+)\s*", text)
    if not match or match.group(2) not in UNITS:
        raise ConfigError(
            f"length '{text}' is not a number with a unit, e.g. '0.5um' or '10m' "
            f"(units: {', '.join(UNITS)})"
        )
    return float(match.group(1)), match.group(2)


def pixel_size_of(reader: Reader, override: PixelSize | None = None) -> PixelSize:
    """The reader's level-0 pixel size (or ``override``); an error says how to supply one."""
    if override is not None:
        if override.unit not in UNITS or override.x <= 0 or override.y <= 0:
            raise ConfigError(f"pixel size {override} needs positive sizes and a unit in {UNITS}")
        return override
    if reader.pixel_size is not None:
        return reader.pixel_size
    why = (
        "its CRS is geographic (degrees), so pixels have no size in metres; reproject it "
        "(e.g. gdalwarp -t_srs EPSG:<UTM zone>) or"
        if getattr(reader, "geo", None) is not None
        else "it has no pixel-size metadata (OME PhysicalSize, Aperio MPP, resolution tags "
        "in pixels per cm, or a projected CRS); "
    )
    raise InputError(
        f"{reader.path or 'array'}: a physical size or resolution was requested but {why} "
        f"pass the pixel size explicitly, e.g. pixel_size=PixelSize(0.25, 0.25, 'um'), or "
        f"give sizes in pixels"
    )


def to_pixels(
    length: int | str, reader: Reader, pixel_size: PixelSize | None = None, axis: str = "x"
) -> int:
    """A size in pixels from pixels (int) or a physical length (``"128um"``), rounded.

    Args:
        length: pixels, or a number with a unit.
        reader: the image whose level-0 pixels are meant.
        pixel_size: overrides the file's pixel size.
        axis: "x" or "y", for files whose pixels are not square.
    """
    if isinstance(length, int):
        return length
    value, unit = parse_length(length)
    size = pixel_size_of(reader, pixel_size)
    per_pixel = (size.x if axis == "x" else size.y) * UNITS[size.unit]
    return max(1, round(value * UNITS[unit] / per_pixel))


class ResampledReader:
    """A reader at a target pixel size, read from the nearest pyramid level and resampled.

    Args:
        reader: the source image.
        target: the pixel size wanted, in ``unit`` per pixel (e.g. 0.5 with "um").
        unit: unit of ``target``, one of `UNITS`.
        pixel_size: the source's level-0 pixel size, when the file has none (or to
            override it).
        method: "area" (area-weighted mean; images) or "nearest" (class maps).
    """

    def __init__(
        self,
        reader: Reader,
        target: float,
        unit: str,
        pixel_size: PixelSize | None = None,
        method: str = "area",
    ) -> None:
        if unit not in UNITS or not target > 0:
            raise ConfigError(
                f"target {target} {unit}: needs a positive size and a unit in {UNITS}"
            )
        if method not in ("area", "nearest"):
            raise ConfigError(f"resampling method '{method}'; known: area, nearest")
        source = pixel_size_of(reader, pixel_size)
        metres = UNITS[source.unit]
        # level-0 pixels per output pixel, along y and x
        self._scale = (
            target * UNITS[unit] / (source.y * metres),
            target * UNITS[unit] / (source.x * metres),
        )
        self.reader, self.method = reader, method
        self.source_level = max(
            (
                k
                for k, lv in enumerate(reader.levels)
                if lv.downsample <= min(self._scale) * (1 + 1e-6)
            ),
            key=lambda k: reader.levels[k].downsample,
            default=0,
        )
        self.path, self.channels, self.dtype = reader.path, reader.channels, reader.dtype
        self.height = math.ceil(reader.height / self._scale[0] - 1e-9)
        self.width = math.ceil(reader.width / self._scale[1] - 1e-9)
        self.levels = [Level(self.height, self.width, 1.0)]
        self.pixel_size = PixelSize(target, target, unit)
        self.nodata = reader.nodata
        self.backend = reader.backend
        self.geo = None
        if reader.geo is not None:
            a, b, c, d, e, f = reader.geo.transform
            sy, sx = self._scale
            self.geo = GeoInfo(
                (a * sx, b * sy, c, d * sx, e * sy, f), reader.geo.crs_wkt, reader.geo.epsg
            )
        self.metadata = {
            **reader.metadata,
            "resampled_from_level": self.source_level,
            "resampling": method,
        }

    def read_region(self, window: Window, level: int = 0) -> np.ndarray:
        check_window(self, window, level)
        src = self.reader.levels[self.source_level]
        # source pixels per output pixel on the source level, from its actual size
        sy = self._scale[0] * src.height / self.reader.height
        sx = self._scale[1] * src.width / self.reader.width
        rows = _source_span(window.top, window.height, sy, src.height)
        cols = _source_span(window.left, window.width, sx, src.width)
        block = self.reader.read_region(
            Window(rows[0], cols[0], rows[1] - rows[0], cols[1] - cols[0]), self.source_level
        )  # (C, h_src, w_src)
        edges_y = _edges(window.top, window.height, sy, src.height) - rows[0]
        edges_x = _edges(window.left, window.width, sx, src.width) - cols[0]
        if self.method == "nearest":
            iy = np.minimum(np.floor((edges_y[:-1] + edges_y[1:]) / 2), block.shape[1] - 1)
            ix = np.minimum(np.floor((edges_x[:-1] + edges_x[1:]) / 2), block.shape[2] - 1)
            return np.ascontiguousarray(block[:, iy.astype(int)][:, :, ix.astype(int)])
        values = block.astype(np.float64)
        weight = None
        if self.nodata is not None:
            weight = (block != self.nodata) & ~np.isnan(values)
            values = np.where(weight, values, 0.0)
            weight = _area(_area(weight.astype(np.float64), edges_y, 1), edges_x, 2)
        out = _area(_area(values, edges_y, 1), edges_x, 2)  # (C, h, w) sums over areas
        if weight is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                out = np.where(weight > 0, out / np.maximum(weight, 1e-300), self.nodata)
        else:
            out /= np.diff(edges_y)[:, None] * np.diff(edges_x)[None, :]
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        return out.astype(self.dtype)

    def close(self) -> None:
        self.reader.close()


def _edges(start: int, count: int, scale: float, size: int) -> np.ndarray:
    """Source coordinates of the edges of output pixels ``start .. start + count``."""
    return np.minimum(np.arange(start, start + count + 1, dtype=np.float64) * scale, size)


def _source_span(start: int, count: int, scale: float, size: int) -> tuple[int, int]:
    """Integer source range covering output pixels ``start .. start + count``."""
    edges = _edges(start, count, scale, size)
    first = min(int(math.floor(edges[0])), size - 1)
    return first, max(min(int(math.ceil(edges[-1])), size), first + 1)


def _area(x: np.ndarray, edges: np.ndarray, axis: int) -> np.ndarray:
    """Integrals of the piecewise-constant ``x`` between consecutive ``edges`` along ``axis``.

    ``edges`` are source coordinates relative to the first element of ``x``; the integral
    up to t is ``cumsum(x)[floor(t)] + frac(t) * x[floor(t)]``.
    """
    n = x.shape[axis]
    shape = [1] * x.ndim
    shape[axis] = n + 1
    cum = np.concatenate([np.zeros_like(np.take(x, [0], axis)), np.cumsum(x, axis)], axis)
    whole = np.clip(np.floor(edges).astype(int), 0, n)
    frac = edges - whole
    shape[axis] = len(edges)
    frac = frac.reshape(shape)
    tail = np.take(x, np.minimum(whole, n - 1), axis) * np.where(whole.reshape(shape) < n, frac, 0)
    integral = np.take(cum, whole, axis) + tail
    return np.diff(integral, axis=axis)
