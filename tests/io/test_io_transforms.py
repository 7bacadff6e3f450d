import numpy as np
import pytest

from xtimage.errors import ConfigError
from xtimage.io import (
    ArrayReader,
    Compose,
    FillNodata,
    Normalize,
    SarDb,
    TransformedReader,
    read_padded,
)
from xtimage.window import Window


def test_fill_nodata_replaces_the_value_and_nan_only():
    x = np.array([[[-32768, 1.5, np.nan, -32767]]], np.float32)
    out = FillNodata(-32768, value=-50)(x)
    assert out.tolist() == [[[-50.0, 1.5, -50.0, -32767.0]]]
    assert out.dtype == np.float32


def test_sar_db_clips_and_scales_linearly():
    x = np.array([[[-80.0, -50.0, -15.0, 20.0, 35.0]]], np.float32)
    np.testing.assert_allclose(SarDb(-50, 20)(x), [[[0.0, 0.0, 35 / 70, 1.0, 1.0]]])
    np.testing.assert_allclose(SarDb(-50, None, scale=False)(x), [[[-50, -50, -15, 20, 35]]])
    with pytest.raises(ConfigError, match="needs a ceiling"):
        SarDb(-50, None)
    with pytest.raises(ConfigError, match="empty"):
        SarDb(10, -10)


def test_normalize_per_channel_and_channel_mismatch():
    x = np.random.default_rng(0).random((3, 4, 5)) * 255
    mean, std = [10.0, 20.0, 30.0], [2.0, 4.0, 8.0]
    out = Normalize(mean, std)(x)
    for c in range(3):
        np.testing.assert_allclose(out[c], (x[c] - mean[c]) / std[c], rtol=1e-5)
    np.testing.assert_allclose(Normalize(5.0, 2.0)(x), (x - 5) / 2, rtol=1e-5)
    with pytest.raises(ConfigError, match="2 values but the image has 3 channels"):
        Normalize([1, 2], [1, 1])(x)
    with pytest.raises(ConfigError, match="std must be positive"):
        Normalize(0, [1, 0, 1])


def test_transformed_reader_applies_the_chain_in_order():
    sar = np.array([[[-32768, -60, -10], [0, 5, -32768]]], np.float32)
    chain = Compose(FillNodata(-32768, -50), SarDb(-50, 20), Normalize(0.5, 0.25))
    reader = TransformedReader(ArrayReader(sar), chain)
    expected = ((np.clip(np.where(sar == -32768, -50, sar), -50, 20) + 50) / 70 - 0.5) / 0.25
    np.testing.assert_allclose(reader.read_region(Window(0, 0, 2, 3)), expected, rtol=1e-6)
    assert reader.dtype == np.float32 and reader.nodata is None
    padded = read_padded(reader, Window(-1, 0, 3, 3))
    assert (padded[:, 0] == 0).all()
    np.testing.assert_allclose(padded[:, 1:], expected, rtol=1e-6)
