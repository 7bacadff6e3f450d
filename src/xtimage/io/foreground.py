"""Foreground masks at low resolution, so the engine can skip empty regions.

Most of a slide is glass and much of a satellite swath is nodata. A mask computed on a
small thumbnail (a coarse pyramid level, reduced further in strips so memory stays
bounded for files without a pyramid) says which regions hold anything:

- `tissue_mask`: slides. Otsu's threshold on the chroma (max - min of R, G, B, over the
  value range) of the thumbnail's colours: tissue is stained, glass is grey or white,
  and dark areas (pen, unscanned borders) have little chroma even where noise gives
  them a high HSV saturation. Single-channel images threshold the intensity.
- `valid_mask`: files with a nodata value. A cell is valid when any of its pixels holds
  data in any band.

A mask is ``(mask (h, w) bool, downsample)``: cell (i, j) covers level-0 pixels
``[i * downsample, (i + 1) * downsample)`` along both axes. `region_has_foreground` maps
it onto a region plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from xtimage.errors import ConfigError, InputError
from xtimage.io.base import Reader
from xtimage.tiling import RegionPlan
from xtimage.window import Window

# Pixels read at once while reducing a level; bounds memory for unpyramided files.
_STRIP_PIXELS = 1 << 22


def thumbnail_level(reader: Reader, max_side: int) -> tuple[int, int]:
    """The level to reduce and the integer factor that brings its longer side to ``max_side``.

    The coarsest level whose longer side is still at least ``max_side`` (level 0 when
    every level is smaller).
    """
    if max_side < 1:
        raise ConfigError(f"thumbnail side must be positive, got {max_side}")
    large = [k for k, lv in enumerate(reader.levels) if max(lv.height, lv.width) >= max_side]
    level = max(large, key=lambda k: reader.levels[k].downsample, default=0)
    lv = reader.levels[level]
    return level, max(1, math.ceil(max(lv.height, lv.width) / max_side))


def reduce_level(
    reader: Reader,
    level: int,
    factor: int,
    pixel_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Block means of ``pixel_fn(pixels)`` over ``factor`` x ``factor`` cells of ``level``.

    Reads the level in strips of whole cells; a partial cell at the border averages the
    pixels it has.

    Returns:
        (K, ceil(h / factor), ceil(w / factor)) float32, K the channels of ``pixel_fn``'s
        output (default: the image's channels).
    """
    lv = reader.levels[level]
    pixel_fn = pixel_fn or (lambda x: x.astype(np.float32))
    cells_per_strip = max(1, _STRIP_PIXELS // (lv.width * factor * factor))
    rows_out, cols_out = math.ceil(lv.height / factor), math.ceil(lv.width / factor)
    out = None
    for row in range(0, rows_out, cells_per_strip):
        top = row * factor
        height = min(cells_per_strip * factor, lv.height - top)
        values = pixel_fn(reader.read_region(Window(top, 0, height, lv.width), level))  # (K, h, w)
        k, h, w = values.shape
        pad = np.full((k, -h % factor + h, -w % factor + w), np.nan, np.float32)
        pad[:, :h, :w] = values
        blocks = pad.reshape(k, pad.shape[1] // factor, factor, pad.shape[2] // factor, factor)
        if out is None:
            out = np.empty((k, rows_out, cols_out), np.float32)
        out[:, row : row + blocks.shape[1]] = np.nanmean(blocks, axis=(2, 4))
    assert out is not None
    return out


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the split of ``values`` maximising the between-class variance.

    Foreground is ``values > threshold``. Computed on a histogram of ``bins`` bins over
    the values' range; constant input returns its value (everything background).
    """
    values = np.asarray(values, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise InputError("Otsu threshold of an empty image")
    low, high = values.min(), values.max()
    if low == high:
        return float(low)
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(counts)[:-1]  # background: bins 0..t
    weight1 = values.size - weight0
    sum0 = np.cumsum(counts * centres)[:-1]
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (np.sum(counts * centres) - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[1:-1][np.argmax(between)])


def tissue_mask(
    reader: Reader, max_side: int = 1024, min_chroma: float = 0.05, dark: bool = True
) -> tuple[np.ndarray, float]:
    """Tissue of a slide by Otsu thresholding a thumbnail.

    Args:
        reader: the slide (RGB), or a single-channel image.
        max_side: longer side of the thumbnail the mask is computed on.
        min_chroma: chroma (0 to 1) below which a cell is never tissue, so that an empty
            slide does not split its noise into two classes.
        dark: for single-channel images, whether foreground is darker than background.

    Returns:
        (mask (h, w) bool, downsample of a mask cell relative to level 0).
    """
    level, factor = thumbnail_level(reader, max_side)
    thumb = reduce_level(reader, level, factor)  # (C, h, w) mean colours
    if reader.channels >= 3:
        rgb = thumb[:3]
        full_range = np.iinfo(reader.dtype).max if reader.dtype.kind in "iu" else rgb.max()
        score = (rgb.max(axis=0) - rgb.min(axis=0)) / max(float(full_range), 1e-12)  # chroma
        mask = (score > otsu_threshold(score)) & (score > min_chroma)
    else:
        score = thumb[0]
        threshold = otsu_threshold(score)
        mask = score <= threshold if dark else score > threshold
    return mask, reader.levels[level].downsample * factor


def valid_mask(
    reader: Reader, max_side: int = 1024, nodata: float | None = None
) -> tuple[np.ndarray, float]:
    """Cells holding data: any pixel of any band differs from nodata (and is not NaN).

    Args:
        reader: the image.
        max_side: longer side of the mask.
        nodata: overrides the reader's nodata value.

    Returns:
        (mask (h, w) bool, downsample of a mask cell relative to level 0).
    """
    nodata = reader.nodata if nodata is None else nodata
    if nodata is None:
        raise InputError(
            f"{reader.path or 'array'}: has no nodata value, so no valid-data mask; pass "
            f"nodata= or use tissue_mask"
        )

    def valid(x: np.ndarray) -> np.ndarray:  # (C, h, w) -> (1, h, w)
        return ((x != nodata) & ~np.isnan(x)).any(axis=0, keepdims=True).astype(np.float32)

    level, factor = thumbnail_level(reader, max_side)
    fraction = reduce_level(reader, level, factor, valid)[0]
    return fraction > 0, reader.levels[level].downsample * factor


def region_has_foreground(
    plan: RegionPlan, mask: np.ndarray, downsample: float, min_fraction: float = 0.0
) -> list[bool]:
    """For each region of ``plan``, whether its core holds foreground.

    A region's core (the part of the image it owns) is mapped onto the mask, rounded
    outward so that partly covered cells count; the region is kept when more than
    ``min_fraction`` of those cells are foreground (0: any cell). Computed from the mask's
    summed-area table per row and column of regions: no Python work per region.
    """

    def spans(count: int, size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
        start = np.arange(count, dtype=np.int64) * plan.core  # core starts, clipped ends
        stop = np.minimum(start + plan.core, size)
        lo = np.floor_divide(start, downsample).astype(np.int64)  # Window.scale's rounding
        hi = (-np.floor_divide(-stop, downsample)).astype(np.int64)
        return np.clip(lo, 0, cells), np.clip(hi, 0, cells)

    r0, r1 = spans(plan.rows, plan.height, mask.shape[0])
    c0, c1 = spans(plan.cols, plan.width, mask.shape[1])
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    sums = (
        table[r1[:, None], c1[None, :]] - table[r0[:, None], c1[None, :]]
        - table[r1[:, None], c0[None, :]] + table[r0[:, None], c0[None, :]]
    )  # (rows, cols) foreground cells per core  # fmt: skip
    counts = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        keep = (counts > 0) & (sums / np.maximum(counts, 1) > min_fraction)
    return keep.reshape(-1).tolist()
