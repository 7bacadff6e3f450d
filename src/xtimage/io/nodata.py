"""Nodata honoured end to end: pixels without data are neither seen nor predicted.

A file's nodata value (`Reader.nodata`), NaN in a float image, an alpha band (RGBA for an
RGB model: 0 is empty) or a user's mask (a single-band image of the same size, non-zero
where there is data) marks pixels that hold no data. For prediction (`ValidPixels`):

- *the model does not see them*: `ValidPixels.filled` reads the image with those pixels
  set to ``fill`` (0, in the file's own dtype, so valid pixels reach the model exactly as
  before), not -32768 or NaN;
- *regions wholly without data are skipped*: `ValidPixels.keep` finds them on a thumbnail
  (any valid pixel makes a cell valid) and confirms each candidate at full resolution, so
  a region with one valid pixel is never skipped;
- *outputs carry nodata where the input had none*: `MaskedWriter` writes `output_nodata`
  (255 / 65535 for class maps, NaN for float maps) at invalid pixels, and the output file
  declares that value (GeoTIFF: GDAL's NoData, which also fills the blocks of skipped
  regions and is left out of the overviews' averages).

Past the image border there is no nodata to honour: the engine repeats the nearest pixel
(`read_padded(mode="edge")`) and the padded part of an output is cut off. The constant
padding of `read_padded` fills with the reader's nodata value when it has one, else 0.
"""

from __future__ import annotations

import math

import numpy as np

from xtimage.errors import InputError
from xtimage.io.base import Reader, check_window
from xtimage.io.foreground import reduce_level, region_has_foreground, thumbnail_level
from xtimage.tiling import RegionPlan
from xtimage.window import Window


def output_nodata(dtype: np.dtype | str) -> float:
    """The nodata value of an output map: the largest integer (never a class index below
    it), NaN for floats."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "iu" else math.nan


class ValidPixels:
    """Which pixels of an image hold data.

    Args:
        reader: the image.
        nodata: its nodata value (default: ``reader.nodata``); NaN pixels of a float
            image never hold data.
        mask: a single-band image of the reader's size, non-zero where there is data.
        alpha: the index of an alpha band: 0 there means no data (the band itself is
            not data: the other bands decide the nodata rule).
    """

    def __init__(
        self,
        reader: Reader,
        nodata: float | None = None,
        mask: Reader | None = None,
        alpha: int | None = None,
    ) -> None:
        self.reader = reader
        self.nodata = reader.nodata if nodata is None else nodata
        self.mask, self.alpha = mask, alpha
        self.skipped: list[Window] = []  # cores of the regions the last `keep` dropped
        if mask is not None and (mask.height, mask.width) != (reader.height, reader.width):
            raise InputError(
                f"{mask.path or 'mask'}: mask of {mask.height} x {mask.width} px for an image "
                f"of {reader.height} x {reader.width}; give a mask of the image's size"
            )

    @classmethod
    def of(
        cls, reader: Reader, channels: int | None = None, mask: Reader | None = None
    ) -> ValidPixels | None:
        """The valid pixels of ``reader`` for a model of ``channels`` bands, or None when
        nothing marks any pixel as empty. An alpha band is the last of RGBA for an RGB model
        or of grey + alpha for a one-band one (the bands `match_channels` drops)."""
        alpha = None
        if channels is not None and (channels, reader.channels) in ((3, 4), (1, 2)):
            alpha = reader.channels - 1
        if reader.nodata is None and mask is None and alpha is None:
            return None
        return cls(reader, mask=mask, alpha=alpha)

    def of_pixels(self, pixels: np.ndarray, window: Window | None = None) -> np.ndarray:
        """(h, w) bool: True where ``pixels`` (C, h, w), read at ``window`` of level 0 (for
        the user's mask), hold data in any band."""
        data = pixels if self.alpha is None else np.delete(pixels, self.alpha, axis=0)
        invalid = np.isnan(data) if data.dtype.kind == "f" else np.zeros(data.shape, bool)
        if self.nodata is not None and not math.isnan(self.nodata):
            invalid |= data == np.asarray(self.nodata).astype(data.dtype)
        valid = ~invalid.all(axis=0)
        if self.alpha is not None:
            valid &= pixels[self.alpha] != 0
        if self.mask is not None and window is not None:
            valid &= self.mask.read_region(window, 0)[0] != 0
        return valid

    def pixels(self, window: Window) -> np.ndarray:
        """(h, w) bool of ``window`` (inside the image): True where there is data."""
        check_window(self.reader, window, 0)
        return self.of_pixels(self.reader.read_region(window, 0), window)

    def keep(self, plan: RegionPlan, max_side: int = 1024) -> list[bool]:
        """Per region of ``plan``, whether its core holds any valid pixel.

        A thumbnail proposes the regions without data; each is confirmed by reading its
        core, so only regions wholly without data are dropped.
        """
        level, factor = thumbnail_level(self.reader, max_side)
        fraction = reduce_level(  # (h, w): the share of valid pixels in each cell
            self.reader, level, factor, lambda x: self.of_pixels(x)[None].astype(np.float32)
        )[0]
        downsample = self.reader.levels[level].downsample * factor
        keep = region_has_foreground(plan, fraction > 0, downsample)
        image = Window(0, 0, plan.height, plan.width)
        self.skipped = []
        for index in range(plan.num_regions):
            core = plan.core_window(index).intersect(image)
            assert core is not None
            if self.mask is not None and keep[index]:
                keep[index] = bool(self.mask.read_region(core, 0).any())
            if not keep[index]:
                keep[index] = bool(self.pixels(core).any())
            if not keep[index]:
                self.skipped.append(core)
        return keep

    def filled(self, fill: float = 0) -> Reader:
        """The image with its invalid pixels set to ``fill`` (the reader's dtype kept)."""
        return _FilledReader(self, fill)


class _FilledReader:
    """``ValidPixels.reader`` whose pixels without data read as ``fill``."""

    def __init__(self, valid: ValidPixels, fill: float) -> None:
        reader = valid.reader
        for name in ("path", "height", "width", "channels", "dtype", "levels", "pixel_size",
                     "backend", "geo", "metadata"):  # fmt: skip
            setattr(self, name, getattr(reader, name))
        self.nodata = None  # no pixel holds it any more
        self._valid, self._fill = valid, np.asarray(fill).astype(reader.dtype)

    def read_region(self, window: Window, level: int = 0) -> np.ndarray:
        pixels = self._valid.reader.read_region(window, level)
        # overviews: the nodata value only (a user's mask is read at level 0)
        valid = self._valid.of_pixels(pixels, window if level == 0 else None)
        return np.where(valid, pixels, self._fill)

    def close(self) -> None:
        self._valid.reader.close()


class MaskedWriter:
    """A `Writer` that stores ``value`` wherever the input has no data, and over the cores
    of the regions `ValidPixels.keep` skipped (written on `close`).

    Args:
        writer: the output, declaring ``value`` as its nodata.
        valid: the input's valid pixels; windows are clipped to the image.
        value: the output's nodata value (`output_nodata`).
    """

    def __init__(self, writer, valid: ValidPixels, value: float) -> None:
        self.writer, self.valid, self.value = writer, valid, value

    @classmethod
    def over(cls, valid: ValidPixels | None, value: float, writer):
        """``writer`` masked by ``valid``, or ``writer`` itself when ``valid`` is None."""
        return writer if valid is None else cls(writer, valid, value)

    def write(self, window: Window, data: np.ndarray) -> None:
        reader = self.valid.reader
        inside = window.intersect(Window(0, 0, reader.height, reader.width))
        if inside is None:
            return
        rows, cols = inside.shift(-window.top, -window.left).slices()
        part = np.array(data[:, rows, cols])
        part[:, ~self.valid.pixels(inside)] = self.value
        self.writer.write(inside, part)

    def close(self):
        for core in self.valid.skipped:
            self.writer.write(core, np.full((1, core.height, core.width), self.value))
        return self.writer.close()

    def abort(self) -> None:
        self.writer.abort()
