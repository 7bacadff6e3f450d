"""Whole-slide images (SVS, NDPI, MRXS, SCN, BIF, ...) through OpenSlide.

openslide-python with the openslide-bin wheel brings its own library, so this backend
installs with pip alone (``pip install 'xtimage[slide]'``). OpenSlide reads only the
tiles a window overlaps and is safe to call from several threads.

OpenSlide addresses a window by its top-left corner in level-0 pixels and its size in
the level's pixels; windows here are in the level's own coordinates, converted with the
level's downsample factor. OpenSlide returns RGBA with transparent pixels where nothing
was scanned; they are filled with the slide's background colour (white unless the file
says otherwise), so arrays are RGB, (3, h, w) uint8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xtimage.errors import InputError, require
from xtimage.io.base import Level, PixelSize, check_window
from xtimage.window import Window

# Suffixes OpenSlide's vendor formats use (TIFF-based slides with .tif/.tiff are detected).
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")


class SlideReader:
    """Reader of whole-slide images via OpenSlide.

    Args:
        path: the slide file (for MRXS, the ``.mrxs`` file beside its data folder).
    """

    backend = "openslide"

    def __init__(self, path: str | Path) -> None:
        openslide = require("openslide", "slide", "reading whole-slide images")
        self.path = str(path)
        if not Path(path).exists():
            raise InputError(f"{path}: no such file")
        try:
            self._slide = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise InputError(
                f"{path}: not a slide format OpenSlide can read; for plain or OME TIFF use "
                f"backend='tiff'"
            ) from exc
        except (openslide.OpenSlideError, OSError) as exc:
            raise InputError(f"{path}: OpenSlide cannot open the slide ({exc}); corrupt?") from exc
        self._error = openslide.OpenSlideError
        props = self._slide.properties
        self.width, self.height = self._slide.dimensions
        self.channels, self.dtype = 3, np.dtype(np.uint8)
        self.levels = [
            Level(h, w, float(d))
            for (w, h), d in zip(
                self._slide.level_dimensions, self._slide.level_downsamples, strict=True
            )
        ]
        mpp_x, mpp_y = props.get("openslide.mpp-x"), props.get("openslide.mpp-y")
        self.pixel_size = PixelSize(float(mpp_y), float(mpp_x), "um") if mpp_x and mpp_y else None
        self.nodata = None
        self.geo = None
        background = props.get("openslide.background-color", "FFFFFF")
        self._background = np.array([int(background[i : i + 2], 16) for i in (0, 2, 4)], np.float32)
        tile = (
            props.get("openslide.level[0].tile-height"),
            props.get("openslide.level[0].tile-width"),
        )
        self.metadata = {
            "format": props.get("openslide.vendor", "unknown"),
            "tile": [int(t) for t in tile] if all(tile) else None,
            "objective_power": props.get("openslide.objective-power"),
            "associated_images": sorted(self._slide.associated_images),
            "background": background,
        }

    def read_region(self, window: Window, level: int = 0) -> np.ndarray:
        lv = check_window(self, window, level)
        location = (round(window.left * lv.downsample), round(window.top * lv.downsample))
        try:
            rgba = np.asarray(
                self._slide.read_region(location, level, (window.width, window.height))
            )
        except self._error as exc:
            raise InputError(
                f"{self.path}: reading {window} at level {level} failed ({exc}); the slide is "
                f"corrupt or truncated"
            ) from exc
        rgb, alpha = rgba[..., :3], rgba[..., 3:]  # (h, w, 3), (h, w, 1)
        if alpha.min() < 255:
            weight = alpha.astype(np.float32) / 255
            rgb = np.rint(rgb * weight + self._background * (1 - weight)).astype(np.uint8)
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))  # (3, h, w)

    def close(self) -> None:
        self._slide.close()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
