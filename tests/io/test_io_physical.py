import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from io_fixtures import tiff_levels

from xtimage.errors import ConfigError, InputError
from xtimage.io import ArrayReader, PixelSize, ResampledReader, TiffReader, open_reader, to_pixels
from xtimage.io.physical import parse_length
from xtimage.window import Window


def slow_area_resample(image: np.ndarray, scale_y: float, scale_x: float) -> np.ndarray:
    """Output pixel (i, j) = mean of the source over [i*sy, (i+1)*sy) x [j*sx, (j+1)*sx),
    weighting each source pixel by its overlap area (clipped to the image)."""
    c, h, w = image.shape
    out_h, out_w = math.ceil(h / scale_y - 1e-9), math.ceil(w / scale_x - 1e-9)

    def weights(n_out, n_src, s):
        m = np.zeros((n_out, n_src))
        for i in range(n_out):
            a, b = i * s, min((i + 1) * s, n_src)
            for j in range(int(a), min(int(math.ceil(b)), n_src)):
                m[i, j] = max(0.0, min(b, j + 1) - max(a, j))
        return m / m.sum(1, keepdims=True)

    wy, wx = weights(out_h, h, scale_y), weights(out_w, w, scale_x)
    return np.einsum("ih,chw,jw->cij", wy, image.astype(np.float64), wx)


def test_parse_length_and_to_pixels():
    assert parse_length("0.5um") == (0.5, "um")
    assert parse_length(" 10 m") == (10.0, "m")
    assert parse_length("1.5e2nm") == (150.0, "nm")
    with pytest.raises(ConfigError, match="not a number with a unit"):
        parse_length("10 furlongs")
    reader = ArrayReader(np.zeros((1, 8, 8)), pixel_size=PixelSize(0.25, 0.5, "um"))
    assert to_pixels("128um", reader) == 256
    assert to_pixels("128um", reader, axis="y") == 512
    assert to_pixels("0.1mm", reader) == 200
    assert to_pixels(300, reader) == 300


@pytest.mark.parametrize(("target", "scale"), [(1.5, 1.5), (0.8, 0.8), (2.0, 2.0), (3.7, 3.7)])
def test_area_resampling_equals_a_slow_reference_and_windows_tile_seamlessly(target, scale):
    rng = np.random.default_rng(0)
    image = rng.random((2, 47, 61)).astype(np.float32)
    reader = ResampledReader(ArrayReader(image, pixel_size=PixelSize(1.0, 1.0, "um")), target, "um")
    truth = slow_area_resample(image, scale, scale)
    assert (reader.height, reader.width) == truth.shape[1:]
    whole = reader.read_region(Window(0, 0, reader.height, reader.width))
    np.testing.assert_allclose(whole, truth, rtol=1e-5, atol=1e-6)
    # windows read one by one reassemble the whole (each output pixel depends on its index only)
    step = 7
    tiled = np.zeros_like(whole)
    for top in range(0, reader.height, step):
        for left in range(0, reader.width, step):
            w = Window(top, left, step, step).intersect(Window(0, 0, reader.height, reader.width))
            rows, cols = w.slices()
            tiled[:, rows, cols] = reader.read_region(w)
    np.testing.assert_allclose(tiled, whole, rtol=1e-6, atol=1e-6)


def test_integer_factor_equals_torch_area_pooling():
    image = np.random.default_rng(1).random((3, 64, 96)).astype(np.float32)
    reader = ResampledReader(ArrayReader(image, pixel_size=PixelSize(0.25, 0.25, "um")), 1.0, "um")
    expected = F.interpolate(torch.from_numpy(image)[None], scale_factor=0.25, mode="area")[0]
    got = reader.read_region(Window(0, 0, 16, 24))
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_reads_from_the_coarsest_level_at_least_as_fine_as_the_target(jpeg_pyramid):
    base = TiffReader(jpeg_pyramid)  # 0.5 um/px, levels at 1, 2, 4
    assert ResampledReader(base, 0.5, "um").source_level == 0
    assert ResampledReader(base, 1.5, "um").source_level == 1
    assert ResampledReader(base, 2.0, "um").source_level == 2
    assert ResampledReader(base, 0.3, "um").source_level == 0  # finer than the file: upsample
    # at exactly a level's resolution, the level's pixels come back unchanged
    exact = ResampledReader(base, 1.0, "um")
    level1 = tiff_levels(jpeg_pyramid)[1]
    assert (exact.height, exact.width) == level1.shape[1:]
    assert np.array_equal(exact.read_region(Window(10, 20, 100, 130)), level1[:, 10:110, 20:150])
    assert exact.dtype == np.uint8 and exact.pixel_size == PixelSize(1.0, 1.0, "um")


def test_nearest_keeps_class_labels():
    labels = np.random.default_rng(2).integers(0, 5, (1, 30, 40)).astype(np.uint8)
    reader = ResampledReader(
        ArrayReader(labels, pixel_size=PixelSize(1.0, 1.0, "m")), 3.0, "m", method="nearest"
    )
    out = reader.read_region(Window(0, 0, reader.height, reader.width))
    centres_y = np.minimum((np.arange(reader.height) * 3 + 1.5).astype(int), 29)
    centres_x = np.minimum((np.arange(reader.width) * 3 + 1.5).astype(int), 39)
    assert np.array_equal(out[0], labels[0][np.ix_(centres_y, centres_x)])


def test_nodata_is_left_out_of_averages(sar):
    source = ArrayReader(sar, pixel_size=PixelSize(10.0, 10.0, "m"))
    source.nodata = -32768.0
    reader = ResampledReader(source, 20.0, "m")  # 2 x 2 cells of 10 m pixels
    out = reader.read_region(Window(0, 0, 150, 200))
    valid = sar != -32768
    cells = lambda a: a.reshape(2, 150, 2, 200, 2).sum(axis=(2, 4))  # noqa: E731
    count = cells(valid.astype(np.float64))
    expected = np.where(count > 0, cells(np.where(valid, sar, 0.0)) / np.maximum(count, 1), -32768)
    assert (count == 0).any() and ((count > 0) & (count < 4)).any()  # both cases occur
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_geotiff_at_a_coarser_resolution_keeps_its_place_on_the_map(geotiff):
    import rasterio

    reader = ResampledReader(open_reader(geotiff), 40.0, "m")
    assert reader.source_level == 2  # the 4x overview is exactly 40 m
    with rasterio.open(geotiff, overview_level=1) as ds:
        assert np.array_equal(reader.read_region(Window(0, 0, 75, 100)), ds.read())
        assert reader.geo.transform == tuple(ds.transform)[:6]


def test_physical_request_without_pixel_size_is_an_error_that_says_how():
    reader = ArrayReader(np.zeros((1, 10, 10)), path="scan.npy")
    with pytest.raises(
        InputError, match=r"scan.npy: .*no pixel-size metadata.*pixel_size=PixelSize"
    ):
        ResampledReader(reader, 0.5, "um")
    with pytest.raises(InputError, match="pixel_size="):
        to_pixels("100um", reader)
    given = ResampledReader(reader, 0.5, "um", pixel_size=PixelSize(0.25, 0.25, "um"))
    assert (given.height, given.width) == (5, 5)
