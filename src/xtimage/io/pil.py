"""Ordinary PNG, JPEG, BMP and WebP images through Pillow.

These formats have no tiles, so a window cannot be decoded alone: the image is decoded
once, on the first read, and kept. That is fine for the photo-sized images these
formats hold; Pillow's decompression-bomb limit stays on, and an image above it is an
error that says to convert it to a tiled TIFF. Opening only reads the header.

Modes map to channels: L and I;16 give 1, LA 2, RGB 3, RGBA 4; palette images are
expanded to RGB(A); 1-bit images become bool.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from xtimage.errors import InputError
from xtimage.io.base import Level, check_window
from xtimage.window import Window

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class PilReader:
    """Reader of small, untiled images via Pillow.

    Args:
        path: the image file.
    """

    backend = "pil"

    def __init__(self, path: str | Path) -> None:
        from PIL import Image

        self.path = str(path)
        if not Path(path).is_file():
            raise InputError(f"{path}: no such file")
        try:
            with Image.open(path) as image:
                self.width, self.height = image.size
                self._mode = _target_mode(image.mode, "transparency" in image.info)
                self.metadata = {"format": image.format, "mode": image.mode, "tile": None}
        except Image.DecompressionBombError as exc:
            raise InputError(f"{path}: {exc}; convert it to a tiled TIFF") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"{path}: not a readable image ({exc})") from exc
        _check_trailer(self.path, self.metadata["format"])
        self.levels = [Level(self.height, self.width, 1.0)]
        self.pixel_size = None
        self.nodata = None
        self.geo = None
        self._array: np.ndarray | None = None
        self._lock = threading.Lock()
        probe = np.asarray(Image.new(self._mode, (1, 1)))
        self.dtype = probe.dtype
        self.channels = 1 if probe.ndim == 2 else probe.shape[2]

    def _load(self) -> np.ndarray:
        """Decode the whole image once, (C, H, W)."""
        with self._lock:
            if self._array is None:
                from PIL import Image

                try:
                    with Image.open(self.path) as image:
                        if image.mode != self._mode:
                            image = image.convert(self._mode)
                        array = np.asarray(image)
                except (OSError, SyntaxError, ValueError) as exc:
                    raise InputError(
                        f"{self.path}: the image data could not be decoded ({exc}); the file "
                        f"is corrupt or truncated"
                    ) from exc
                self._array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
            return self._array

    def read_region(self, window: Window, level: int = 0) -> np.ndarray:
        check_window(self, window, level)
        rows, cols = window.slices()
        return self._load()[:, rows, cols].copy()  # the caller owns it: never a view

    def close(self) -> None:
        self._array = None


def _check_trailer(path: str, image_format: str | None) -> None:
    """Refuse a PNG or JPEG whose end marker is missing: the file was cut short.

    Opening reads only the header, so without this a truncated file would pass `xt info`
    and fail at its first read. A PNG ends with its IEND chunk; a JPEG's entropy-coded
    data never holds ``FF D9`` (a 0xFF byte there is followed by 0x00), so the EOI marker
    lies at the end, possibly followed by a camera's trailer.
    """
    marker = {"PNG": b"IEND", "JPEG": b"\xff\xd9"}.get(image_format or "")
    if marker is None:
        return
    with open(path, "rb") as f:
        f.seek(max(f.seek(0, 2) - 4096, 0))
        tail = f.read()
    if marker not in tail:
        raise InputError(
            f"{path}: the {image_format} file has no end marker, so it is truncated (an "
            f"interrupted copy or download?); copy it again"
        )


def _target_mode(mode: str, transparent: bool) -> str:
    """The Pillow mode the image is converted to: palettes and colour spaces become RGB(A)."""
    if mode in ("P", "PA"):
        return "RGBA" if transparent or mode == "PA" else "RGB"
    if mode in ("RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return "RGB"
    return mode
