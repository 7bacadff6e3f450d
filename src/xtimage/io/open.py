"""Open any supported image file with the backend its format needs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from xtimage.errors import InputError
from xtimage.io.array import ArrayReader
from xtimage.io.base import Reader

# Lower-case suffix -> reader factory. Backend modules add their formats here.
READERS: dict[str, Callable[[Path], Reader]] = {
    ".npy": ArrayReader.from_npy,
}


def open_reader(path: str | Path) -> Reader:
    """A reader for ``path``, chosen by its suffix."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffixes else ""
    factory = READERS.get(suffix) or READERS.get(path.suffix.lower())
    if factory is None:
        raise InputError(
            f"{path}: unsupported format '{path.suffix or '(no suffix)'}'; "
            f"supported: {', '.join(sorted(READERS))}"
        )
    return factory(path)
