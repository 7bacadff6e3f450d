import json

import numpy as np
import pytest
from io_fixtures import smooth_image
from PIL import Image

from xtimage.cli import main
from xtimage.io import (
    ArrayReader,
    GeoTiffReader,
    PilReader,
    Reader,
    SlideReader,
    TiffReader,
    open_reader,
)
from xtimage.window import Window


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("LA", 2), ("RGB", 3), ("RGBA", 4)])
def test_png_reads_equal_the_pixels(tmp_path, mode, channels):
    image = smooth_image(50, 70, channels)
    Image.fromarray(image[0] if channels == 1 else image.transpose(1, 2, 0), mode).save(
        tmp_path / "a.png"
    )
    reader = open_reader(tmp_path / "a.png")
    assert isinstance(reader, PilReader) and isinstance(reader, Reader)
    assert (reader.channels, reader.height, reader.width, reader.dtype) == (
        channels,
        50,
        70,
        np.uint8,
    )
    assert reader._array is None  # opening decodes nothing
    assert np.array_equal(reader.read_region(Window(5, 7, 30, 40)), image[:, 5:35, 7:47])


def test_sixteen_bit_png_and_palette_png(tmp_path):
    deep = (smooth_image(40, 30, 1, "uint16")[0] * 200).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    reader = open_reader(tmp_path / "deep.png")
    assert reader.dtype == np.uint16 and np.array_equal(
        reader.read_region(Window(0, 0, 40, 30))[0], deep
    )
    rgb = smooth_image(20, 20, 3).transpose(1, 2, 0)
    palette = Image.fromarray(rgb).convert("P")
    palette.save(tmp_path / "pal.png")
    reader = open_reader(tmp_path / "pal.png")
    expected = np.asarray(palette.convert("RGB")).transpose(2, 0, 1)
    assert reader.channels == 3 and np.array_equal(
        reader.read_region(Window(0, 0, 20, 20)), expected
    )


def test_jpeg_equals_pillows_decode(tmp_path):
    rgb = smooth_image(64, 80, 3).transpose(1, 2, 0)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=90)
    expected = np.asarray(Image.open(tmp_path / "photo.jpg")).transpose(2, 0, 1)
    assert np.array_equal(
        open_reader(tmp_path / "photo.jpg").read_region(Window(3, 4, 50, 60)),
        expected[:, 3:53, 4:64],
    )


def test_backends_are_chosen_by_suffix_and_content(tmp_path, jpeg_pyramid, geotiff, svs):
    np.save(tmp_path / "a.npy", np.zeros((2, 5, 5)))
    assert type(open_reader(tmp_path / "a.npy")) is ArrayReader
    assert type(open_reader(jpeg_pyramid)) is TiffReader
    assert type(open_reader(geotiff)) is GeoTiffReader
    assert type(open_reader(svs)) is SlideReader
    assert type(open_reader(svs, backend="tiff")) is TiffReader


def test_xt_info_describes_a_geotiff(geotiff, capsys):
    assert main(["info", str(geotiff), "--region", "128", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["file"]
    assert info["backend"] == "geotiff" and info["size"] == [300, 400] and info["channels"] == 2
    assert info["pixel_size"] == {"y": 10.0, "x": 10.0, "unit": "m"}
    assert info["nodata"] == -32768
    assert info["georeference"]["epsg"] == 32633
    assert info["tile"] == [128, 128] and info["compression"] == "deflate"
    assert info["levels"] == [[300, 400, 1.0], [150, 200, 2.0], [75, 100, 4.0]]


def test_xt_info_text_for_a_slide(svs, capsys):
    assert main(["info", str(svs), "--region", "256"]) == 0
    out = capsys.readouterr().out
    assert "backend     openslide (aperio)" in out
    assert "pixel size  0.499 x 0.499 um" in out
    assert "level 1     128 x 160 px, downsample 4" in out
    assert "regions     6 = 2 x 3 of 256 px" in out


def test_windows_are_fresh_arrays_the_caller_may_modify(tmp_path):
    image = np.arange(4 * 6, dtype=np.float32).reshape(1, 4, 6)
    Image.fromarray(image[0].astype(np.uint8)).save(tmp_path / "a.png")
    for reader in (ArrayReader(image), open_reader(tmp_path / "a.png")):
        whole = Window(0, 0, 4, 6)  # a full-width window: slicing alone would give a view
        first = reader.read_region(whole)
        first += 100
        assert np.array_equal(reader.read_region(whole), image.astype(reader.dtype))


def test_xt_info_region_in_microns(svs, tmp_path, capsys):
    assert main(["info", str(svs), "--region", "127.744um", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["region"] == 256  # 127.744 / 0.499
    np.save(tmp_path / "a.npy", np.zeros((1, 64, 64), np.uint8))
    assert main(["info", str(tmp_path / "a.npy"), "--region", "10um"]) == 2
    assert "pixel_size=" in capsys.readouterr().err
