"""Nodata honoured end to end: `xt predict` on a GDAL-written COG with a nodata corner
skips the wholly-nodata region, masks the partial ones, and writes NoData there, declared
in the outputs' metadata."""

import math

import numpy as np
import pytest

from test_predict import predictor
from xtimage.checkpoint import save_checkpoint
from xtimage.cli import main
from xtimage.window import Window

rasterio = pytest.importorskip("rasterio")

CORNER = 70  # rows and columns 0-69: region (0, 0) wholly, (0, 1) and (1, 0) partly nodata


def write_cog(path, nodata: int, seed: int = 0):
    """A 3-band int16 COG of 100 x 150 px (EPSG:32633), its top-left corner ``nodata``."""
    from rasterio.shutil import copy

    data = np.random.default_rng(seed).integers(0, 20000, (3, 100, 150)).astype(np.int16)
    data[:, :CORNER, :CORNER] = nodata
    plain = path.with_suffix(".gtiff")
    profile = dict(driver="GTiff", height=100, width=150, count=3, dtype="int16",
                   crs="EPSG:32633", transform=rasterio.Affine(10, 0, 5e5, 0, -10, 4.1e6),
                   nodata=nodata, tiled=True, blockxsize=32, blockysize=32)  # fmt: skip
    with rasterio.open(plain, "w", **profile) as ds:
        ds.write(data)
    copy(plain, path, driver="COG", blocksize=32)
    return path


def test_xt_predict_writes_declared_nodata_where_the_input_has_none(tmp_path, capsys):
    pred, config = predictor()
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", pred.model, config)
    for nodata in (-32768, 7):  # the same pixels, different raw values in the corner
        src = write_cog(tmp_path / f"scene{nodata}.tif", nodata)
        with rasterio.open(src) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and ds.nodata == nodata
        out = tmp_path / f"out{nodata}"
        assert main(["predict", str(ckpt), str(src), "-o", str(out), "--heatmap", "--quiet"]) == 0
    capsys.readouterr()
    masks, heats = [], []
    for nodata in (-32768, 7):
        with rasterio.open(tmp_path / f"out{nodata}/scene{nodata}.mask.tif") as ds:
            assert ds.nodata == 255 and ds.crs == rasterio.crs.CRS.from_epsg(32633)
            masks.append(ds.read(1))
        with rasterio.open(tmp_path / f"out{nodata}/scene{nodata}.heatmap.tif") as ds:
            assert math.isnan(ds.nodata)
            heats.append(ds.read(1))
    corner = np.zeros((100, 150), bool)
    corner[:CORNER, :CORNER] = True
    for mask, heat in zip(masks, heats, strict=True):
        assert (mask[corner] == 255).all() and (mask[~corner] <= 1).all()
        assert np.isnan(heat[corner]).all() and np.isfinite(heat[~corner]).all()
    # the model never saw the nodata values: different raw corners, the same predictions
    np.testing.assert_allclose(heats[0][~corner], heats[1][~corner], atol=1e-6)
    assert np.array_equal(masks[0], masks[1])


def test_a_plain_tiff_output_declares_its_nodata_too(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    from xtimage.io import open_reader

    rgba = np.random.default_rng(0).integers(0, 256, (100, 150, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[:CORNER, :CORNER, 3] = 0  # transparent corner
    tifffile.imwrite(tmp_path / "photo.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    pred, _ = predictor()
    pred.predict_file(tmp_path / "photo.tif", tmp_path / "out", heatmap=True)
    mask = open_reader(tmp_path / "out" / "photo.mask.tif")
    heat = open_reader(tmp_path / "out" / "photo.heatmap.tif")
    assert mask.nodata == 255 and math.isnan(heat.nodata)
    m = mask.read_region(Window(0, 0, 100, 150))[0]
    assert (m[:CORNER, :CORNER] == 255).all() and (m[CORNER:] <= 1).all()
