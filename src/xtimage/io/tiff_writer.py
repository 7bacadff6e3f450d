"""Tiled, pyramidal (OME-)TIFF output written chunk by chunk: masks, heatmaps, class maps.

Predictions arrive as windows in any order (region cores in raster order, typically not
aligned to the file's tiles), and a TIFF wants each tile compressed once, in order. So
windows go first into an uncompressed, tile-major scratch file beside the output (each
write reads, updates and writes back only the tiles it touches); `close` then builds
each pyramid level from the one above, 2 x 2 tiles at a time, and streams all levels'
tiles through tifffile's compressors. Memory holds a few tiles, never the image; the
scratch file takes about 4/3 of the raw image on disk and is deleted at the end.

Level 0's tiles are hashed as they stream into the file, and the digest is stored in
the file (`xtimage.io.digest`; not for the lossy JPEG and WebP). The output appears
under its final name only when `close` succeeds (`AtomicPath`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from xtimage.errors import ConfigError, require
from xtimage.integrity import PixelDigest
from xtimage.io.atomic import AtomicPath
from xtimage.io.base import PixelSize, clip_to_image
from xtimage.io.digest import GDAL_METADATA, gdal_metadata, lossless, patch_digest
from xtimage.window import Window

_COMPRESSIONS = {"none": None, "deflate": "zlib", "zlib": "zlib", "zstd": "zstd", "lzw": "lzw",
                 "jpeg": "jpeg", "webp": "webp", "lzma": "lzma"}  # fmt: skip


class _TileStore:
    """An uncompressed (H, W, C) raster on disk, stored tile after tile (tile-major)."""

    def __init__(
        self, path: Path, height: int, width: int, channels: int, dtype: np.dtype, tile: int
    ):
        self.path, self.height, self.width, self.tile = path, height, width, tile
        self.channels, self.dtype = channels, dtype
        self.grid = (math.ceil(height / tile), math.ceil(width / tile))
        self.tile_bytes = tile * tile * channels * dtype.itemsize
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self._fd, self.grid[0] * self.grid[1] * self.tile_bytes)  # sparse zeros

    def read_tile(self, ty: int, tx: int) -> np.ndarray:
        """Tile (ty, tx) as (tile, tile, C); never-written parts are zero."""
        data = os.pread(self._fd, self.tile_bytes, (ty * self.grid[1] + tx) * self.tile_bytes)
        return np.frombuffer(data, self.dtype).reshape(self.tile, self.tile, self.channels).copy()

    def write_tile(self, ty: int, tx: int, tile: np.ndarray) -> None:
        os.pwrite(self._fd, tile.tobytes(), (ty * self.grid[1] + tx) * self.tile_bytes)

    def write(self, window: Window, data: np.ndarray) -> None:
        """Store ``data`` (h, w, C) at ``window``, which lies inside the raster."""
        t = self.tile
        for ty in range(window.top // t, (window.bottom - 1) // t + 1):
            for tx in range(window.left // t, (window.right - 1) // t + 1):
                part = Window(ty * t, tx * t, t, t).intersect(window)
                tile = self.read_tile(ty, tx)
                dst_r, dst_c = part.shift(-ty * t, -tx * t).slices()
                src_r, src_c = part.shift(-window.top, -window.left).slices()
                tile[dst_r, dst_c] = data[src_r, src_c]
                self.write_tile(ty, tx, tile)

    def tiles(self) -> Iterator[np.ndarray]:
        """All tiles in row-major order, cropped at the right and bottom edges."""
        t = self.tile
        for ty in range(self.grid[0]):
            for tx in range(self.grid[1]):
                tile = self.read_tile(ty, tx)
                yield tile[: min(t, self.height - ty * t), : min(t, self.width - tx * t)]

    def halve(self, path: Path, resampling: str) -> _TileStore:
        """The next pyramid level, ``ceil(H / 2) x ceil(W / 2)``, built 2 x 2 tiles at a time."""
        half = _TileStore(
            path,
            math.ceil(self.height / 2),
            math.ceil(self.width / 2),
            self.channels,
            self.dtype,
            self.tile,
        )
        t = self.tile
        for ty in range(half.grid[0]):
            for tx in range(half.grid[1]):
                block = np.full((2 * t, 2 * t, self.channels), np.nan)  # NaN: outside the level
                for dy in range(2):
                    for dx in range(2):
                        sy, sx = 2 * ty + dy, 2 * tx + dx
                        if sy < self.grid[0] and sx < self.grid[1]:
                            rows = min(t, self.height - sy * t)
                            cols = min(t, self.width - sx * t)
                            tile = self.read_tile(sy, sx)[:rows, :cols]
                            block[dy * t : dy * t + rows, dx * t : dx * t + cols] = tile
                half.write_tile(ty, tx, _downsample2(block, resampling, self.dtype))
        return half

    def close(self) -> None:
        os.close(self._fd)
        self.path.unlink(missing_ok=True)


def _downsample2(block: np.ndarray, resampling: str, dtype: np.dtype) -> np.ndarray:
    """(2t, 2t, C) with NaN outside the level -> (t, t, C): 2 x 2 mean or top-left pixel."""
    if resampling == "nearest":
        out = block[::2, ::2]
    else:
        cells = block.reshape(block.shape[0] // 2, 2, block.shape[1] // 2, 2, -1)
        valid = ~np.isnan(cells)
        total = np.where(valid, cells, 0).sum(axis=(1, 3))
        out = total / np.maximum(valid.sum(axis=(1, 3)), 1)
        if np.issubdtype(dtype, np.integer):
            out = np.rint(out)
    return np.nan_to_num(out).astype(dtype)


class TiffWriter:
    """A (C, H, W) map written window by window to a tiled, pyramidal (OME-)TIFF.

    Args:
        path: the output file.
        height: image height in pixels.
        width: image width in pixels.
        channels: bands of the map (1 for masks and class maps).
        dtype: pixel type, e.g. uint8 for class maps, float32 for heatmaps.
        tile: tile side in pixels, a multiple of 16.
        compression: "deflate" (default), "zstd", "lzw", "jpeg" (uint8, 1 or 3 channels),
            "webp", "lzma" or "none".
        levels: pyramid levels including full resolution; None halves until the image
            fits in one tile.
        resampling: "mean" for continuous maps, "nearest" for class maps (labels must
            not be averaged).
        pixel_size: stored as OME PhysicalSize and resolution tags, so viewers show
            scale bars and readers find the resolution.
        ome: write OME-XML (QuPath, Bio-Formats and napari read the pyramid from it).
        nodata: declared in GDAL's GDAL_NODATA tag (read back by `TiffReader`, GDAL,
            QGIS), or None.
    """

    def __init__(
        self,
        path: str | Path,
        height: int,
        width: int,
        channels: int = 1,
        dtype: np.dtype | str = "uint8",
        tile: int = 256,
        compression: str = "deflate",
        levels: int | None = None,
        resampling: str = "mean",
        pixel_size: PixelSize | None = None,
        ome: bool = True,
        nodata: float | None = None,
    ) -> None:
        self._tifffile = require("tifffile", "tiff", "writing TIFF files")
        self.dtype = np.dtype(dtype)
        if min(height, width, channels) < 1:
            raise ConfigError(f"output size {channels} x {height} x {width} must be positive")
        if tile < 16 or tile % 16:
            raise ConfigError(f"TIFF tile side must be a multiple of 16, got {tile}")
        if compression not in _COMPRESSIONS:
            raise ConfigError(f"compression '{compression}'; known: {', '.join(_COMPRESSIONS)}")
        if compression == "jpeg" and (self.dtype != np.uint8 or channels not in (1, 3)):
            raise ConfigError(
                f"JPEG needs uint8 with 1 or 3 channels, got {self.dtype} x {channels}; use "
                f"deflate or zstd"
            )
        if resampling not in ("mean", "nearest"):
            raise ConfigError(f"pyramid resampling '{resampling}'; known: mean, nearest")
        if levels is None:
            levels = 1 + max(0, math.ceil(math.log2(max(height, width) / tile)))
        if levels < 1:
            raise ConfigError(f"a TIFF needs at least 1 level, got {levels}")
        self.height, self.width, self.channels, self.tile = height, width, channels, tile
        self.compression, self.levels, self.resampling = compression, levels, resampling
        self.pixel_size, self.ome, self.nodata = pixel_size, ome, nodata
        self._target = AtomicPath(path)
        self._store = _TileStore(
            self._target.temp.with_suffix(".level0"), height, width, channels, self.dtype, tile
        )

    def write(self, window: Window, data: np.ndarray) -> None:
        """Store ``data`` (C, h, w) at ``window``; parts outside the image are dropped."""
        clipped = clip_to_image(
            str(self._target.final), window, data, self.channels, self.height, self.width
        )
        if clipped is None:
            return
        inside, part = clipped
        self._store.write(inside, part.transpose(1, 2, 0).astype(self.dtype))

    def close(self) -> Path:
        """Build the pyramid, compress every tile into the file, and rename it into place."""
        stores = [self._store]
        try:
            for k in range(1, self.levels):
                stores.append(
                    stores[-1].halve(self._target.temp.with_suffix(f".level{k}"), self.resampling)
                )
            self._write_tiff(stores)
        except BaseException:
            self._target.abort()
            raise
        finally:
            for store in stores:
                store.close()
        return self._target.commit()

    def _write_tiff(self, stores: list[_TileStore]) -> None:
        rgb = self.channels == 3 and self.dtype == np.uint8
        options = {
            "tile": (self.tile, self.tile),
            "compression": _COMPRESSIONS[self.compression],
            "photometric": "rgb" if rgb else "minisblack",
            "planarconfig": "contig" if self.channels > 1 else None,
            "dtype": self.dtype,
        }
        if self.compression in ("deflate", "zlib", "zstd", "lzw", "lzma"):
            options["predictor"] = True
        extratags = []
        if self.nodata is not None:  # GDAL_NODATA, as text: "255", "nan"
            extratags.append((42113, "s", 0, f"{self.nodata:g}", True))
        digest = None
        if lossless(self.compression):  # the digest's bytes, filled in once it is known
            extratags.append((GDAL_METADATA, "s", 0, gdal_metadata(self.tile), True))
            digest = PixelDigest(self.channels, self.height, self.width, self.dtype, self.tile)
        metadata: dict = {"axes": "YXS" if self.channels > 1 else "YX"}
        resolution = {}
        if self.pixel_size is not None:
            unit = "µm" if self.pixel_size.unit == "um" else self.pixel_size.unit
            metadata.update(
                PhysicalSizeX=self.pixel_size.x, PhysicalSizeXUnit=unit,
                PhysicalSizeY=self.pixel_size.y, PhysicalSizeYUnit=unit,
            )  # fmt: skip
            if self.pixel_size.unit == "um":
                resolution = {
                    "resolution": (1e4 / self.pixel_size.x, 1e4 / self.pixel_size.y),
                    "resolutionunit": "CENTIMETER",
                }

        def shape(store: _TileStore) -> tuple[int, ...]:
            return (store.height, store.width) + ((self.channels,) if self.channels > 1 else ())

        def tiles(store: _TileStore, digest: PixelDigest | None = None) -> Iterator[np.ndarray]:
            for tile in store.tiles():
                if digest is not None:
                    digest.update(tile.transpose(2, 0, 1))
                yield tile if self.channels > 1 else tile[..., 0]

        bigtiff = (
            sum(s.height * s.width for s in stores) * self.channels * self.dtype.itemsize > 2**31
        )
        with self._tifffile.TiffWriter(self._target.temp, bigtiff=bigtiff, ome=self.ome) as tif:
            tif.write(
                tiles(stores[0], digest),
                shape=shape(stores[0]),
                subifds=len(stores) - 1,
                metadata=metadata if self.ome else None,
                extratags=extratags,
                **resolution,
                **options,
            )
            for store in stores[1:]:
                tif.write(tiles(store), shape=shape(store), subfiletype=1, **options)
        if digest is not None:
            patch_digest(self._target.temp, digest.hexdigest())

    def abort(self) -> None:
        """Drop everything written; the final name is never created."""
        self._store.close()
        self._target.abort()

    def __enter__(self) -> TiffWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
