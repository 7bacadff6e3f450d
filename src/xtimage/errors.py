"""User-facing errors.

Every error a user can cause by what they pass (a path, a size, a config key) is an
`XTError`; its message names the value, the file where there is one, and the fix. The CLI
prints it as one line and exits with code 2. Anything else is a bug and exits with 1.
Internal invariants use `assert`, never these classes.
"""

from __future__ import annotations


class XTError(Exception):
    """Base class of every error caused by user input."""


class ConfigError(XTError, ValueError):
    """A bad configuration value, key, model name or size."""


class InputError(XTError):
    """A bad input file or array: missing, unsupported, corrupt, or of the wrong shape."""


class DependencyError(XTError, ImportError):
    """An optional dependency is missing; the message gives the pip command to install it."""


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency or fail with the install hint.

    Args:
        module: importable module name, e.g. ``"rasterio"``.
        extra: the xtimage extra that provides it, e.g. ``"geo"``.
        purpose: what it is needed for, shown in the message.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyError(
            f"{purpose} needs the optional package '{module}', which is not installed: "
            f"run `pip install 'xtimage[{extra}]'`"
        ) from exc


def did_you_mean(word: str, options) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``options`` to a misspelled ``word``, else
    ``""``: appended to the message of an unknown name."""
    import difflib

    close = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
