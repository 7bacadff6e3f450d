import csv
import json

import numpy as np
import pytest

from xtimage.errors import ConfigError
from xtimage.io import Detection, GeoInfo, open_reader, write_coco_results, write_csv, write_geojson


@pytest.fixture(scope="module")
def utm():
    """UTM 33N; easting 500000 is the central meridian, 15 E, exactly."""
    import rasterio

    return GeoInfo(
        (10.0, 0.0, 499000.0, 0.0, -10.0, 10000.0),
        rasterio.crs.CRS.from_epsg(32633).to_wkt(),
        32633,
    )


def detections():
    yield Detection(5.5, 100.0, score=0.9, label="vessel", extra={"length_m": 42.0})
    yield Detection.from_box(10, 20, 30, 60, score=0.4, label="fishing")
    yield Detection(0.0, 0.0)


def test_csv_with_map_and_lonlat_columns(tmp_path, utm):
    path = write_csv(tmp_path / "points.csv", detections(), geo=utm, extra=["length_m"])
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert len(rows) == 3
    assert rows[0]["label"] == "vessel" and float(rows[0]["length_m"]) == 42.0
    assert float(rows[0]["x"]) == 499000 + 10 * 100 and float(rows[0]["y"]) == 10000 - 10 * 5.5
    assert float(rows[0]["lon"]) == pytest.approx(15.0, abs=1e-9)  # central meridian
    assert 0 < float(rows[0]["lat"]) < 0.1
    assert (
        rows[1]["top"] == "10" and float(rows[1]["row"]) == 20.0 and float(rows[1]["col"]) == 40.0
    )
    assert rows[2]["score"] == "" and rows[2]["label"] == ""


def test_csv_without_georeference_has_pixel_columns_only(tmp_path):
    path = write_csv(tmp_path / "points.csv", detections())
    header = next(csv.reader(path.read_text().splitlines()))
    assert header == ["row", "col", "top", "left", "bottom", "right", "score", "label"]


def test_rfc7946_geojson_in_lonlat(tmp_path, utm):
    path = write_geojson(tmp_path / "d.geojson", detections(), geo=utm)
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection" and "crs" not in doc
    point, box = doc["features"][0], doc["features"][1]
    assert point["geometry"]["type"] == "Point"
    lon, lat = point["geometry"]["coordinates"]
    assert lon == pytest.approx(15.0, abs=1e-9) and 0 < lat < 0.1
    ring = np.array(box["geometry"]["coordinates"][0])
    assert ring.shape == (5, 2) and np.array_equal(ring[0], ring[-1])
    signed_area = np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
    assert signed_area > 0  # exterior rings counter-clockwise
    assert box["properties"]["label"] == "fishing" and box["properties"]["score"] == 0.4


def test_pixel_geojson_for_qupath(tmp_path):
    path = write_geojson(tmp_path / "cells.geojson", detections())
    features = json.loads(path.read_text())["features"]
    assert features[0]["geometry"]["coordinates"] == [100.0, 5.5]  # x = col, y = row
    assert features[0]["properties"]["objectType"] == "detection"
    assert features[0]["properties"]["classification"] == {"name": "vessel"}
    assert features[0]["properties"]["measurements"] == {"score": 0.9, "length_m": 42.0}
    ring = features[1]["geometry"]["coordinates"][0]
    assert ring[0] == [20, 10] and ring[2] == [60, 30]
    with pytest.raises(ConfigError, match="needs the input's georeference"):
        write_geojson(tmp_path / "x.geojson", detections(), flavour="lonlat")


def latitude_on_the_central_meridian(northing: float) -> float:
    """Latitude of a UTM northing on the central meridian: solve k0 * M(lat) = northing,
    M the WGS 84 meridian arc (series to e^6), by bisection."""
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    e2 = f * (2 - f)
    e4, e6 = e2 * e2, e2 * e2 * e2

    def arc(phi):
        return a * (
            (1 - e2 / 4 - 3 * e4 / 64 - 5 * e6 / 256) * phi
            - (3 * e2 / 8 + 3 * e4 / 32 + 45 * e6 / 1024) * np.sin(2 * phi)
            + (15 * e4 / 256 + 45 * e6 / 1024) * np.sin(4 * phi)
            - (35 * e6 / 3072) * np.sin(6 * phi)
        )

    low, high = 0.0, np.pi / 2
    for _ in range(80):
        mid = (low + high) / 2
        low, high = (mid, high) if k0 * arc(mid) < northing else (low, mid)
    return float(np.degrees(low))


def test_lonlat_of_the_geotiff_fixture_lies_where_the_scene_is(tmp_path, geotiff):
    geo = open_reader(geotiff).geo
    path = write_geojson(tmp_path / "d.geojson", [Detection(150, 100)], geo=geo)
    lon, lat = json.loads(path.read_text())["features"][0]["geometry"]["coordinates"]
    # easting 499000 + 100 * 10 = 500000: the central meridian of zone 33, 15 E
    assert lon == pytest.approx(15.0, abs=1e-9)
    assert lat == pytest.approx(latitude_on_the_central_meridian(4001000 - 150 * 10), abs=1e-7)


def test_coco_results_load_and_score_perfectly_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    boxes = [(10, 20, 50, 90), (100, 40, 160, 70), (5, 150, 45, 190)]
    truth = {
        "images": [{"id": 7, "width": 200, "height": 200}],
        "categories": [{"id": 1, "name": "ship"}, {"id": 2, "name": "tank"}],
        "annotations": [
            {"id": i + 1, "image_id": 7, "category_id": 1 + i % 2, "iscrowd": 0,
             "bbox": [left, top, right - left, bottom - top],
             "area": (right - left) * (bottom - top)}
            for i, (top, left, bottom, right) in enumerate(boxes)
        ],
    }  # fmt: skip
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    dets = [
        Detection.from_box(*box, score=0.9, label=["ship", "tank"][i % 2])
        for i, box in enumerate(boxes)
    ]
    path = write_coco_results(tmp_path / "res.json", dets, 7, {"ship": 1, "tank": 2})
    gt = COCO(str(tmp_path / "gt.json"))
    res = gt.loadRes(str(path))
    assert [a["bbox"] for a in res.dataset["annotations"]] == [
        a["bbox"] for a in truth["annotations"]
    ]
    evaluator = COCOeval(gt, res, "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="need boxes"):
        write_coco_results(tmp_path / "bad.json", [Detection(1, 2)], 7)
    assert not (tmp_path / "bad.json").exists()
