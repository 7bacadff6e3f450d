"""Files that appear under their final name only once complete (write, then rename).

Every writer of xtimage (rasters, vectors, and the training checkpoints) writes to a
temporary name in the destination's directory and renames it over the final name when
it is done. The rename is atomic on POSIX file systems, so a run that is interrupted,
killed or fails leaves either the previous file or none, never a truncated file that
looks finished. The temporary name, ``.<name>.<random>.partial``, is hidden and says
what it is.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from xtimage.errors import InputError


class AtomicPath:
    """A temporary path beside ``final`` that `commit` renames to ``final``.

    Args:
        final: the path the finished file must have.
        overwrite: replace an existing ``final``; otherwise an existing file is an error.

    Example:
        >>> out = AtomicPath("mask.tif")
        >>> write_somehow(out.temp)
        >>> out.commit()  # or out.abort() on failure
    """

    def __init__(self, final: str | Path, overwrite: bool = True) -> None:
        self.final = Path(final)
        if not self.final.parent.is_dir():
            raise InputError(
                f"{self.final}: the output directory {self.final.parent} does not exist; "
                f"create it first"
            )
        if self.final.is_dir():
            raise InputError(f"{self.final}: is a directory; give a file name to write")
        if not overwrite and self.final.exists():
            raise InputError(f"{self.final}: exists; remove it or allow overwriting")
        self.temp = self.final.with_name(f".{self.final.name}.{uuid.uuid4().hex[:8]}.partial")
        self.done = False

    def commit(self) -> Path:
        """Move the finished temporary file to the final name (atomic on POSIX)."""
        assert not self.done, "commit or abort called twice"
        os.replace(self.temp, self.final)
        self.done = True
        return self.final

    def abort(self) -> None:
        """Delete the temporary file; the final name is left as it was."""
        if not self.done:
            self.temp.unlink(missing_ok=True)
            self.done = True


@contextlib.contextmanager
def atomic_path(final: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path; rename it to ``final`` on success, delete it on error."""
    target = AtomicPath(final, overwrite=overwrite)
    try:
        yield target.temp
    except BaseException:
        target.abort()
        raise
    target.commit()
