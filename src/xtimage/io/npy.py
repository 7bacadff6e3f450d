"""`.npy` files read without running code, object arrays included.

A `.npy` file of dtype object stores its array as a pickle, and ``np.load(...,
allow_pickle=True)`` would run whatever a hostile file's pickle calls. The official
xView3 shoreline files are such object arrays of numpy arrays, so they are read here with
an unpickler that admits only what numpy's own array pickles name (array reconstruction,
dtypes and scalars); anything else, a function or a class of another module, is an
`InputError` before it is called. Arrays of plain dtypes are read with pickling off.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from xtimage.errors import InputError

# (module, name) pairs that numpy's array pickles reference; nothing here runs user code.
_NUMPY_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}


_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays (of arrays) and refuses every other global."""

    def find_class(self, module: str, name: str):  # noqa: D102 (pickle's hook)
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}, which is not numpy")


def load_npy(path: str | Path) -> np.ndarray:
    """The array of a `.npy` file; an object array may hold only numpy arrays and scalars.

    Raises:
        InputError: the file is not a readable `.npy` file, or its pickle names anything
            but numpy's array reconstruction (a hostile or foreign file).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = _HEADERS.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version} (xtimage reads 1.0 and 2.0)")
            _, _, dtype = read_header(f)
            if not dtype.hasobject:
                f.seek(0)
                return np.lib.format.read_array(f, allow_pickle=False)
            array = _ArrayUnpickler(f).load()
    except pickle.UnpicklingError as exc:
        raise InputError(
            f"{path}: not loaded, its pickled contents are not plain numpy arrays ({exc}); "
            f"a file from an untrusted source, or not the format expected"
        ) from exc
    except Exception as exc:  # numpy and pickle raise many types for a corrupt file
        raise InputError(
            f"{path}: not a readable .npy file ({type(exc).__name__}: {exc}); the file is "
            f"corrupt or truncated"
        ) from exc
    if not isinstance(array, np.ndarray):
        raise InputError(f"{path}: holds a {type(array).__name__}, not a numpy array")
    return array
