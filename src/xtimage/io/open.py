"""Open any supported image file with the backend its format needs.

The backend is chosen by name (``backend=``), else by the file's suffix, else by its
first bytes. TIFF files (``.tif``, ``.tiff``) are looked into: a GeoTIFF goes to rasterio
(georeference, nodata, overviews) when it is installed, any other TIFF to tifffile.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from xtimage.errors import ConfigError, InputError, XTError, require
from xtimage.io.array import ArrayReader
from xtimage.io.base import Reader, read_padded
from xtimage.io.digest import MISMATCH, mismatch_error, pixels_match
from xtimage.io.geotiff import GeoTiffReader
from xtimage.io.pil import PIL_SUFFIXES, PilReader
from xtimage.io.slide import SLIDE_SUFFIXES, SlideReader
from xtimage.io.tiff import TiffReader
from xtimage.window import Window


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


def readable_output(path: str | Path) -> bool:
    """Whether an output file under its final name is whole and valid (`output_problem`)."""
    return output_problem(path) is None


def output_problem(path: str | Path) -> str | None:
    """What is wrong with an output file under its final name; None when it is whole.

    Outputs are written atomically, so a file under a final name is normally complete;
    this tells one that is not (garbage copied there, a truncated copy, a changed or
    damaged raster) before a rerun trusts it as done: JSON and GeoJSON parse, a CSV has
    its header, an image opens (its tile table within the file), its smallest pyramid
    level decodes, and, when it stores a pixel digest (`xtimage.io.digest`), its full
    resolution is read tile by tile and matches it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".json", ".geojson"):
            json.loads(path.read_text())
            return None
        if suffix == ".csv":
            with open(path, newline="") as f:
                return None if next(csv.reader(f), None) else "an empty CSV file"
        complaints = _Complaints()  # tifffile logs a damaged tag and reads on
        tiff_log = logging.getLogger("tifffile")
        saved = tiff_log.level, tiff_log.propagate
        tiff_log.addHandler(complaints)
        tiff_log.setLevel(logging.WARNING)
        tiff_log.propagate = False  # counted here, not printed
        try:
            reader = open_reader(path)
            try:
                last = len(reader.levels) - 1
                level = reader.levels[last]
                reader.read_region(Window(0, 0, level.height, level.width), last)
                if complaints.count:
                    return "tifffile finds damaged tags in it"
                return None if pixels_match(path, reader=reader) else MISMATCH
            finally:
                reader.close()
        finally:
            tiff_log.removeHandler(complaints)
            tiff_log.setLevel(saved[0])
            tiff_log.propagate = saved[1]
    except (XTError, OSError, ValueError, UnicodeDecodeError) as exc:
        return f"it does not read ({type(exc).__name__}: {' '.join(str(exc).split())})"


def read_output(path: str | Path) -> np.ndarray:
    """A raster output read whole, (C, H, W), its pixel digest checked (`xtimage.io.digest`;
    a file without one, e.g. written by another tool, is read unchecked).

    Raises:
        InputError: the file does not read, or its pixels do not match its digest; both
            name the file and the fix (rerun ``xt predict``).
    """
    try:
        reader = open_reader(path)
        try:
            pixels = read_padded(reader, Window(0, 0, reader.height, reader.width))
        finally:
            reader.close()
    except XTError as exc:
        raise InputError(f"{exc}; rerun xt predict, which writes it again") from exc
    if not pixels_match(path, array=pixels):
        raise InputError(mismatch_error(path))
    return pixels


class _Complaints(logging.Handler):
    """Counts warnings and errors logged while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
