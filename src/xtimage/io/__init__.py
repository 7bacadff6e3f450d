"""Readers and writers behind one window interface; one backend a module."""

from xtimage.io.array import ArrayReader
from xtimage.io.base import Level, PixelSize, Reader, Writer, read_padded
from xtimage.io.open import open_reader

__all__ = ["ArrayReader", "Level", "PixelSize", "Reader", "Writer", "open_reader", "read_padded"]
