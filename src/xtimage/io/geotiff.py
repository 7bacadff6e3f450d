"""GeoTIFF and Cloud-Optimised GeoTIFF through rasterio (GDAL): windowed, multi-band reads.

GDAL reads only the blocks a window overlaps, for plain tiled GeoTIFF and COG alike.
Levels are the full-resolution image and its overviews. The georeference (affine
transform and CRS) and the nodata value come from the file; the pixel size is the length
of a pixel's sides in metres when the CRS is projected, and None for geographic (lon/lat)
CRSs, whose pixels have no single size in metres.

A GDAL dataset must not be shared between threads, so each thread that reads (the
read-ahead workers) opens its own handle on first use and keeps it until `close`.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from xtimage.errors import InputError, require
from xtimage.io.base import GeoInfo, Level, PixelSize, check_window
from xtimage.window import Window


class GeoTiffReader:
    """Reader of GeoTIFF / COG (and other GDAL rasters) via rasterio.

    Args:
        path: the raster file.
    """

    backend = "geotiff"

    def __init__(self, path: str | Path) -> None:
        self._rasterio = require("rasterio", "geo", "reading GeoTIFF files")
        self.path = str(path)
        if not Path(path).is_file():
            raise InputError(f"{path}: no such file")
        self._local = threading.local()
        self._handles: list[Any] = []
        self._lock = threading.Lock()
        ds = self._dataset(0)
        self.height, self.width, self.channels = ds.height, ds.width, ds.count
        if len(set(ds.dtypes)) != 1:
            raise InputError(f"{path}: bands have different data types {ds.dtypes}")
        self.dtype = np.dtype(ds.dtypes[0])
        factors = ds.overviews(1) if ds.count else []
        self.levels = [Level(self.height, self.width, 1.0)]
        for k, factor in enumerate(factors, start=1):
            overview = self._dataset(k)
            self.levels.append(Level(overview.height, overview.width, float(factor)))
        self.nodata = None if ds.nodata is None else float(ds.nodata)
        self.geo = None
        self.pixel_size = None
        crs = ds.crs
        if crs is not None:
            self.geo = GeoInfo(tuple(ds.transform)[:6], crs.to_wkt(), crs.to_epsg())
            if crs.is_projected:
                a, b, _, d, e, _ = ds.transform[:6]
                metres = crs.linear_units_factor[1]
                self.pixel_size = PixelSize(
                    math.hypot(b, e) * metres, math.hypot(a, d) * metres, "m"
                )
        structure = ds.tags(ns="IMAGE_STRUCTURE")
        self.metadata = {
            "format": "COG" if structure.get("LAYOUT") == "COG" else ds.driver,
            "tile": list(ds.block_shapes[0]) if ds.profile.get("tiled") else None,
            "block": list(ds.block_shapes[0]),
            "compression": ds.compression.value.lower() if ds.compression else "none",
            "interleave": ds.interleaving.value.lower() if ds.interleaving else None,
            "crs": f"EPSG:{crs.to_epsg()}" if crs and crs.to_epsg() else (crs and crs.to_wkt()),
            "transform": list(tuple(ds.transform)[:6]),
            "nodata": self.nodata,
            "band_descriptions": list(ds.descriptions),
        }

    def _dataset(self, level: int) -> Any:
        """This thread's open dataset of ``level`` (0: full resolution, k: overview k-1)."""
        handles = self._local.__dict__.setdefault("handles", {})
        if level not in handles:
            kwargs = {} if level == 0 else {"overview_level": level - 1}
            try:
                handles[level] = self._rasterio.open(self.path, **kwargs)
            except self._rasterio.errors.RasterioIOError as exc:
                raise InputError(
                    f"{self.path}: not a readable raster ({exc}); the file is corrupt, "
                    f"truncated or not a GeoTIFF"
                ) from exc
            with self._lock:
                self._handles.append(handles[level])
        return handles[level]

    def read_region(self, window: Window, level: int = 0) -> np.ndarray:
        check_window(self, window, level)
        win = self._rasterio.windows.Window(window.left, window.top, window.width, window.height)
        try:
            return self._dataset(level).read(window=win)  # (C, h, w)
        except self._rasterio.errors.RasterioError as exc:
            raise InputError(
                f"{self.path}: reading {window} at level {level} failed ({exc}); the file is "
                f"corrupt or truncated"
            ) from exc

    def close(self) -> None:
        with self._lock:
            for ds in self._handles:
                ds.close()
            self._handles.clear()
        self._local = threading.local()

    def __enter__(self) -> GeoTiffReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
