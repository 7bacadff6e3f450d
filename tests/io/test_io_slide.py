import numpy as np
import pytest
from io_fixtures import MPP, tiff_levels

from xtimage.errors import InputError
from xtimage.io import PixelSize, Reader, SlideReader, open_reader
from xtimage.window import Window


def test_openslide_opens_the_aperio_fixture_with_its_levels_and_mpp(svs):
    reader = open_reader(svs)
    assert isinstance(reader, SlideReader) and isinstance(reader, Reader)
    assert reader.backend == "openslide" and reader.metadata["format"] == "aperio"
    assert (reader.channels, reader.height, reader.width, reader.dtype) == (3, 512, 640, np.uint8)
    assert [(lv.height, lv.width, lv.downsample) for lv in reader.levels] == [
        (512, 640, 1.0),
        (128, 160, 4.0),
    ]
    assert reader.pixel_size == PixelSize(MPP, MPP, "um")
    assert reader.metadata["associated_images"] == ["thumbnail"]


def test_openslide_windows_equal_tifffiles_decode_of_the_same_pages(svs):
    reader = SlideReader(svs)
    levels = tiff_levels(svs)  # tifffile decodes the same JPEG tiles: same libjpeg-turbo
    rng = np.random.default_rng(2)
    for level, array in enumerate(levels):
        h, w = array.shape[1:]
        windows = [Window(0, 0, h, w), Window(h - 7, w - 9, 7, 9)]
        for _ in range(6):
            top, left = int(rng.integers(0, h)), int(rng.integers(0, w))
            height, width = int(rng.integers(1, h - top + 1)), int(rng.integers(1, w - left + 1))
            windows.append(Window(top, left, height, width))
        for window in windows:
            rows, cols = window.slices()
            got = reader.read_region(window, level)
            assert got.shape == (3, window.height, window.width)
            assert np.array_equal(got, array[:, rows, cols]), (level, window)


def test_tifffile_reads_the_svs_too_with_the_mpp_from_the_description(svs):
    reader = open_reader(svs, backend="tiff")
    assert reader.pixel_size == PixelSize(MPP, MPP, "um")
    assert reader.metadata["format"] == "SVS"
    window = Window(100, 200, 150, 250)
    assert np.array_equal(reader.read_region(window), SlideReader(svs).read_region(window))


def test_a_plain_tiff_is_not_a_slide(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "plain.svs", np.zeros((3, 40, 40), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match="not a slide format OpenSlide can read|OpenSlide cannot"):
        SlideReader(tmp_path / "plain.svs")
