"""GeoTIFF output written chunk by chunk, keeping the input's georeference.

A prediction for a satellite scene must land on the map where the scene is: the writer
takes the input's affine transform and CRS (`GeoInfo`, e.g. ``reader.geo``) and GDAL
writes each window into its tiles as it comes (GDAL's block cache bounds memory). On
`close`, the digest of the pixels is computed block by block from what GDAL wrote and
stored in the file (`xtimage.io.digest`; not for lossy codecs), internal overviews are
built (average for continuous maps, nearest for class maps) and, with ``cog=True``, the
file is rewritten with the Cloud-Optimised layout (GDAL's COG driver, streaming). The
file appears under its final name only when `close` succeeds.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from xtimage.errors import ConfigError, require
from xtimage.integrity import PixelDigest, pixel_tiles
from xtimage.io.atomic import AtomicPath
from xtimage.io.base import GeoInfo, clip_to_image
from xtimage.io.digest import DIGEST_ITEM, TILE_ITEM, lossless
from xtimage.window import Window


class GeoTiffWriter:
    """A (C, H, W) map written window by window to a tiled GeoTIFF.

    Args:
        path: the output file.
        height: image height in pixels.
        width: image width in pixels.
        channels: bands.
        dtype: pixel type.
        geo: georeference to keep, usually the input reader's ``geo``; None writes a
            plain tiled TIFF (no CRS).
        nodata: nodata value to declare, or None.
        tile: block side in pixels, a multiple of 16.
        compression: GDAL compression: "deflate", "zstd", "lzw", "none", ...
        overviews: build internal overviews (factors 2, 4, ... down to one tile).
        resampling: "average" for continuous maps, "nearest" for class maps.
        cog: rewrite as a Cloud-Optimised GeoTIFF on close.
    """

    def __init__(
        self,
        path: str | Path,
        height: int,
        width: int,
        channels: int = 1,
        dtype: np.dtype | str = "uint8",
        geo: GeoInfo | None = None,
        nodata: float | None = None,
        tile: int = 256,
        compression: str = "deflate",
        overviews: bool = True,
        resampling: str = "average",
        cog: bool = False,
    ) -> None:
        self._rasterio = require("rasterio", "geo", "writing GeoTIFF files")
        if tile < 16 or tile % 16:
            raise ConfigError(f"GeoTIFF block side must be a multiple of 16, got {tile}")
        if resampling not in ("average", "nearest"):
            raise ConfigError(f"overview resampling '{resampling}'; known: average, nearest")
        self.height, self.width, self.channels = height, width, channels
        self.tile, self.overviews, self.resampling, self.cog = tile, overviews, resampling, cog
        self.compression = compression
        self._target = AtomicPath(path)
        profile = {
            "driver": "GTiff",
            "height": height,
            "width": width,
            "count": channels,
            "dtype": np.dtype(dtype).name,
            "tiled": True,
            "blockxsize": tile,
            "blockysize": tile,
            "compress": compression,
            "nodata": nodata,
            "BIGTIFF": "IF_SAFER",
        }
        if geo is not None:
            profile["crs"] = self._rasterio.crs.CRS.from_wkt(geo.crs_wkt)
            profile["transform"] = self._rasterio.Affine(*geo.transform)
        try:
            with warnings.catch_warnings():  # no georeference is what was asked for
                warnings.simplefilter("ignore", self._rasterio.errors.NotGeoreferencedWarning)
                self._ds = self._rasterio.open(self._scratch(), "w+", **profile)  # + : digest
        except (self._rasterio.errors.RasterioError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: GDAL cannot create this GeoTIFF ({exc})") from exc

    def _scratch(self) -> Path:
        """Where GDAL writes: the temporary name, or a second one when a COG follows."""
        return self._target.temp.with_suffix(".gtiff") if self.cog else self._target.temp

    def write(self, window: Window, data: np.ndarray) -> None:
        """Store ``data`` (C, h, w) at ``window``; parts outside the image are dropped."""
        clipped = clip_to_image(
            str(self._target.final), window, data, self.channels, self.height, self.width
        )
        if clipped is None:
            return
        inside, part = clipped
        win = self._rasterio.windows.Window(inside.left, inside.top, inside.width, inside.height)
        self._ds.write(np.ascontiguousarray(part, dtype=self._ds.dtypes[0]), window=win)

    def close(self) -> Path:
        """Store the pixel digest, build overviews, (optionally) convert to COG, and rename
        into place."""
        try:
            if lossless(self.compression):
                self._ds.update_tags(**{DIGEST_ITEM: self._digest(), TILE_ITEM: self.tile})
            if self.overviews:
                steps = math.ceil(math.log2(max(self.height, self.width) / self.tile))
                factors = [2**k for k in range(1, steps + 1)]
                if factors:
                    resampling = self._rasterio.enums.Resampling[self.resampling]
                    self._ds.build_overviews(factors, resampling)
            self._ds.close()
            if self.cog:
                from rasterio.shutil import copy

                copy(
                    self._scratch(),
                    self._target.temp,
                    driver="COG",
                    COMPRESS=self.compression.upper(),
                    BLOCKSIZE=self.tile,
                    OVERVIEWS="AUTO",
                )
                self._scratch().unlink()
        except BaseException:
            self.abort()
            raise
        return self._target.commit()

    def _digest(self) -> str:
        """`PixelDigest` of the pixels GDAL holds, read back one block at a time."""
        digest = PixelDigest(self.channels, self.height, self.width, self._ds.dtypes[0],
                             self.tile)  # fmt: skip
        for top, left, h, w in pixel_tiles(self.height, self.width, self.tile):
            digest.update(self._ds.read(window=self._rasterio.windows.Window(left, top, w, h)))
        return digest.hexdigest()

    def abort(self) -> None:
        """Drop everything written; the final name is never created."""
        if not self._ds.closed:
            self._ds.close()
        if self.cog:
            self._scratch().unlink(missing_ok=True)
        self._target.abort()

    def __enter__(self) -> GeoTiffWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
