import numpy as np
import pytest
import rasterio
from io_fixtures import smooth_image, tiff_levels

from xtimage.errors import ConfigError, InputError
from xtimage.io import (
    AtomicPath,
    GeoTiffWriter,
    PixelSize,
    TiffWriter,
    Writer,
    atomic_path,
    open_reader,
)
from xtimage.tiling import RegionPlan
from xtimage.window import Window


def write_by_region_cores(writer, image, region=96, margin=10, seed=0):
    """Write ``image`` core by core (unaligned to tiles, cores past the edge), shuffled."""
    plan = RegionPlan(image.shape[1], image.shape[2], region, margin)
    order = np.random.default_rng(seed).permutation(plan.num_regions)
    for index in order:
        core = plan.core_window(int(index))
        data = np.zeros((image.shape[0], core.height, core.width), image.dtype)
        inside = core.intersect(Window(0, 0, image.shape[1], image.shape[2]))
        rows, cols = inside.shift(-core.top, -core.left).slices()
        data[:, rows, cols] = image[(slice(None), *inside.slices())]
        writer.write(core, data)


def mean_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Reference pyramid: each level the 2 x 2 mean of the one above (partial cells: mean
    of the pixels they have), computed in float64."""
    out = [image.astype(np.float64)]
    for _ in range(levels - 1):
        a = out[-1]
        c, h, w = a.shape
        padded = np.full((c, h + h % 2, w + w % 2), np.nan)
        padded[:, :h, :w] = a
        out.append(np.nanmean(padded.reshape(c, (h + 1) // 2, 2, (w + 1) // 2, 2), axis=(2, 4)))
    return out


def test_tiff_writer_round_trips_and_builds_a_mean_pyramid(tmp_path):
    image = smooth_image(300, 410, 2, "float32")
    path = tmp_path / "heatmap.ome.tif"
    with TiffWriter(
        path, 300, 410, channels=2, dtype="float32", tile=64, compression="zstd",
        pixel_size=PixelSize(0.5, 0.5, "um"),
    ) as writer:  # fmt: skip
        assert isinstance(writer, Writer)
        write_by_region_cores(writer, image)
        assert not path.exists()  # nothing under the final name before close
    levels = tiff_levels(path)  # read back by tifffile itself
    assert len(levels) == 4  # 410 -> 205 -> 103 -> 52 <= 64
    assert np.array_equal(levels[0], image)
    for got, expected in zip(levels, mean_pyramid(image, 4), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)  # float32 storage
    reader = open_reader(path)
    assert reader.pixel_size == PixelSize(0.5, 0.5, "um")
    assert reader.metadata["tile"] == [64, 64]
    assert [p.name for p in tmp_path.iterdir()] == ["heatmap.ome.tif"]  # scratch files gone


def test_class_maps_use_nearest_and_rgb_jpeg_works(tmp_path):
    labels = np.random.default_rng(0).integers(0, 7, (1, 200, 150)).astype(np.uint8)
    with TiffWriter(tmp_path / "classes.tif", 200, 150, tile=64, resampling="nearest") as w:
        write_by_region_cores(w, labels, region=64, margin=0)
    levels = tiff_levels(tmp_path / "classes.tif")
    for k, level in enumerate(levels):
        assert np.array_equal(level, labels[:, :: 2**k, :: 2**k])
    rgb = smooth_image(130, 170, 3)
    with TiffWriter(tmp_path / "rgb.tif", 130, 170, 3, tile=64, compression="jpeg") as w:
        w.write(Window(0, 0, 130, 170), rgb)
    back = tiff_levels(tmp_path / "rgb.tif")[0]
    assert np.abs(back.astype(int) - rgb).mean() < 3  # lossy, but close


def test_an_interrupted_write_leaves_no_file(tmp_path):
    path = tmp_path / "mask.tif"
    with pytest.raises(RuntimeError, match="killed"), TiffWriter(path, 100, 100, tile=32) as w:
        w.write(Window(0, 0, 50, 50), np.ones((1, 50, 50), np.uint8))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    writer = GeoTiffWriter(tmp_path / "geo.tif", 100, 100)
    assert isinstance(writer, Writer)
    writer.write(Window(0, 0, 10, 10), np.ones((1, 10, 10), np.uint8))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_writers_check_their_arguments(tmp_path):
    with pytest.raises(ConfigError, match="JPEG needs uint8"):
        TiffWriter(tmp_path / "a.tif", 10, 10, dtype="float32", compression="jpeg")
    with pytest.raises(ConfigError, match="multiple of 16"):
        TiffWriter(tmp_path / "a.tif", 10, 10, tile=100)
    with pytest.raises(InputError, match="output directory .* does not exist"):
        TiffWriter(tmp_path / "missing" / "a.tif", 10, 10)
    writer = TiffWriter(tmp_path / "a.tif", 10, 10)
    with pytest.raises(InputError, match="does not match window"):
        writer.write(Window(0, 0, 5, 5), np.zeros((2, 5, 5), np.uint8))
    writer.abort()


@pytest.mark.parametrize("cog", [False, True])
def test_geotiff_writer_keeps_the_georeference(tmp_path, geotiff, sar, cog):
    source = open_reader(geotiff)
    path = tmp_path / "prediction.tif"
    prediction = np.where(sar[:1] == -32768, -1, sar[:1] > -15).astype(np.float32)
    with GeoTiffWriter(
        path, source.height, source.width, 1, "float32", geo=source.geo, nodata=-1,
        tile=64, cog=cog, resampling="nearest",
    ) as writer:  # fmt: skip
        write_by_region_cores(writer, prediction, region=80, margin=8)
    with rasterio.open(path) as ds:
        assert ds.crs == rasterio.crs.CRS.from_wkt(source.geo.crs_wkt)
        assert tuple(ds.transform)[:6] == source.geo.transform
        assert ds.nodata == -1
        assert np.array_equal(ds.read(), prediction)
        assert ds.overviews(1) == [2, 4, 8]  # 400 px wide: down to 50 <= one 64 px tile
        assert (ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG") == cog
    assert [p.name for p in tmp_path.iterdir()] == ["prediction.tif"]


def test_atomic_path_renames_only_on_success(tmp_path):
    final = tmp_path / "out.json"
    final.write_text("old")
    with pytest.raises(ValueError), atomic_path(final) as temp:
        temp.write_text("half")
        raise ValueError
    assert final.read_text() == "old" and list(tmp_path.iterdir()) == [final]
    with atomic_path(final) as temp:
        temp.write_text("new")
        assert temp.parent == final.parent and temp.name.startswith(".out.json.")
    assert final.read_text() == "new"
    with pytest.raises(InputError, match="exists"):
        AtomicPath(final, overwrite=False)
