"""The cap on memory that a size read from a file or the command line may make us allocate.

Describing or planning an image costs memory proportional to what is read, never to the
size the image declares: region plans, token layouts and `xt info` work on ranges and
closed forms. A few code paths must allocate something sized by a declaration: decoding
one TIFF tile or strip, an in-memory output of the whole image, the token positions of a
whole image. Before they do, `check_alloc` compares the bytes against one cap, so that a
header declaring 10^12 pixels is refused in one line instead of exhausting the machine.

The cap is ``XT_MAX_ALLOC`` in the environment (e.g. ``XT_MAX_ALLOC=64GB``), default
`DEFAULT_MAX_ALLOC`. A genuine file above it is read by lifting the cap.
"""

from __future__ import annotations

import os
import re

from xtimage.errors import ConfigError, InputError

ENV = "XT_MAX_ALLOC"
DEFAULT_MAX_ALLOC = 8 * 2**30  # bytes

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(text: str | int | float) -> int:
    """A memory size in bytes: ``"4GB"`` = 4e9, ``"512MiB"`` = 512 * 2**20, ``1e9`` = 1e9.

    Decimal units (k, M, G, T, with or without B) are powers of 1000, binary ones (Ki,
    Mi, Gi, Ti, with or without B) powers of 1024; case does not matter.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not text > 0 or text == float("inf"):
            raise ConfigError(f"memory size must be positive and finite, got {text!r}")
        return int(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?)?b?\s*", str(text).lower())
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(
            f"memory size {text!r} is not a positive size; write e.g. '4GB', '3.5GiB' or '512MB'"
        )
    unit = match.group(2) or ""
    return int(float(match.group(1)) * (_BINARY.get(unit) or _UNITS[unit]))


def format_bytes(n: float) -> str:
    """``n`` bytes in GiB (from 1 GiB), else MiB."""
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.0f} MiB"


def max_alloc() -> int:
    """The cap in bytes: ``XT_MAX_ALLOC`` when set, else `DEFAULT_MAX_ALLOC`."""
    text = os.environ.get(ENV)
    if not text:
        return DEFAULT_MAX_ALLOC
    try:
        return parse_bytes(text)
    except ConfigError as exc:
        raise ConfigError(f"{ENV}={text!r}: {exc}") from None


def check_alloc(nbytes: int, what: str, where: str | None = None) -> None:
    """Refuse to allocate ``nbytes`` for ``what`` when they exceed the cap.

    Args:
        nbytes: the bytes the allocation would take.
        what: what would be allocated, e.g. ``"decoding tile 3 (65536 x 65536 px)"``.
        where: the file (or ``--size``) that declared the size, named first.
    """
    cap = max_alloc()
    if nbytes > cap:
        raise InputError(
            f"{where + ': ' if where else ''}{what} would take {format_bytes(nbytes)}, above "
            f"the cap of {format_bytes(cap)} on memory sized by an input's declared size; a "
            f"corrupt or hostile header declares sizes like this, but if the input is genuine, "
            f"lift the cap, e.g. {ENV}={max(2 * nbytes // 10**9, 1)}GB"
        )
