"""Readers and writers behind one window interface; one backend a module.

Readers: `open_reader` picks the backend (`ArrayReader` for arrays and ``.npy``,
`PilReader`, `TiffReader`, `GeoTiffReader`, `SlideReader`); `ResampledReader` reads at a
target resolution, `TransformedReader` applies normalisation, `Prefetcher` reads ahead on
threads. Writers: `TiffWriter`, `GeoTiffWriter`, and the vector writers in
`xtimage.io.vector`. Backends import their optional packages only when used.
"""

from xtimage.io.array import ArrayReader
from xtimage.io.atomic import AtomicPath, atomic_path
from xtimage.io.base import (
    GeoInfo,
    Level,
    PixelSize,
    Reader,
    Writer,
    check_channels,
    read_padded,
)
from xtimage.io.foreground import region_has_foreground, tissue_mask, valid_mask
from xtimage.io.geotiff import GeoTiffReader
from xtimage.io.geotiff_writer import GeoTiffWriter
from xtimage.io.open import open_reader
from xtimage.io.physical import ResampledReader, to_pixels
from xtimage.io.pil import PilReader
from xtimage.io.prefetch import Prefetcher
from xtimage.io.slide import SlideReader
from xtimage.io.tiff import TiffReader
from xtimage.io.tiff_writer import TiffWriter
from xtimage.io.transforms import Compose, FillNodata, Normalize, SarDb, TransformedReader
from xtimage.io.vector import Detection, write_coco_results, write_csv, write_geojson

__all__ = [
    "ArrayReader",
    "AtomicPath",
    "Compose",
    "Detection",
    "FillNodata",
    "GeoInfo",
    "GeoTiffReader",
    "GeoTiffWriter",
    "Level",
    "Normalize",
    "PilReader",
    "PixelSize",
    "Prefetcher",
    "Reader",
    "ResampledReader",
    "SarDb",
    "SlideReader",
    "TiffReader",
    "TiffWriter",
    "TransformedReader",
    "Writer",
    "atomic_path",
    "check_channels",
    "open_reader",
    "read_padded",
    "region_has_foreground",
    "tissue_mask",
    "to_pixels",
    "valid_mask",
    "write_coco_results",
    "write_csv",
    "write_geojson",
]
