"""Open any supported image file with the backend its format needs.

The backend is chosen by name (``backend=``), else by the file's suffix, else by its
first bytes. TIFF files (``.tif``, ``.tiff``) are looked into: a GeoTIFF goes to rasterio
(georeference, nodata, overviews) when it is installed, any other TIFF to tifffile.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from xtimage.errors import ConfigError, InputError, require
from xtimage.io.array import ArrayReader
from xtimage.io.base import Reader
from xtimage.io.geotiff import GeoTiffReader
from xtimage.io.pil import PIL_SUFFIXES, PilReader
from xtimage.io.slide import SLIDE_SUFFIXES, SlideReader
from xtimage.io.tiff import TiffReader


def _open_tiff_family(path: Path) -> Reader:
    """A GeoTIFF to rasterio (when installed), any other TIFF to tifffile."""
    import importlib.util

    tifffile = require("tifffile", "tiff", "reading TIFF files")
    try:
        with tifffile.TiffFile(path) as tif:
            geotiff = tif.is_geotiff
    except Exception:  # TiffReader turns this into the clear error
        geotiff = False
    if geotiff:
        if importlib.util.find_spec("rasterio") is not None:
            return GeoTiffReader(path)
        warnings.warn(
            f"{path}: a GeoTIFF read without rasterio loses its georeference and nodata; "
            f"`pip install 'xtimage[geo]'` to keep them",
            stacklevel=3,
        )
    return TiffReader(path)


# Backend name -> reader factory.
BACKENDS: dict[str, Callable[[Path], Reader]] = {
    "npy": ArrayReader.from_npy,
    "pil": PilReader,
    "tiff": TiffReader,
    "geotiff": GeoTiffReader,
    "openslide": SlideReader,
}

# Lower-case suffix -> reader factory. Backend modules add their formats here.
READERS: dict[str, Callable[[Path], Reader]] = {
    ".npy": ArrayReader.from_npy,
    ".tif": _open_tiff_family,
    ".tiff": _open_tiff_family,
    ".btf": TiffReader,
    ".tf8": TiffReader,
    ".ome.tif": TiffReader,
    ".ome.tiff": TiffReader,
    **{suffix: PilReader for suffix in PIL_SUFFIXES},
    **{suffix: SlideReader for suffix in SLIDE_SUFFIXES},
}

# Leading bytes -> reader factory, for files whose suffix says nothing.
MAGIC: dict[bytes, Callable[[Path], Reader]] = {
    b"II*\x00": _open_tiff_family,
    b"MM\x00*": _open_tiff_family,
    b"II+\x00": TiffReader,  # BigTIFF
    b"MM\x00+": TiffReader,
    b"\x89PNG": PilReader,
    b"\xff\xd8\xff": PilReader,
    b"\x93NUMPY": ArrayReader.from_npy,
}


def open_reader(path: str | Path, backend: str | None = None) -> Reader:
    """A reader for ``path``.

    Args:
        path: the image file.
        backend: force a backend by name (see `BACKENDS`); None chooses from the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if backend is not None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown reader backend '{backend}'; known: {', '.join(BACKENDS)}")
        return BACKENDS[backend](path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give an image file")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffixes else ""
    factory = READERS.get(suffix) or READERS.get(path.suffix.lower())
    if factory is None:
        with open(path, "rb") as f:
            head = f.read(8)
        factory = next((fac for magic, fac in MAGIC.items() if head.startswith(magic)), None)
    if factory is None:
        raise InputError(
            f"{path}: unsupported format '{path.suffix or '(no suffix)'}'; "
            f"supported: {', '.join(sorted(READERS))}"
        )
    return factory(path)
