"""xView3 scene reader, labels, shorelines and crops, checked against rasterio and pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
from hypothesis import given
from hypothesis import strategies as st
from rasterio.enums import Resampling

from xtimage.data.xview3 import (
    BAND_RANGES,
    LABEL_COLUMNS,
    NODATA,
    XView3Crops,
    XView3Scene,
    collate_crops,
    list_scenes,
    plan_crops,
    read_labels,
    scale_bands,
    scene_bands,
)
from xtimage.errors import ConfigError, InputError
from xtimage.io.base import read_padded
from xtimage.metrics.xview3 import load_shoreline
from xtimage.window import Window

from .xview3_fixture import HEIGHT, WIDTH, write_xview3_fixture


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return write_xview3_fixture(tmp_path_factory.mktemp("xview3"))


def rasterio_on_sar_grid(path, shape=(HEIGHT, WIDTH)) -> np.ndarray:
    """A whole band read by rasterio, resampled by GDAL's nearest to the SAR grid."""
    with rasterio.open(path) as ds:
        return ds.read(1, out_shape=shape, resampling=Resampling.nearest)


def test_fixture_is_the_real_layout_read_back_by_rasterio_and_pandas(fx):
    for scene_id in fx.scene_ids:
        folder = fx.root / scene_id
        for band in ("VV_dB", "VH_dB"):
            with rasterio.open(folder / f"{band}.tif") as ds:
                assert ds.crs.to_epsg() == 32631
                assert ds.nodata == NODATA
                assert ds.dtypes == ("float32",)
                assert (ds.height, ds.width) == (HEIGHT, WIDTH)
                assert ds.res == (10.0, 10.0)
        with rasterio.open(folder / "bathymetry.tif") as ds:
            assert (ds.height, ds.width) == (HEIGHT // 2, WIDTH // 2)
            bounds = ds.bounds
        with rasterio.open(folder / "VV_dB.tif") as ds:
            assert ds.bounds == bounds
    labels = pd.read_csv(fx.labels_csv)
    assert list(labels.columns) == list(LABEL_COLUMNS)
    assert set(labels["scene_id"]) == set(fx.scene_ids)
    # Latitude and longitude land on the labelled pixel through the GeoTIFF's georeference.
    from rasterio.warp import transform as warp_transform

    for scene_id, rows in labels.groupby("scene_id"):
        with rasterio.open(fx.root / scene_id / "VV_dB.tif") as ds:
            lon, lat = rows["detect_lon"].tolist(), rows["detect_lat"].tolist()
            x, y = warp_transform("EPSG:4326", ds.crs, lon, lat)
            r, c = rasterio.transform.rowcol(ds.transform, x, y)
        assert list(r) == list(rows["detect_scene_row"])
        assert list(c) == list(rows["detect_scene_column"])


def test_list_scenes_and_read_labels(fx, tmp_path):
    assert list_scenes(fx.root) == sorted(fx.scene_ids)
    labels = read_labels(fx.labels_csv)
    assert len(labels) == len(pd.read_csv(fx.labels_csv))
    pd.read_csv(fx.labels_csv).drop(columns=["confidence"]).to_csv(tmp_path / "bad.csv")
    with pytest.raises(InputError, match="confidence"):
        read_labels(tmp_path / "bad.csv")


@pytest.mark.parametrize(
    "window",
    [
        Window(0, 0, HEIGHT, WIDTH),
        Window(0, 0, 1, 1),
        Window(HEIGHT - 1, WIDTH - 1, 1, 1),
        Window(17, 33, 101, 257),
        Window(299, 399, 2, 2),
        Window(400, 5, 200, 795),
    ],
)
def test_raw_windows_equal_rasterio_whole_band_reads(fx, window):
    scene_id = fx.scene_ids[1]
    folder = fx.root / scene_id
    bands = ("VV_dB", "VH_dB", "bathymetry", "owiMask")
    whole = np.stack(
        [rasterio_on_sar_grid(folder / f"{b}.tif") for b in bands]
    )  # (4, H, W), ancillary resampled by GDAL
    with XView3Scene(folder, bands=bands, scale=False) as scene:
        got = scene.read_region(window)
    rows, cols = window.slices()
    np.testing.assert_array_equal(got, whole[:, rows, cols])
    np.testing.assert_array_equal(got[:2], fx.sar[scene_id][:, rows, cols])


def test_scene_geometry_and_scaled_reads(fx):
    folder = fx.root / fx.scene_ids[0]
    bands = ("VH_dB", "bathymetry")
    with (
        XView3Scene(folder, bands=bands) as scene,
        XView3Scene(folder, bands=bands, scale=False) as raw,
    ):
        assert (scene.height, scene.width, scene.channels) == (HEIGHT, WIDTH, 2)
        assert scene.pixel_size.x == scene.pixel_size.y == 10.0
        assert scene.crs == "EPSG:32631"
        window = Window(0, 0, 64, 64)
        scaled = scene.read_region(window)
        np.testing.assert_array_equal(scaled, scale_bands(raw.read_region(window), bands))
        assert scaled.dtype == np.float32 and scaled.min() >= 0 and scaled.max() <= 1
        assert (scaled[0, :, :12] == 0).all()  # the nodata strip
        # Past the border read_padded fills zeros, inside it equals a plain read.
        padded = read_padded(scene, Window(HEIGHT - 10, WIDTH - 10, 32, 32))
        assert (padded[:, 10:, :] == 0).all() and (padded[:, :, 10:] == 0).all()
        np.testing.assert_array_equal(
            padded[:, :10, :10], scene.read_region(Window(HEIGHT - 10, WIDTH - 10, 10, 10))
        )


def test_scale_bands_hand_values():
    raw = np.array(
        [
            [[-60.0, -50.0, -10.0, 30.0, 45.0, NODATA, np.nan]],  # VV: clipped to [-50, 30]
            [[-6000.0, -2000.0, 2000.0, 5000.0, -9000.0, NODATA, 0.0]],  # bathymetry
        ]
    )  # (2, 1, 7)
    out = scale_bands(raw, ("VV_dB", "bathymetry"))
    np.testing.assert_allclose(out[0, 0], [0, 0, 0.5, 1, 1, 0, 0])
    np.testing.assert_allclose(out[1, 0], [0, 0.5, 1, 1, 0, 0, 0.75])
    assert set(BAND_RANGES) >= {"VV_dB", "VH_dB", "bathymetry", "owiMask"}


def test_scene_errors(fx, tmp_path):
    with pytest.raises(InputError, match="owiWindSpeed.tif"):
        XView3Scene(fx.root / fx.scene_ids[0], bands=("VV_dB", "owiWindSpeed"))
    with pytest.raises(ConfigError, match="HH_dB"):
        XView3Scene(fx.root / fx.scene_ids[0], bands=("HH_dB",))
    with pytest.raises(InputError, match="VV_dB.tif"):
        XView3Scene(tmp_path)
    with XView3Scene(fx.root / fx.scene_ids[0]) as scene, pytest.raises(InputError):
        scene.read_region(Window(HEIGHT - 5, 0, 10, 10))


def test_load_shoreline_official_object_arrays_and_errors(fx, tmp_path):
    scene_id = fx.scene_ids[0]
    points = load_shoreline(fx.shoreline_root, scene_id)
    np.testing.assert_array_equal(points, np.concatenate(fx.shorelines[scene_id]))
    assert points.shape == (90, 2)
    np.save(tmp_path / "a_shoreline.npy", np.empty(0, dtype=object), allow_pickle=True)
    assert load_shoreline(tmp_path, "a").shape == (0, 2)
    np.save(tmp_path / "b_shoreline.npy", np.ones((4, 2)))  # a plain array also works
    np.testing.assert_array_equal(load_shoreline(tmp_path, "b"), np.ones((4, 2)))
    np.save(tmp_path / "c_shoreline.npy", np.ones((4, 3)))
    with pytest.raises(InputError, match="row/column"):
        load_shoreline(tmp_path, "c")
    with pytest.raises(InputError, match="nope_shoreline.npy"):
        load_shoreline(tmp_path, "nope")


@given(
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    size=st.integers(8, 200),
    seed=st.integers(0, 2**16),
)
def test_positive_crops_hold_their_detection(height, width, size, seed):
    rng = np.random.default_rng(seed)
    detection = np.array([[rng.integers(height), rng.integers(width)]])
    crops = plan_crops(
        height,
        width,
        detection,
        size=size,
        count=5,
        positive_fraction=1.0,
        margin=size // 8,
        rng=rng,
    )
    for w in crops:
        assert (w.height, w.width) == (size, size)
        assert w.top <= detection[0, 0] < w.bottom and w.left <= detection[0, 1] < w.right
        # Inside the scene where it fits; else starting at 0.
        assert w.top == 0 if height <= size else 0 <= w.top <= height - size
        assert w.left == 0 if width <= size else 0 <= w.left <= width - size


def test_crop_sampler_is_positive_biased_and_seeded():
    detections = np.array([[50, 50], [60, 900]])
    plan = dict(size=100, count=400, margin=10)
    positive = plan_crops(
        1000, 1000, detections, positive_fraction=0.75, **plan, rng=np.random.default_rng(0)
    )
    uniform = plan_crops(
        1000, 1000, detections, positive_fraction=0.0, **plan, rng=np.random.default_rng(0)
    )

    def hits(crops):
        return np.mean(
            [
                any(w.top <= r < w.bottom and w.left <= c < w.right for r, c in detections)
                for w in crops
            ]
        )

    # A uniform crop (top and left uniform in [0, 900]) holds a detection with probability
    # (51 * 51 + 61 * 100) / 901^2 = 0.011; a positive crop always does: 0.75 + 0.25 * 0.011.
    assert hits(uniform) < 0.06
    assert 0.68 < hits(positive) < 0.82
    again = plan_crops(
        1000, 1000, detections, positive_fraction=0.75, **plan, rng=np.random.default_rng(0)
    )
    assert again == positive
    with pytest.raises(ConfigError, match="margin"):
        plan_crops(10, 10, detections, size=8, count=1, margin=4, rng=np.random.default_rng())


def test_crops_dataset_items_match_scene_and_labels(fx):
    data = XView3Crops(
        fx.root, fx.labels_csv, crop_size=256, crops_per_scene=3, positive_fraction=1.0, seed=3
    )
    assert len(data) == 6 and data.scene_ids == sorted(fx.scene_ids)
    labels = pd.read_csv(fx.labels_csv)
    for i in range(len(data)):
        item = data[i]
        w, scene_id = item["window"], item["scene_id"]
        assert scene_id == data.scene_ids[i // 3]
        with XView3Scene(fx.root / scene_id) as scene:
            np.testing.assert_array_equal(item["image"], scene.read_region(w))
        rows = labels[labels["scene_id"] == scene_id]
        r, c = rows["detect_scene_row"].to_numpy(), rows["detect_scene_column"].to_numpy()
        inside = (r >= w.top) & (r < w.bottom) & (c >= w.left) & (c < w.right)
        assert inside.sum() >= 1  # positive_fraction=1: aimed at a detection
        np.testing.assert_array_equal(item["rows"], r[inside] - w.top)
        np.testing.assert_array_equal(item["cols"], c[inside] - w.left)
        vessel = rows["is_vessel"][inside].map({True: 1.0, False: 0.0}).to_numpy(np.float64)
        np.testing.assert_array_equal(item["is_vessel"], vessel)
        np.testing.assert_array_equal(item["length_m"], rows["vessel_length_m"][inside])
        # The vessels are bright in VV: every detection's pixel is above the sea clutter.
        vv = item["image"][0, item["rows"].astype(int), item["cols"].astype(int)]
        assert (vv > scale_bands(np.full((1, 1, 1), -12.0), ("VV_dB",))[0, 0, 0]).all()
    first = [data[i]["window"] for i in range(len(data))]
    assert first == [data[i]["window"] for i in range(len(data))]  # seeded by (seed, epoch, i)
    data.set_epoch(1)
    assert first != [data[i]["window"] for i in range(len(data))]
    batch = collate_crops([data[0], data[1]])
    assert tuple(batch["image"].shape) == (2, 2, 256, 256)
    assert len(batch["rows"]) == 2


def test_crops_larger_than_the_scene_are_padded(fx):
    data = XView3Crops(
        fx.root, fx.labels_csv, scene_ids=[fx.scene_ids[0]], crop_size=1024, crops_per_scene=1
    )
    item = data[0]
    assert item["window"] == Window(0, 0, 1024, 1024)
    assert item["image"].shape == (2, 1024, 1024)
    assert (item["image"][:, HEIGHT:, :] == 0).all() and (item["image"][:, :, WIDTH:] == 0).all()
    assert len(item["rows"]) == len(
        pd.read_csv(fx.labels_csv).query("scene_id == @fx.scene_ids[0]")
    )


def test_scene_bands_follow_the_data_order():
    assert scene_bands(2) == ("VV_dB", "VH_dB")
    assert scene_bands(3)[-1] == "bathymetry"
    with pytest.raises(ConfigError):
        scene_bands(9)
