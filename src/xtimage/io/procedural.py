"""A procedural image: pixels computed on the fly from their coordinates and a seed.

For benchmarks at sizes no disk holds comfortably (a 100,000 x 100,000 RGB image is 30
GB): a `Reader` whose every window is generated when asked, so the image never exists
as a whole. A pixel depends only on its absolute (row, col), its channel and the seed,
never on the window that reads it, so any window equals the same crop of a larger one
and two reads of a window are identical, on any machine (integer arithmetic only).

The pattern is separable, ``pixel(c, r, x) = row_c[r] + col_c[x]`` (uint8, wrapping),
each 1-D term a triangle wave plus hashed noise: generating a window costs one add per
pixel, so reading stays far cheaper than encoding the region.
"""

from __future__ import annotations

import numpy as np

from xtimage.errors import ConfigError
from xtimage.io.base import Level, check_window
from xtimage.window import Window

_MASK64 = np.uint64(2**64 - 1)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a well-mixed uint64 hash of each uint64 in ``x``."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class ProceduralReader:
    """A single-level uint8 image of any size, generated window by window.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        channels: number of channels.
        seed: selects the image; the same seed always gives the same pixels.
    """

    backend = "procedural"

    def __init__(self, height: int, width: int, channels: int = 3, seed: int = 0) -> None:
        for name, value in (("height", height), ("width", width), ("channels", channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(
                    f"procedural image {name} must be a positive integer, got {value!r}"
                )
        if not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ConfigError(
                f"procedural image seed must be an integer in [0, 2**32), got {seed!r}"
            )
        self.height, self.width, self.channels, self.seed = height, width, channels, seed
        self.path = f"procedural(seed={seed})"
        self.dtype = np.dtype(np.uint8)
        self.levels = [Level(height, width, 1.0)]
        self.pixel_size = None
        self.nodata = None
        self.geo = None
        self.metadata = {"format": "procedural", "seed": seed, "tile": None, "compression": None}

    def _term(self, start: int, length: int, channel: int, axis: int) -> np.ndarray:
        """The 1-D term of ``channel`` along ``axis`` (0 rows, 1 columns), uint8."""
        index = np.arange(start, start + length, dtype=np.int64)
        period = 97 + 61 * channel + 37 * axis  # distinct per channel and axis
        wave = np.abs(index % period - period // 2) * (120 // (period // 2))  # 0..~120
        stream = (self.seed * 1_000_003 + channel) * 2 + axis  # one hash stream per term
        key = _splitmix64(np.array([stream], dtype=np.uint64))
        noise = _splitmix64(index.astype(np.uint64) ^ key) & np.uint64(31)  # 0..31
        return (wave + noise.astype(np.int64)).astype(np.uint8)

    def read_region(self, window: Window, level: int = 0) -> np.ndarray:
        """Pixels of ``window`` as (C, h, w) uint8."""
        check_window(self, window, level)
        out = np.empty((self.channels, window.height, window.width), dtype=np.uint8)
        for c in range(self.channels):
            rows = self._term(window.top, window.height, c, 0)  # (h,)
            cols = self._term(window.left, window.width, c, 1)  # (w,)
            np.add(rows[:, None], cols[None, :], out=out[c])  # (h, w), wraps mod 256
        return out

    def close(self) -> None:
        pass
