"""ValidPixels: which pixels and regions hold data; filled reads; masked writes."""

import math

import numpy as np

from xtimage.io.array import ArrayReader
from xtimage.io.base import read_padded
from xtimage.io.nodata import MaskedWriter, ValidPixels, output_nodata
from xtimage.tiling import RegionPlan
from xtimage.window import Window


def reader_with_nodata(data: np.ndarray, nodata: float) -> ArrayReader:
    reader = ArrayReader(data)
    reader.nodata = nodata
    return reader


def test_keep_drops_only_regions_wholly_without_data():
    data = np.full((2, 128, 192), -1, np.int16)  # 2 x 3 regions of 64, all nodata
    data[1, 70, 130] = 5  # one valid pixel in one band of region (1, 2)
    data[:, 0:64, 64:128] = 3  # region (0, 1) full of data
    valid = ValidPixels(reader_with_nodata(data, -1))
    plan = RegionPlan(128, 192, 64)
    assert valid.keep(plan) == [False, True, False, False, False, True]
    assert len(valid.skipped) == 4
    coarse = valid.keep(plan, max_side=4)  # cells of 48 px straddle regions: fewer skipped
    assert coarse[1] and coarse[5] and len(valid.skipped) == coarse.count(False)


def test_filled_reads_keep_the_dtype_and_valid_pixels():
    data = np.arange(2 * 4 * 5, dtype=np.int16).reshape(2, 4, 5)
    data[:, 0, 0] = -9
    data[0, 1, 1] = -9  # one band only: the pixel holds data
    filled = ValidPixels(reader_with_nodata(data, -9)).filled()
    out = filled.read_region(Window(0, 0, 4, 5))
    assert out.dtype == np.int16 and filled.nodata is None
    assert (out[:, 0, 0] == 0).all() and out[0, 1, 1] == -9
    assert np.array_equal(out[:, 2:, 2:], data[:, 2:, 2:])


def test_a_users_mask_marks_pixels_without_data():
    data = np.ones((1, 8, 8), np.uint8)
    mask = np.zeros((1, 8, 8), np.uint8)
    mask[0, 4:, 4:] = 1
    valid = ValidPixels(ArrayReader(data), mask=ArrayReader(mask))
    assert np.array_equal(valid.pixels(Window(0, 0, 8, 8)), mask[0] == 1)
    assert valid.keep(RegionPlan(8, 8, 4)) == [False, False, False, True]


class Recorder:
    def __init__(self):
        self.writes, self.closed = [], False

    def write(self, window, data):
        self.writes.append((window, data))

    def close(self):
        self.closed = True

    def abort(self):
        pass


def test_masked_writer_writes_nodata_at_invalid_pixels_and_skipped_cores():
    data = np.ones((1, 8, 8), np.float32)
    data[0, :2, :2] = np.nan  # NaN never holds data
    valid = ValidPixels(reader_with_nodata(data, -1.0))
    valid.skipped = [Window(4, 4, 4, 4)]
    inner = Recorder()
    writer = MaskedWriter(inner, valid, output_nodata(np.uint8))
    writer.write(Window(0, 0, 4, 10), np.zeros((1, 4, 10), np.uint8))  # past the border
    window, part = inner.writes[0]
    assert window == Window(0, 0, 4, 8) and part.shape == (1, 4, 8)
    assert (part[0, :2, :2] == 255).all() and (part[0, 2:] == 0).all()
    writer.close()
    assert inner.closed and inner.writes[1][0] == Window(4, 4, 4, 4)
    assert (inner.writes[1][1] == 255).all() and math.isnan(output_nodata(np.float32))


def test_padding_past_the_border_is_the_nodata_value():
    reader = reader_with_nodata(np.ones((1, 4, 4), np.int16), -32768)
    out = read_padded(reader, Window(2, 2, 4, 4))
    assert (out[0, 2:, :] == -32768).all() and (out[0, :2, :2] == 1).all()
    plain = ArrayReader(np.ones((1, 4, 4), np.int16))
    assert (read_padded(plain, Window(2, 2, 4, 4))[0, 3] == 0).all()
    assert ValidPixels.of(ArrayReader(np.ones((1, 4, 4), np.int16))) is None


def test_an_alpha_band_marks_pixels_without_data_for_an_rgb_model():
    rgba = np.full((4, 8, 8), 200, np.uint8)
    rgba[3, :4, :] = 0  # transparent top half
    reader = ArrayReader(rgba)
    assert ValidPixels.of(reader) is None  # no model: alpha is just a band
    valid = ValidPixels.of(reader, channels=3)
    assert valid.alpha == 3 and valid.pixels(Window(0, 0, 8, 8))[:4].sum() == 0
    assert valid.keep(RegionPlan(8, 8, 4)) == [False, False, True, True]
    assert (valid.filled().read_region(Window(0, 0, 8, 8))[:3, :4] == 0).all()
