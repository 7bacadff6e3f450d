"""The pixel digest a raster written by xtimage carries, and its check on load.

`TiffWriter` and `GeoTiffWriter` store the SHA-256 of the full-resolution pixels
(`xtimage.integrity.PixelDigest`) as two GDAL metadata items of the file's first image,
in the TIFF tag GDAL_METADATA (42112), where ``gdalinfo``, rasterio's ``tags()`` and
tifffile show them:

=================== ===================================================================
``XT_PIXEL_SHA256`` 64 hex digits: the digest of level 0's pixels
``XT_PIXEL_TILE``   the side of the tile grid the digest walks (the file's tile side)
=================== ===================================================================

The TIFF writer hashes each tile as it streams it into the file and writes the value
into the tag's reserved bytes at the end; the GeoTIFF writer (GDAL takes windows in
any order) hashes block by block what GDAL wrote, before building overviews. Lossy
codecs (JPEG, WebP) get no digest: their decoded pixels differ from those written.
Pyramid levels and overviews are not covered (they are derived from level 0).

`stored_digest` reads the items back; a file without them (written by another tool, or
by xtimage before digests) has none and is read unchecked.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import numpy as np

from xtimage.integrity import PixelDigest, digest_pixels, pixel_tiles
from xtimage.io.base import Reader
from xtimage.window import Window

DIGEST_ITEM, TILE_ITEM = "XT_PIXEL_SHA256", "XT_PIXEL_TILE"
GDAL_METADATA = 42112
LOSSY = ("jpeg", "webp", "jxl", "jpegxl", "jpeg2000", "jp2k")
_PLACEHOLDER = "0" * 64
_ITEM = re.compile(r'<Item name="(XT_PIXEL_SHA256|XT_PIXEL_TILE)"[^>]*>([^<]*)</Item>')


def lossless(compression: str | None) -> bool:
    """Whether a codec gives back the pixels written (so a digest can be checked)."""
    return (compression or "none").lower() not in LOSSY


def gdal_metadata(tile: int) -> str:
    """GDAL_METADATA XML with the digest items, the digest a placeholder that
    `patch_digest` overwrites once the pixels are written."""
    return (
        f'<GDALMetadata>\n  <Item name="{DIGEST_ITEM}">{_PLACEHOLDER}</Item>\n'
        f'  <Item name="{TILE_ITEM}">{tile}</Item>\n</GDALMetadata>\n'
    )


def patch_digest(path: str | Path, digest: str) -> None:
    """Write ``digest`` over the placeholder of a TIFF written with `gdal_metadata`."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags[GDAL_METADATA]
        offset = tag.valueoffset + tag.value.index(_PLACEHOLDER)
    with open(path, "r+b") as f:
        f.seek(offset)
        if f.read(len(_PLACEHOLDER)) != _PLACEHOLDER.encode():
            raise RuntimeError(f"{path}: the pixel digest's placeholder is not where expected")
        f.seek(offset)
        f.write(digest.encode())


def stored_digest(path: str | Path) -> tuple[str, int] | None:
    """``(digest, tile)`` stored in a TIFF's first image, or None when it has none."""
    text = _gdal_metadata_text(Path(path))
    items = dict(_ITEM.findall(text or ""))
    digest, tile = items.get(DIGEST_ITEM, ""), items.get(TILE_ITEM, "")
    if not (re.fullmatch(r"[0-9a-f]{64}", digest) and tile.isdigit() and int(tile) > 0):
        return None
    return digest, int(tile)


def _gdal_metadata_text(path: Path) -> str | None:
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    if importlib.util.find_spec("tifffile") is not None:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                tag = tif.pages[0].tags.get(GDAL_METADATA)
                return tag.value if tag is not None and isinstance(tag.value, str) else None
        except Exception:  # a damaged file: its reader says what is wrong
            return None
    if importlib.util.find_spec("rasterio") is not None:
        import rasterio

        try:
            with rasterio.open(path) as ds:
                tags = ds.tags()
        except Exception:
            return None
        return "".join(f'<Item name="{k}">{tags[k]}</Item>' for k in (DIGEST_ITEM, TILE_ITEM)
                       if k in tags)  # fmt: skip
    return None


def reader_digest(reader: Reader, tile: int) -> str:
    """`PixelDigest` of a reader's level 0, read one tile at a time."""
    digest = PixelDigest(reader.channels, reader.height, reader.width, reader.dtype, tile)
    for top, left, h, w in pixel_tiles(reader.height, reader.width, tile):
        digest.update(reader.read_region(Window(top, left, h, w), 0))
    return digest.hexdigest()


MISMATCH = "its pixels do not match the digest stored with them"


def mismatch_error(path: str | Path) -> str:
    """The message for a file whose pixels differ from its digest."""
    return (
        f"{path}: {MISMATCH} when it was written (changed or damaged since); rerun xt "
        f"predict, which writes it again"
    )


def pixels_match(path: str | Path, array: np.ndarray | None = None, reader: Any = None) -> bool:
    """Whether a file's level 0 (given as a (C, H, W) ``array``, or read tile by tile
    from ``reader``) matches its stored digest; True when it stores none."""
    stored = stored_digest(path)
    if stored is None:
        return True
    digest, tile = stored
    actual = digest_pixels(array, tile) if array is not None else reader_digest(reader, tile)
    return actual == digest
