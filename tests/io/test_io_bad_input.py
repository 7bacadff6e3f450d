"""One test per row of the bad-input table in docs/io.md: each a clear `XTError` that names
the file and the problem, never a codec traceback and never a silently wrong array."""

import os
import sys

import numpy as np
import pytest
import tifffile
from io_fixtures import sar_scene, smooth_image, write_geotiff, write_tiff_pyramid
from PIL import Image

from xtimage.cli import main
from xtimage.errors import ConfigError, DependencyError, InputError
from xtimage.io import (
    ArrayReader,
    ResampledReader,
    SlideReader,
    TiffReader,
    check_channels,
    open_reader,
)
from xtimage.window import Window


@pytest.fixture(scope="module")
def deflate_tiff(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "good.tif"
    return write_tiff_pyramid(path, smooth_image(512, 512, 1), tile=128, levels=2)


def cut(path, fraction, name, tmp_path):
    data = path.read_bytes()
    out = tmp_path / name
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match=r"missing.tif: no such file"):
        open_reader(tmp_path / "missing.tif")


def test_directory(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        open_reader(tmp_path)


def test_unsupported_format(tmp_path):
    (tmp_path / "notes.xyz").write_text("hello")
    with pytest.raises(InputError, match=r"notes.xyz: unsupported format '.xyz'; supported: "):
        open_reader(tmp_path / "notes.xyz")


def test_unknown_suffix_is_sniffed_from_the_first_bytes(tmp_path, deflate_tiff):
    renamed = tmp_path / "scene.dat"
    renamed.write_bytes(deflate_tiff.read_bytes())
    assert open_reader(renamed).backend == "tiff"


def test_empty_file(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(InputError, match="empty.tif: not a readable TIFF"):
        open_reader(tmp_path / "empty.tif")


def test_not_a_tiff_despite_its_suffix(tmp_path):
    (tmp_path / "fake.tif").write_bytes(os.urandom(4096))
    with pytest.raises(InputError, match="fake.tif: not a readable TIFF"):
        open_reader(tmp_path / "fake.tif")


def test_truncated_tiff_fails_on_open(tmp_path, deflate_tiff):
    truncated = cut(deflate_tiff, 0.6, "cut.tif", tmp_path)
    with pytest.raises(InputError, match=r"cut.tif: the image data runs to byte \d+ .* truncated"):
        open_reader(truncated)


def test_tiff_truncated_after_opening_fails_on_read(tmp_path, deflate_tiff):
    copy = tmp_path / "shrinking.tif"
    copy.write_bytes(deflate_tiff.read_bytes())
    reader = TiffReader(copy)
    os.truncate(copy, reader._pages[0][0].offsets[5] + 10)
    with pytest.raises(InputError, match=r"shrinking.tif: tile \d+ of level 0 .* truncated"):
        reader.read_region(Window(0, 0, 512, 512))


def test_corrupt_tile_bytes(tmp_path, deflate_tiff):
    reader = TiffReader(deflate_tiff)
    offset, count = int(reader._pages[0][0].offsets[3]), int(reader._pages[0][0].counts[3])
    data = bytearray(deflate_tiff.read_bytes())
    data[offset + 2 : offset + count] = bytes(count - 2)  # zero the deflate stream
    (tmp_path / "corrupt.tif").write_bytes(bytes(data))
    corrupt = TiffReader(tmp_path / "corrupt.tif")
    assert np.array_equal(
        corrupt.read_region(Window(0, 0, 128, 128)), reader.read_region(Window(0, 0, 128, 128))
    )
    with pytest.raises(InputError, match=r"corrupt.tif: tile 3 of level 0 .* could not be decoded"):
        corrupt.read_region(Window(0, 384, 128, 128))


def test_truncated_geotiff(tmp_path):
    path = write_geotiff(tmp_path / "scene.tif", sar_scene(300, 400), overviews=())
    truncated = cut(path, 0.6, "cut_scene.tif", tmp_path)
    with pytest.raises(InputError, match="cut_scene.tif: .*corrupt or truncated"):
        reader = open_reader(truncated)
        reader.read_region(Window(0, 0, 300, 400))


def test_truncated_slide(tmp_path, svs):
    truncated = cut(svs, 0.5, "cut.svs", tmp_path)
    with pytest.raises(InputError, match="cut.svs: "):
        reader = SlideReader(truncated)
        reader.read_region(Window(0, 0, reader.height, reader.width))


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_truncated_png_or_jpeg_fails_on_open(tmp_path, suffix):
    """Opening reads only the header; the missing end marker shows the cut (`xt info` too)."""
    Image.fromarray(smooth_image(200, 300, 3).transpose(1, 2, 0)).save(tmp_path / f"a.{suffix}")
    truncated = cut(tmp_path / f"a.{suffix}", 0.5, f"half.{suffix}", tmp_path)
    with pytest.raises(InputError, match=rf"half.{suffix}: the .* file has no end marker"):
        open_reader(truncated)
    assert main(["info", str(truncated)]) == 2


def test_corrupt_png_data_fails_on_first_read(tmp_path):
    Image.fromarray(smooth_image(200, 300, 3).transpose(1, 2, 0)).save(tmp_path / "photo.png")
    data = bytearray((tmp_path / "photo.png").read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 200] = bytes(200)  # the compressed pixels, end marker intact
    (tmp_path / "bad.png").write_bytes(bytes(data))
    reader = open_reader(tmp_path / "bad.png")  # the header is intact
    with pytest.raises(InputError, match="bad.png: the image data could not be decoded"):
        reader.read_region(Window(0, 0, 10, 10))


def test_decompression_bomb_png(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300 // 3)  # over twice the limit
    with pytest.raises(InputError, match="big.png: .*convert it to a tiled TIFF"):
        open_reader(tmp_path / "big.png")


def test_window_outside_the_image(deflate_tiff):
    with pytest.raises(
        InputError, match=r"good.tif: window .* lies outside level 0 of size 512 x 512"
    ):
        open_reader(deflate_tiff).read_region(Window(500, 0, 20, 20))


def test_level_that_does_not_exist(deflate_tiff):
    with pytest.raises(InputError, match=r"good.tif: level 2 does not exist \(the image has 2"):
        open_reader(deflate_tiff).read_region(Window(0, 0, 8, 8), level=2)


def test_band_count_that_does_not_match_the_model(deflate_tiff):
    with pytest.raises(InputError, match="good.tif: the image has 1 channel.* model expects 3"):
        check_channels(open_reader(deflate_tiff), 3)


def test_physical_request_without_pixel_size(deflate_tiff):
    with pytest.raises(InputError, match="good.tif: .*no pixel-size metadata.*pixel_size="):
        ResampledReader(open_reader(deflate_tiff), 0.5, "um")


def test_more_than_two_dimensions(tmp_path):
    tifffile.imwrite(
        tmp_path / "stack.ome.tif", np.zeros((3, 2, 32, 32), np.uint8), metadata={"axes": "TCYX"}
    )
    with pytest.raises(InputError, match="stack.ome.tif: the image has axes TCYX"):
        open_reader(tmp_path / "stack.ome.tif")


def test_missing_optional_dependency(tmp_path, monkeypatch, geotiff):
    monkeypatch.setitem(sys.modules, "rasterio", None)  # import rasterio now fails
    with pytest.raises(DependencyError, match=r"pip install 'xtimage\[geo\]'"):
        open_reader(geotiff, backend="geotiff")


def test_unknown_backend(deflate_tiff):
    with pytest.raises(ConfigError, match="unknown reader backend 'gdal'; known: npy, pil"):
        open_reader(deflate_tiff, backend="gdal")


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys, deflate_tiff):
    truncated = cut(deflate_tiff, 0.6, "cut.tif", tmp_path)
    assert main(["info", str(truncated)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cut.tif" in err and "truncated" in err
    assert "Traceback" not in err


def test_array_of_the_wrong_shape():
    with pytest.raises(InputError, match=r"expected a \(C, H, W\) or \(H, W\) image"):
        ArrayReader(np.zeros((2, 3, 4, 5)))
