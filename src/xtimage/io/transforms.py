"""Reader-side pixel transforms: nodata fill, SAR dB clipping and scaling, mean/std, and
band matching.

A data set's own value mapping belongs to the data: these are plain callables on a
(C, h, w) array that return float32, applied to each window right after it is read
(``RegionSource(reader, transform=...)``, or `TransformedReader`). The statistics a
pretrained backbone expects (ImageNet's mean and std) are the model's instead
(``model.pixel_mean`` / ``pixel_std``, applied by the region encoder), so that training,
evaluation and prediction cannot disagree on them. Compose them in the
order written: fill nodata first, so that the nodata value never enters a statistic.

For xView3-SAR scenes (VV and VH backscatter in dB, nodata -32768), the reference
pipeline clips below -50 dB; ``Compose(FillNodata(-32768, -50), SarDb(-50, 20),
Normalize(...))`` reproduces that and maps the dB range to [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from xtimage.errors import ConfigError
from xtimage.io.base import Reader, check_channels, check_window
from xtimage.window import Window

Transform = Callable[[np.ndarray], np.ndarray]


def _per_channel(values: float | Sequence[float], name: str) -> np.ndarray:
    """``values`` as a (C, 1, 1) float32 array that broadcasts over (C, h, w)."""
    array = np.asarray(values, np.float32).reshape(-1, 1, 1)
    if array.size == 0:
        raise ConfigError(f"{name} is empty; give one value or one per channel")
    return array


def _check_channels(x: np.ndarray, stats: np.ndarray, name: str) -> None:
    if stats.shape[0] not in (1, x.shape[0]):
        raise ConfigError(
            f"{name} has {stats.shape[0]} values but the image has {x.shape[0]} channels; "
            f"give one value or one per channel"
        )


class FillNodata:
    """Replace the nodata value (and NaN) with ``value``.

    Args:
        nodata: the file's nodata value (`Reader.nodata`), or None for NaN only.
        value: what to put instead, e.g. 0 or the SAR clipping floor.
    """

    def __init__(self, nodata: float | None, value: float = 0.0) -> None:
        self.nodata, self.value = nodata, value

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        invalid = np.isnan(x)
        if self.nodata is not None and not np.isnan(self.nodata):
            invalid |= x == np.float32(self.nodata)
        x[invalid] = self.value
        return x


class SarDb:
    """Clip SAR backscatter in dB to ``[low, high]``; with ``scale``, map it to [0, 1].

    Args:
        low: floor in dB (xView3's reference clips below -50).
        high: ceiling in dB, or None for no ceiling.
        scale: map ``[low, high]`` linearly to [0, 1] (needs ``high``).
    """

    def __init__(self, low: float = -50.0, high: float | None = 20.0, scale: bool = True) -> None:
        if high is not None and high <= low:
            raise ConfigError(f"SAR dB range [{low}, {high}] is empty; high must exceed low")
        if scale and high is None:
            raise ConfigError("SAR dB scaling to [0, 1] needs a ceiling: give high=")
        self.low, self.high, self.scale = low, high, scale

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.clip(x.astype(np.float32), self.low, self.high)
        if self.scale:
            x = (x - self.low) / np.float32(self.high - self.low)
        return x


class Normalize:
    """``(x - mean) / std`` per channel (or one value for all channels).

    Args:
        mean: one value or one per channel.
        std: one value or one per channel, all positive.
    """

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        self.mean = _per_channel(mean, "mean")
        self.std = _per_channel(std, "std")
        if (self.std <= 0).any():
            raise ConfigError(f"std must be positive, got {self.std.ravel().tolist()}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        _check_channels(x, self.mean, "mean")
        _check_channels(x, self.std, "std")
        return (x.astype(np.float32) - self.mean) / self.std


class Compose:
    """Apply transforms in order."""

    def __init__(self, *transforms: Transform) -> None:
        self.transforms = transforms

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for transform in self.transforms:
            x = transform(x)
        return x


class TransformedReader:
    """A reader whose windows pass through ``transform`` (float32 out).

    Windows past the border (`read_padded`) are padded after the transform: a constant
    ``fill`` in the transformed space, or ``mode="edge"`` (the engine's padding), which
    gives the same pixels as padding first for a per-pixel transform.

    Args:
        reader: the source image.
        transform: a callable on (C, h, w) arrays, e.g. a `Compose`.
    """

    def __init__(self, reader: Reader, transform: Transform) -> None:
        self.reader, self.transform = reader, transform
        for name in (
            "path",
            "height",
            "width",
            "channels",
            "levels",
            "pixel_size",
            "backend",
            "geo",
        ):
            setattr(self, name, getattr(reader, name))
        self.dtype = np.dtype(np.float32)
        self.nodata = None  # the transform maps it elsewhere: fill it first (FillNodata)
        self.metadata = dict(reader.metadata)

    def read_region(self, window: Window, level: int = 0) -> np.ndarray:
        check_window(self, window, level)
        return self.transform(self.reader.read_region(window, level)).astype(np.float32, copy=False)

    def close(self) -> None:
        self.reader.close()


def match_channels(reader: Reader, channels: int) -> Reader:
    """The reader seen with ``channels`` bands where photo conventions allow it: grey ->
    RGB (the band repeated), RGBA -> RGB and grey + alpha -> grey (alpha dropped). Any
    other mismatch is an `InputError` naming the model's ``in_chans``. Pixel values and
    their type are unchanged."""
    have = reader.channels
    if have == channels:
        return reader
    if channels == 3 and have == 1:
        bands = [0, 0, 0]
    elif (channels, have) in ((3, 4), (1, 2)):
        bands = list(range(channels))
    else:
        check_channels(reader, channels)  # raises, naming the fix
    return _Bands(reader, bands)


class _Bands:
    """A reader of some bands of another, in a given order (dtype kept)."""

    def __init__(self, reader: Reader, bands: list[int]) -> None:
        self.reader, self.bands = reader, bands
        for name in ("path", "height", "width", "levels", "pixel_size", "backend", "geo"):
            setattr(self, name, getattr(reader, name))
        self.channels, self.dtype = len(bands), reader.dtype
        self.nodata = getattr(reader, "nodata", None)
        self.metadata = dict(reader.metadata)

    def read_region(self, window: Window, level: int = 0) -> np.ndarray:
        return self.reader.read_region(window, level)[self.bands]

    def close(self) -> None:
        self.reader.close()
