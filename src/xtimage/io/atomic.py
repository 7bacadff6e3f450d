"""Files that appear under their final name only once complete (write, then rename).

Every writer of xtimage (rasters, vectors, and the training checkpoints) writes to a
temporary name in the destination's directory and renames it over the final name when
it is done. The rename is atomic on POSIX file systems, so a run that is interrupted,
killed or fails leaves either the previous file or none, never a truncated file that
looks finished. The temporary name, ``.<name>.<host>-<pid>.<random>.partial``, is
hidden and says what it is and who writes it; writers' scratch files beside it
(``...level0``, ``...gtiff``) share its stem. A process killed with ``kill -9`` cannot
clean up, so the next `AtomicPath` for the same final name removes the temporary and
scratch files of writers on this host whose process is gone (and, from before the owner
was in the name, those over an hour old); `remove_stale_in` does it for every final name
of a folder (a training run's start, for a checkpoint that may not be written again).

A full disk or quota while writing is an `InputError` naming the file; the previous
file under the final name, if any, is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import time
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
        remove_stale(self.final)
        self.temp = self.final.with_name(
            f".{self.final.name}.{_owner()}-{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
        )
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


def _owner() -> str:
    return socket.gethostname().replace(".", "_").replace("-", "_") or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(final: str | Path, max_age_s: float = 3600) -> list[Path]:
    """Delete the temporary and scratch files of dead writers of ``final``; the list.

    A file is stale when its name says it belongs to a process of this host that no
    longer runs, or, for names without an owner, when it is older than ``max_age_s``.
    Files of live writers and of other hosts (a shared file system) are kept.
    """
    final = Path(final)
    prefix, host, removed = f".{final.name}.", _owner(), []
    try:
        siblings = [p for p in final.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for path in siblings:
        parts, stale = path.name[len(prefix) :].split("."), False
        if len(parts) == 3 and "-" in parts[0]:
            owner, _, pid = parts[0].rpartition("-")
            stale = owner == host and pid.isdigit() and not _alive(int(pid))
        elif len(parts) == 2 and parts[1] == "partial":
            with contextlib.suppress(OSError):
                stale = time.time() - path.stat().st_mtime > max_age_s
        else:
            continue
        if stale:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


_TEMP = re.compile(r"\.(?P<final>.+)\.[^./]+-\d+\.[0-9a-f]{8}\.\w+")


def remove_stale_in(folder: str | Path) -> list[Path]:
    """`remove_stale` for every final name whose temporary or scratch files are in
    ``folder``; the list of files removed."""
    try:
        names = [p.name for p in Path(folder).iterdir() if p.name.startswith(".")]
    except OSError:
        return []
    finals = {m["final"] for m in map(_TEMP.fullmatch, names) if m}
    return [path for final in sorted(finals) for path in remove_stale(Path(folder) / final)]


def output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create the folder ``path`` (and its parents) for writing, or say clearly why not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: the {what} names an existing file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{path}: a parent of the {what} is a file; give a folder") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot create the {what} ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{path}: the {what} is not writable; choose another or fix its "
                         f"permissions")  # fmt: skip
    return path


@contextlib.contextmanager
def atomic_path(final: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path; rename it to ``final`` on success, delete it on error."""
    target = AtomicPath(final, overwrite=overwrite)
    try:
        yield target.temp
    except OSError as exc:
        target.abort()
        error = disk_error(target.final, exc)
        if error is exc:
            raise
        raise error from exc
    except BaseException:
        target.abort()
        raise
    target.commit()


def disk_error(final: Path, exc: OSError) -> OSError | InputError:
    """A full disk or quota while writing ``final`` as an `InputError`; ``exc`` otherwise."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return exc
    return InputError(
        f"{final}: no space left while writing it ({exc.strerror}); nothing was written "
        f"under that name (an earlier file there is intact): free space or write elsewhere"
    )
