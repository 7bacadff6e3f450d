import numpy as np
import pytest
import rasterio
from io_fixtures import UTM_33N, write_geotiff
from rasterio.enums import Resampling

from xtimage.io import GeoTiffReader, PixelSize, Prefetcher, open_reader
from xtimage.window import Window


def test_geotiff_is_opened_by_rasterio_with_georeference_and_nodata(geotiff):
    reader = open_reader(geotiff)
    assert isinstance(reader, GeoTiffReader) and reader.backend == "geotiff"
    assert (reader.channels, reader.height, reader.width, reader.dtype) == (2, 300, 400, np.float32)
    assert reader.nodata == -32768
    assert reader.pixel_size == PixelSize(10.0, 10.0, "m")
    assert reader.geo.epsg == 32633
    assert reader.geo.transform == (10.0, 0.0, 499000.0, 0.0, -10.0, 4001000.0)
    assert rasterio.crs.CRS.from_wkt(reader.geo.crs_wkt) == rasterio.crs.CRS.from_string(UTM_33N)
    assert [lv.downsample for lv in reader.levels] == [1.0, 2.0, 4.0]
    assert reader.metadata["tile"] == [128, 128] and reader.metadata["compression"] == "deflate"


def test_windows_equal_slicing_at_every_level(geotiff, sar):
    reader = GeoTiffReader(geotiff)
    rng = np.random.default_rng(1)
    with rasterio.open(geotiff) as ds:
        truth = [sar] + [
            ds.read(out_shape=(2, lv.height, lv.width), resampling=Resampling.nearest)
            for lv in reader.levels[1:]
        ]
    for level, array in enumerate(truth):
        h, w = array.shape[1:]
        for _ in range(6):
            top, left = int(rng.integers(0, h)), int(rng.integers(0, w))
            window = Window(
                top, left, int(rng.integers(1, h - top + 1)), int(rng.integers(1, w - left + 1))
            )
            rows, cols = window.slices()
            assert np.array_equal(reader.read_region(window, level), array[:, rows, cols])


def test_reads_from_several_threads_use_their_own_handles(geotiff, sar):
    reader = GeoTiffReader(geotiff)
    windows = [Window(r, c, 64, 64) for r in range(0, 300, 50) for c in range(0, 400, 50)]
    for window, array in Prefetcher(reader, windows, workers=3, depth=6):
        inside = window.intersect(Window(0, 0, 300, 400))
        rows, cols = inside.slices()
        assert np.array_equal(array[:, : inside.height, : inside.width], sar[:, rows, cols])
    assert len(reader._handles) >= 2  # the main thread's and at least one worker's
    reader.close()
    assert reader._handles == []


def test_geographic_crs_has_no_pixel_size_in_metres(tmp_path, sar):
    path = write_geotiff(
        tmp_path / "lonlat.tif", sar, crs="EPSG:4326", origin=(14.9, 36.1), pixel=1e-4, overviews=()
    )
    reader = open_reader(path)
    assert reader.geo.epsg == 4326 and reader.pixel_size is None
    assert reader.levels[1:] == []


def test_plain_tiff_with_tif_suffix_goes_to_tifffile(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((32, 32), np.uint8))
    assert open_reader(tmp_path / "plain.tif").backend == "tiff"


@pytest.mark.parametrize("backend", ["tiff", "geotiff"])
def test_both_backends_agree_on_a_geotiff(geotiff, backend):
    reader = open_reader(geotiff, backend=backend)
    window = Window(100, 150, 120, 200)
    assert np.array_equal(reader.read_region(window), GeoTiffReader(geotiff).read_region(window))
    assert reader.nodata == -32768
