"""Reader over an in-memory or memory-mapped array (including `.npy` files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xtimage.errors import InputError
from xtimage.io.base import Level, PixelSize, check_window
from xtimage.window import Window


class ArrayReader:
    """A single-level reader over a (C, H, W) or (H, W) array.

    Args:
        array: the image; (H, W) is read as one channel.
        pixel_size: physical pixel size, when known.
        path: shown in error messages.
    """

    def __init__(
        self, array: np.ndarray, pixel_size: PixelSize | None = None, path: str | None = None
    ) -> None:
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3 or min(array.shape) == 0:
            raise InputError(
                f"{path or 'array'}: expected a (C, H, W) or (H, W) image, got shape "
                f"{tuple(array.shape)}"
            )
        self._array = array
        self.path = path
        self.channels, self.height, self.width = (int(s) for s in array.shape)
        self.dtype = array.dtype
        self.levels = [Level(self.height, self.width, 1.0)]
        self.pixel_size = pixel_size
        self.backend = "npy" if isinstance(array, np.memmap) else "array"
        self.nodata: float | None = None
        self.geo = None
        self.metadata: dict = {}

    @classmethod
    def from_npy(cls, path: str | Path) -> ArrayReader:
        """Memory-map a `.npy` file (nothing is loaded until a window is read)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        try:
            array = np.load(path, mmap_mode="r")
        except ValueError as exc:
            raise InputError(f"{path}: not a readable .npy file ({exc})") from exc
        return cls(array, path=str(path))

    def read_region(self, window: Window, level: int = 0) -> np.ndarray:
        check_window(self, window, level)
        rows, cols = window.slices()
        return self._array[:, rows, cols].copy()  # the caller owns it: never a view

    def close(self) -> None:
        pass
