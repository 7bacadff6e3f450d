"""Digests that let a reader tell a damaged file from a good one.

A checkpoint stores the digest of its tensors in its metadata and checks it on load, so
a flipped byte (a bad disk, a damaged copy) is an error naming the file, not weights that
load and predict garbage. A raster `xt predict` writes stores the digest of its pixels
(`PixelDigest`, fed tile by tile while the file is written; `digest_pixels` gives the
same value for the whole array in memory); `xtimage.io.digest` reads and checks it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

PIXEL_FORMAT = "xtimage-pixels/1"


def digest_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def pixel_tiles(height: int, width: int, tile: int) -> Iterator[tuple[int, int, int, int]]:
    """``(top, left, h, w)`` of the ``tile`` x ``tile`` grid's tiles in row-major order,
    cropped at the right and bottom edges: the order `PixelDigest` takes them in."""
    for ty in range(math.ceil(height / tile)):
        for tx in range(math.ceil(width / tile)):
            top, left = ty * tile, tx * tile
            yield top, left, min(tile, height - top), min(tile, width - left)


class PixelDigest:
    """SHA-256 of a (C, H, W) raster, fed one tile at a time.

    The digest covers the raster's shape, pixel type and tile side, then every tile of
    the ``tile`` x ``tile`` grid in row-major order (`pixel_tiles`), each as its (C, h, w)
    little-endian bytes. Feeding tiles is how a writer hashes what it streams into a file
    without holding the image; `digest_pixels` is the same over an array in memory.

    Args:
        channels: bands.
        height: image height in pixels.
        width: image width in pixels.
        dtype: pixel type.
        tile: side of the grid the digest walks (any positive value; writers use their
            file's tile side, and store it beside the digest).
    """

    def __init__(self, channels: int, height: int, width: int, dtype: np.dtype | str,
                 tile: int) -> None:  # fmt: skip
        if tile < 1:
            raise ValueError(f"digest tile side must be positive, got {tile}")
        self.shape = (channels, height, width)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.tile = tile
        self._tiles = pixel_tiles(height, width, tile)
        self._hash = hashlib.sha256(
            f"{PIXEL_FORMAT}|{channels}x{height}x{width}|{self.dtype.str}|{tile}|".encode()
        )

    def update(self, tile: np.ndarray) -> None:
        """Add the next tile, (C, h, w) as `pixel_tiles` crops it."""
        top, left, h, w = next(self._tiles, (0, 0, 0, 0))
        if tile.shape != (self.shape[0], h, w):
            raise ValueError(
                f"pixel digest: expected the tile at ({top}, {left}) of shape "
                f"{(self.shape[0], h, w)}, got {tile.shape}"
            )
        self._hash.update(np.ascontiguousarray(tile, dtype=self.dtype).data)

    def hexdigest(self) -> str:
        """The digest once every tile was added."""
        if next(self._tiles, None) is not None:
            raise ValueError("pixel digest: not every tile was added")
        return self._hash.hexdigest()


def digest_pixels(array: np.ndarray, tile: int) -> str:
    """`PixelDigest` of a (C, H, W) array held in memory."""
    digest = PixelDigest(*array.shape, array.dtype, tile)
    for top, left, h, w in pixel_tiles(array.shape[1], array.shape[2], tile):
        digest.update(array[:, top : top + h, left : left + w])
    return digest.hexdigest()
