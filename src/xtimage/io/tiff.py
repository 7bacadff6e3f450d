"""Tiled, pyramidal TIFF, OME-TIFF and BigTIFF, read tile by tile with tifffile.

A window read touches only the tiles (or strips) it overlaps: their byte ranges are read
with positioned reads (``os.pread``, no shared file offset, so threads read in parallel)
and decoded by tifffile's segment decoder (imagecodecs: JPEG, deflate, LZW, zstd, ...),
which releases the GIL. Uncompressed contiguous pages are memory-mapped instead.
Nothing of the image is read when the file is opened beyond its directory (IFDs and the
tile offset tables).

Decoded tiles are kept in a small LRU cache (``cache_mb``, shared by all threads): region
windows with a margin are never tile-aligned, and in raster order each tile is needed by
up to four neighbouring regions, two of them a row of regions apart. A cache that holds a
row of tiles decodes each tile once; its fixed budget keeps memory flat in image size.

Pyramid levels are those tifffile finds for the series: OME-TIFF sub-IFDs, the reduced
pages of SVS-style files, or pages marked as reduced resolution. Pixel size comes from
OME-XML (``PhysicalSizeX/Y``), an Aperio description (``MPP``), or resolution tags in
pixels per centimetre; resolution in pixels per inch is mostly a nominal screen DPI
(72, 96, 300) and is ignored rather than guessed from.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xtimage.errors import InputError, require
from xtimage.io.base import Level, PixelSize, check_window
from xtimage.limits import check_alloc
from xtimage.window import Window

_UNITS_TO_UM = {"pm": 1e-6, "nm": 1e-3, "µm": 1.0, "um": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}


@dataclass
class _Page:
    """The segments (tiles or strips) of one TIFF page and how to decode them."""

    offsets: np.ndarray  # (S,) byte offset of each segment, int64
    counts: np.ndarray  # (S,) encoded size of each segment, 0 for an empty segment
    decode: Callable[..., Any]  # tifffile's segment decoder of the page's keyframe
    jpegtables: bytes | None
    seg_height: int  # tile length, or rows per strip
    seg_width: int  # tile width, or the image width for strips
    grid_width: int  # segments per row of segments
    per_plane: int  # segments per separate-sample plane
    planes: int  # separate-sample planes (PlanarConfiguration 2), else 1
    samples: int  # samples interleaved in each segment
    memmap: np.ndarray | None  # (planes, H, W, samples) when uncompressed and contiguous

    @property
    def channels(self) -> int:
        return self.planes * self.samples


class _TileCache:
    """Decoded tiles, least recently used out first, kept in preallocated slots.

    The slots of each tile shape are one array of ``budget`` bytes, allocated on first
    use, so the cache's memory is fixed however many tiles pass through. (Keeping the
    decoded arrays themselves scatters them over the worker threads' malloc arenas, and
    the process grows with the length of the run.) Copies in and out happen under the
    lock, so a slot is never overwritten while it is read.

    A tile being decoded is *claimed*: read-ahead threads on neighbouring windows want
    the same tiles at the same moment, and without the claim each would miss and decode
    the tile again (unaligned regions then cost twice the raw decode).
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._slabs: dict[tuple, np.ndarray] = {}  # (shape, dtype) -> (slots, *shape)
        self._lru: OrderedDict[tuple[int, int], tuple[tuple, int]] = OrderedDict()
        self._used: dict[tuple, int] = {}  # slots in use per slab
        self._decoding: dict[tuple[int, int], threading.Event] = {}  # claimed tiles
        self._lock = threading.Lock()

    def claim(self, key: tuple[int, int]) -> threading.Event | None:
        """None: the caller decodes the tile, `put`s it and calls `release`. Otherwise an
        event that is set once the tile is cached or its decoder gave up; then look again."""
        with self._lock:
            if key in self._lru:
                done = threading.Event()
                done.set()
                return done
            if key in self._decoding:
                return self._decoding[key]
            self._decoding[key] = threading.Event()
            return None

    def release(self, key: tuple[int, int]) -> None:
        """End a `claim`: wake the threads waiting for the tile."""
        with self._lock:
            self._decoding.pop(key).set()

    def copy_to(self, key: tuple[int, int], src: tuple[slice, slice], dst: np.ndarray) -> bool:
        """Copy the cached tile's ``src`` part into ``dst`` (samples first); False on a miss."""
        with self._lock:
            where = self._lru.get(key)
            if where is None:
                return False
            self._lru.move_to_end(key)
            dst[:] = self._slabs[where[0]][where[1]][src].transpose(2, 0, 1)
            return True

    def put(self, key: tuple[int, int], tile: np.ndarray) -> None:
        """Keep a copy of ``tile`` (h, w, samples), evicting the least recently used."""
        kind = (tile.shape, tile.dtype.str)
        with self._lock:
            if kind not in self._slabs:
                count = self.budget // tile.nbytes
                if count == 0:
                    return
                self._slabs[kind] = np.empty((count, *tile.shape), tile.dtype)
                self._used[kind] = 0
            if key in self._lru:
                return
            if self._used[kind] < len(self._slabs[kind]):
                slot = self._used[kind]
                self._used[kind] += 1
            else:  # the least recently used tile of this shape gives up its slot
                old = next(k for k, (knd, _) in self._lru.items() if knd == kind)
                slot = self._lru.pop(old)[1]
            self._slabs[kind][slot] = tile
            self._lru[key] = (kind, slot)

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def nbytes(self) -> int:
        return sum(slab.nbytes for slab in self._slabs.values())

    def forget(self) -> None:
        """Drop every tile but keep the slots' memory (already paged in) for reuse."""
        with self._lock:
            self._lru.clear()
            self._used = dict.fromkeys(self._used, 0)

    def clear(self) -> None:
        self._slabs.clear()
        self._lru.clear()
        self._used.clear()


class TiffReader:
    """Reader of (pyramidal, tiled) TIFF, OME-TIFF, BigTIFF and SVS via tifffile.

    Args:
        path: the TIFF file.
        series: index of the image series in the file (0: the main image).
        cache_mb: budget of the decoded-tile cache in MiB (0: no cache).

    Attributes:
        bytes_read: encoded bytes read from the file by `read_region` so far (all
            threads), for checking that a window costs only the tiles it touches.
    """

    backend = "tiff"

    def __init__(self, path: str | Path, series: int = 0, cache_mb: float = 32) -> None:
        tifffile = require("tifffile", "tiff", "reading TIFF files")
        self.path = str(path)
        if not Path(path).is_file():
            raise InputError(f"{path}: no such file")
        try:
            tif = tifffile.TiffFile(path)
        except Exception as exc:  # tifffile raises several types for a bad header
            raise InputError(
                f"{path}: not a readable TIFF file ({type(exc).__name__}: {exc}); the file "
                f"is corrupt, truncated or not a TIFF"
            ) from exc
        try:
            self._describe(tif, path, series)
        except InputError:
            tif.close()
            raise
        except Exception as exc:
            tif.close()
            raise InputError(
                f"{path}: could not read the TIFF structure ({type(exc).__name__}: {exc}); "
                f"the file is corrupt or truncated"
            ) from exc
        self._tif = tif
        self._fd = os.open(path, os.O_RDONLY)
        self._lock = threading.Lock()
        self.bytes_read = 0
        self._cache = _TileCache(int(cache_mb * 2**20))

    def _describe(self, tif: Any, path: str | Path, series: int) -> None:
        if not 0 <= series < len(tif.series):
            raise InputError(f"{path}: series {series} does not exist ({len(tif.series)} series)")
        pyramid = tif.series[series].levels
        self._pages: list[list[_Page]] = [self._level_pages(level, path) for level in pyramid]
        size = os.path.getsize(path)
        end = max(int((p.offsets + p.counts).max()) for pages in self._pages for p in pages)
        if end > size:
            raise InputError(
                f"{path}: the image data runs to byte {end} but the file has {size} bytes; the "
                f"file is truncated (an interrupted copy or download?)"
            )
        first = pyramid[0]
        self.channels = sum(p.channels for p in self._pages[0])
        key = first.keyframe
        self.height, self.width = int(key.imagelength), int(key.imagewidth)
        self.dtype = np.dtype(key.dtype.char)  # native byte order
        self.levels = [
            Level(
                int(lv.keyframe.imagelength),
                int(lv.keyframe.imagewidth),
                (self.height / lv.keyframe.imagelength + self.width / lv.keyframe.imagewidth) / 2,
            )
            for lv in pyramid
        ]
        self.pixel_size = _pixel_size(tif, key)
        self.nodata = float(key.nodata) if key.tags.get("GDAL_NODATA") is not None else None
        self.geo = None
        file_format = (
            "OME-TIFF" if tif.is_ome else "SVS" if tif.is_svs else "GeoTIFF" if tif.is_geotiff
            else "TIFF"
        )  # fmt: skip
        self.metadata = {
            "format": file_format + (" (BigTIFF)" if tif.is_bigtiff else ""),
            "tile": [int(key.tilelength), int(key.tilewidth)] if key.is_tiled else None,
            "rows_per_strip": None if key.is_tiled else int(key.rowsperstrip),
            "compression": key.compression.name.lower(),
            "photometric": key.photometric.name.lower(),
            "axes": first.axes,
        }

    def _level_pages(self, level: Any, path: str | Path) -> list[_Page]:
        """One `_Page` per TIFF page of a pyramid level (several when channels are pages)."""
        shape = dict(zip(level.axes, level.shape, strict=True))
        stacked = [a for a, n in shape.items() if a not in "YXS" and n > 1]
        if len(stacked) > 1:
            raise InputError(
                f"{path}: the image has axes {level.axes} of shape {level.shape}; xtimage "
                f"reads 2-D images with channels, so extract one plane (e.g. one T and Z)"
            )
        if any(page is None for page in level.pages):
            raise InputError(f"{path}: pages of the image are missing; the file is truncated")
        key = level.keyframe
        planes, _, length, width, samples = key.shaped
        if key.is_tiled:
            seg_h, seg_w = key.tilelength, key.tilewidth
        else:  # strips: whole rows; one strip may declare more rows than the image has
            seg_h, seg_w = min(key.rowsperstrip, length), width
        grid_w = math.ceil(width / seg_w)
        per_plane = math.ceil(length / seg_h) * grid_w
        if not key.is_memmappable or key.is_tiled:  # segments are decoded whole
            check_alloc(
                seg_h * seg_w * samples * key.dtype.itemsize,
                f"decoding one {'tile' if key.is_tiled else 'strip'} of {seg_h} x {seg_w} px",
                str(path),
            )
        pages = []
        for page in level.pages:
            memmap = None
            if getattr(page, "is_memmappable", key.is_memmappable) and not key.is_tiled:
                memmap = np.memmap(
                    path,
                    dtype=np.dtype(key.parent.byteorder + key.dtype.char),
                    mode="r",
                    offset=int(page.dataoffsets[0]),
                    shape=(planes, length, width, samples),
                )
            pages.append(
                _Page(
                    offsets=np.asarray(page.dataoffsets, np.int64),
                    counts=np.asarray(page.databytecounts, np.int64),
                    decode=key.decode,
                    jpegtables=key.jpegtables,
                    seg_height=int(seg_h),
                    seg_width=int(seg_w),
                    grid_width=grid_w,
                    per_plane=per_plane,
                    planes=planes,
                    samples=samples,
                    memmap=memmap,
                )
            )
            if len(pages[-1].offsets) < planes * per_plane:
                raise InputError(
                    f"{path}: a page lists {len(pages[-1].offsets)} tiles, its size needs "
                    f"{planes * per_plane}; the file is corrupt"
                )
        return pages

    def read_region(self, window: Window, level: int = 0) -> np.ndarray:
        check_window(self, window, level)
        out = np.empty((self.channels, window.height, window.width), self.dtype)
        channel = 0
        for page in self._pages[level]:
            self._read_page(page, window, out[channel : channel + page.channels], level)
            channel += page.channels
        return out

    def _read_page(self, page: _Page, window: Window, out: np.ndarray, level: int) -> None:
        """Fill ``out`` (channels of the page, h, w) with the page's pixels in ``window``."""
        if page.memmap is not None:
            rows, cols = window.slices()
            block = page.memmap[:, rows, cols, :]  # (planes, h, w, samples)
            out[:] = block.transpose(0, 3, 1, 2).reshape(out.shape)
            return
        sh, sw = page.seg_height, page.seg_width
        top, left, bottom, right = window.top, window.left, window.bottom, window.right
        waiting = []  # tiles another thread is decoding: taken last, when mostly done
        for plane in range(page.planes):
            channels = slice(plane * page.samples, (plane + 1) * page.samples)
            for ty in range(top // sh, (bottom - 1) // sh + 1):
                y0, y1 = max(top, ty * sh), min(bottom, (ty + 1) * sh)
                for tx in range(left // sw, (right - 1) // sw + 1):
                    x0, x1 = max(left, tx * sw), min(right, (tx + 1) * sw)
                    index = plane * page.per_plane + ty * page.grid_width + tx
                    src = slice(y0 - ty * sh, y1 - ty * sh), slice(x0 - tx * sw, x1 - tx * sw)
                    dst = out[channels, y0 - top : y1 - top, x0 - left : x1 - left]
                    if not self._copy_tile(page, index, level, src, dst, wait=False):
                        waiting.append((index, src, dst))
        for index, src, dst in waiting:
            self._copy_tile(page, index, level, src, dst)

    def _copy_tile(
        self,
        page: _Page,
        index: int,
        level: int,
        src: tuple[slice, slice],
        dst: np.ndarray,
        wait: bool = True,
    ) -> bool:
        """Copy segment ``index``'s ``src`` part into ``dst`` (samples first): from the
        cache, after another thread's decode of it, or decoded here. False, with nothing
        copied, when another thread is decoding it and not ``wait``."""
        key = (id(page), index)
        while not self._cache.copy_to(key, src, dst):
            other = self._cache.claim(key)
            if other is not None:
                if not (wait or other.is_set()):
                    return False
                other.wait()  # then look again: cached, or (empty, evicted, failed) decode
                continue
            try:
                seg = self._decode(page, index, level)  # (seg_h, seg_w, samples) or None
                if seg is None:
                    dst[:] = self.nodata or 0
                else:
                    dst[:] = seg[src].transpose(2, 0, 1)
                    self._cache.put(key, seg)
            finally:
                self._cache.release(key)
            return True
        return True

    def _decode(self, page: _Page, index: int, level: int) -> np.ndarray | None:
        """Read and decode segment ``index``; None when the file stores it as empty."""
        offset, count = int(page.offsets[index]), int(page.counts[index])
        if count == 0:
            return None
        data = os.pread(self._fd, count, offset)
        with self._lock:
            self.bytes_read += len(data)
        if len(data) < count:
            raise InputError(
                f"{self.path}: tile {index} of level {level} needs bytes {offset} to "
                f"{offset + count}, but the file ends at {os.fstat(self._fd).st_size}; the "
                f"file is truncated (an interrupted copy or download?)"
            )
        try:
            seg, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as exc:  # any codec error means bad bytes
            raise InputError(
                f"{self.path}: tile {index} of level {level} (bytes {offset} to "
                f"{offset + count}) could not be decoded ({type(exc).__name__}: {exc}); the "
                f"file is corrupt"
            ) from exc
        seg = seg[0]  # (seg_h', seg_w', samples): depth is always 1 here
        if seg.shape[0] < page.seg_height or seg.shape[1] < page.seg_width:
            # some writers store the last strip or tile cropped: pad it to the grid
            full = np.zeros((page.seg_height, page.seg_width, seg.shape[2]), seg.dtype)
            full[: seg.shape[0], : seg.shape[1]] = seg
            seg = full
        return seg

    def forget_tiles(self) -> None:
        """Empty the decoded-tile cache (its memory stays allocated for reuse)."""
        self._cache.forget()

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
            self._tif.close()
            self._cache.clear()

    def __enter__(self) -> TiffReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pixel_size(tif: Any, page: Any) -> PixelSize | None:
    """Level-0 pixel size from OME-XML, an Aperio description or centimetre resolution."""
    if tif.is_ome:
        pixels = re.search(r"<Pixels\s[^>]*>", tif.ome_metadata or "")
        if pixels:
            attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0)))
            if "PhysicalSizeX" in attrs and "PhysicalSizeY" in attrs:
                scale_x = _UNITS_TO_UM.get(attrs.get("PhysicalSizeXUnit", "µm"))
                scale_y = _UNITS_TO_UM.get(attrs.get("PhysicalSizeYUnit", "µm"))
                if scale_x and scale_y:
                    return PixelSize(
                        float(attrs["PhysicalSizeY"]) * scale_y,
                        float(attrs["PhysicalSizeX"]) * scale_x,
                        "um",
                    )
    if tif.is_svs:
        mpp = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", page.description or "")
        if mpp:
            return PixelSize(float(mpp.group(1)), float(mpp.group(1)), "um")
    if page.tags.get("ResolutionUnit") is not None and int(page.resolutionunit) == 3:
        (xn, xd), (yn, yd) = page.tags["XResolution"].value, page.tags["YResolution"].value
        if xn and yn and xd and yd:
            return PixelSize(1e4 * yd / yn, 1e4 * xd / xn, "um")  # pixels per cm -> um
    return None
