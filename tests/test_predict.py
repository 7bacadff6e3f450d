"""The Predictor: streamed answers equal the model's all-at-once outputs; files written
through the writers (tiled TIFF, GeoTIFF with the input's georeference, JSON, CSV,
GeoJSON), skipped when done, never half-written; scoring against a plain reference."""

import json

import numpy as np
import pytest
import tifffile
import torch

from tiny import TINY_MODEL
from xtimage.build import build_model
from xtimage.config import load_config
from xtimage.data.registry import build_datasets
from xtimage.errors import ConfigError, InputError
from xtimage.predict import Predictor

TINY = [
    *TINY_MODEL,
    "data.size=128",
]


def predictor(*overrides, region_batch=2):
    config = load_config(None, [*TINY, *overrides])
    model = build_model(config.model).eval()
    return Predictor(model, config.model, region_batch=region_batch), config


@pytest.fixture
def image():
    """A uint8 RGB image of 100 x 150 px: 2 x 3 regions of 64, partial at the border."""
    return np.random.default_rng(0).integers(0, 256, (3, 100, 150), dtype=np.uint8)


def test_segmentation_equals_the_model_on_the_whole_image(image):
    pred, _ = predictor()
    out = pred.predict(image)  # streamed, two regions at a time
    with torch.no_grad():
        logits = pred.model(torch.from_numpy(image / 255).float()[None])[0]  # (2, H, W)
    heat = 1 - logits.softmax(0)[0]
    torch.testing.assert_close(torch.from_numpy(out.heatmap), heat, rtol=1e-4, atol=1e-5)
    margin = (logits[1] - logits[0]).abs() > 1e-4  # argmax is decided there
    assert out.mask.dtype == np.uint8 and out.mask.shape == (100, 150)
    assert np.array_equal(out.mask[margin.numpy()], logits.argmax(0)[margin].numpy())
    assert 0 < out.mask.mean() < 1  # both classes occur: the comparison means something


def test_classification_scores_equal_the_model(image):
    pred, _ = predictor("model.head=classification", "model.num_classes=3")
    out = pred.predict(torch.from_numpy(image / 255).float())  # tensors are used as given
    with torch.no_grad():
        probs = pred.model(torch.from_numpy(image / 255).float()[None]).softmax(-1)[0]
    np.testing.assert_allclose(out.scores, probs.numpy(), rtol=1e-5, atol=1e-6)
    assert out.label == int(probs.argmax())


def test_tiled_tiff_in_tiled_tiff_out_skip_and_overwrite(tmp_path, image):
    pred, _ = predictor()
    src = tmp_path / "scene.tif"
    tifffile.imwrite(src, image.transpose(1, 2, 0), tile=(32, 32), photometric="rgb")
    out = pred.predict_file(src, tmp_path / "out", heatmap=True)
    mask_path, heat_path = tmp_path / "out/scene.mask.tif", tmp_path / "out/scene.heatmap.tif"
    assert out.files == [mask_path, heat_path]
    reference = pred.predict(image)
    with tifffile.TiffFile(mask_path) as tif:
        assert tif.pages[0].is_tiled and tif.pages[0].dtype == np.uint8
        assert np.array_equal(tif.asarray(), reference.mask)
    np.testing.assert_allclose(tifffile.imread(heat_path), reference.heatmap, atol=1e-6)
    stamp = mask_path.stat().st_mtime_ns
    assert pred.predict_file(src, tmp_path / "out", heatmap=True) is None  # done: skipped
    assert mask_path.stat().st_mtime_ns == stamp
    assert pred.predict_file(src, tmp_path / "out", heatmap=True, overwrite=True) is not None
    assert mask_path.stat().st_mtime_ns != stamp
    for damage in (b"garbage", mask_path.read_bytes()[:-100]):  # not trusted as done: redone
        mask_path.write_bytes(damage)
        assert pred.predict_file(src, tmp_path / "out", heatmap=True) is not None
        assert np.array_equal(tifffile.imread(mask_path), reference.mask)


def test_geotiff_output_keeps_the_inputs_georeference(tmp_path, image):
    rasterio = pytest.importorskip("rasterio")

    src = tmp_path / "scene.tif"
    transform = rasterio.Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4100000.0)  # UTM 33N, 10 m
    profile = dict(driver="GTiff", height=100, width=150, count=3, dtype="uint8",
                   crs="EPSG:32633", transform=transform, tiled=True, blockxsize=32,
                   blockysize=32)  # fmt: skip
    with rasterio.open(src, "w", **profile) as ds:
        ds.write(image)
    pred, _ = predictor()
    pred.predict_file(src, tmp_path / "out")
    with rasterio.open(tmp_path / "out/scene.mask.tif") as ds:
        assert ds.crs == rasterio.crs.CRS.from_epsg(32633)
        assert ds.transform == transform and (ds.height, ds.width) == (100, 150)
        assert np.array_equal(ds.read(1), pred.predict(image).mask)


def test_an_interrupted_prediction_leaves_no_file(tmp_path, image, monkeypatch):
    pred, _ = predictor()
    np.save(tmp_path / "a.npy", image)
    calls = {"n": 0}
    decode = pred.model.decode

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return decode(*args, **kwargs)

    monkeypatch.setattr(pred.model, "decode", failing)
    with pytest.raises(RuntimeError, match="killed"):
        pred.predict_file(tmp_path / "a.npy", tmp_path / "out", heatmap=True)
    assert list((tmp_path / "out").iterdir()) == []


def test_classification_json_and_detection_csv_geojson(tmp_path, image):
    np.save(tmp_path / "a.npy", image)
    pred, _ = predictor("model.head=classification", "model.num_classes=3",
                        "model.classes=[x, y, z]")  # fmt: skip
    out = pred.predict_file(tmp_path / "a.npy", tmp_path)
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["label"] == out.label and record["class"] == "xyz"[out.label]
    assert sum(record["scores"]) == pytest.approx(1, abs=1e-5)

    pred, _ = predictor("model.head=detection", "model.num_classes=1")
    pred.task.threshold = 0.0  # an untrained head: keep every peak so that there is something
    out = pred.predict_file(tmp_path / "a.npy", tmp_path)
    assert out.detections and [p.name for p in out.files] == ["a.boxes.csv", "a.boxes.geojson"]
    rows = (tmp_path / "a.boxes.csv").read_text().splitlines()
    features = json.loads((tmp_path / "a.boxes.geojson").read_text())["features"]
    assert len(rows) - 1 == len(features) == len(out.detections)
    first = out.detections[0]
    assert features[0]["geometry"]["type"] == "Polygon"  # pixel flavour: no georeference
    assert features[0]["geometry"]["coordinates"][0][0] == [first.box[1], first.box[0]]


def test_wrong_channel_count_is_a_clear_error(image):
    pred, _ = predictor()
    with pytest.raises(InputError, match="has 2 channel.*model expects 3"):
        pred.predict(image[:2])  # one channel is read as grey (tests/data/test_preprocess.py)


def test_evaluation_equals_a_plain_pooled_iou():
    pred, config = predictor("data.val_samples=3")
    val = build_datasets(config).val
    metrics = pred.evaluate(val)
    inter, union = np.zeros(2), np.zeros(2)
    for i in range(len(val)):
        sample = val[i]
        with torch.no_grad():
            mask = pred.model(sample["image"][None])[0].argmax(0).numpy()
        truth = sample["mask"].numpy()
        for c in range(2):
            inter[c] += ((mask == c) & (truth == c)).sum()
            union[c] += ((mask == c) | (truth == c)).sum()
    np.testing.assert_allclose(metrics["iou"], inter / union, atol=1e-4)
    assert metrics["thresholds"]["rule"].startswith("argmax")


def test_detection_scores_against_hand_counted_matches(monkeypatch):
    from xtimage.io.vector import Detection
    from xtimage.tasks import Prediction

    pred, _ = predictor("model.head=detection", "model.num_classes=2")
    image = torch.zeros(3, 100, 100)
    samples = [
        {"image": image, "boxes": torch.tensor([[10.0, 10, 30, 30], [50, 50, 90, 90]]),
         "labels": torch.tensor([0, 1])},
        {"image": image, "boxes": torch.tensor([[0.0, 0, 20, 20]]), "labels": torch.tensor([1])},
    ]  # fmt: skip
    box = Detection.from_box  # (top, left, bottom, right)
    answers = iter(
        [
            [
                box(10, 10, 30, 30, score=0.9, label=0),  # exact: a match
                box(50, 52, 90, 92, score=0.8, label=1),  # 2 px off, IoU 0.905: a match
                box(50, 50, 90, 90, score=0.7, label=0),  # right place, wrong class
            ],
            [box(0, 0, 20, 20, score=0.6, label=0)],  # wrong class; the truth is missed
        ]
    )
    monkeypatch.setattr(
        pred, "predict", lambda image: Prediction("detection", detections=next(answers))
    )
    m = pred.evaluate(samples)
    assert (m["precision"], m["recall"]) == (0.5, pytest.approx(2 / 3))
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # COCO AP50: class 0 finds its only box first (AP 1); class 1 finds 1 of 2 at the top
    # of its list: precision 1 up to recall 0.5 on 101 recall points, 51 / 101
    assert m["AP50"] == pytest.approx((1 + 51 / 101) / 2, abs=1e-4)


def _view_average(model, x, head):
    """The plain reference of test-time views: the model on each whole turned image."""
    total = 0
    with torch.no_grad():
        for turns in range(4):
            for flip in (False, True):
                v = torch.rot90(x, turns, (-2, -1))
                v = v.flip(-1) if flip else v
                probs = model(v[None])[0].softmax(0)
                if head == "segmentation":
                    probs = torch.rot90(probs.flip(-1) if flip else probs, -turns, (-2, -1))
                total = total + probs
    return total / 8


def test_d4_views_average_the_model_on_each_turned_image(image):
    pred, _ = predictor("model.tta=d4")  # a 100 x 150 image: quarter turns swap its sides
    x = torch.from_numpy(image / 255).float()
    out = pred.predict(image)
    probs = _view_average(pred.model, x, "segmentation")  # (2, H, W)
    torch.testing.assert_close(torch.from_numpy(out.heatmap), 1 - probs[0], rtol=1e-4, atol=1e-5)
    margin = (probs[1] - probs[0]).abs() > 1e-4
    assert np.array_equal(out.mask[margin.numpy()], probs.argmax(0)[margin].numpy())
    single = Predictor(pred.model, pred.config, region_batch=2, tta="none").predict(image)
    assert not np.allclose(single.heatmap, out.heatmap, atol=1e-3)  # the views changed it


def test_d4_views_average_class_probabilities(image):
    pred, _ = predictor("model.head=classification", "model.num_classes=3")
    x = torch.from_numpy(image / 255).float()
    out = Predictor(pred.model, pred.config, region_batch=2, tta="d4").predict(x)
    expected = _view_average(pred.model, x, "cls")
    np.testing.assert_allclose(out.scores, expected, rtol=1e-5, atol=1e-6)


def test_views_in_files_equal_views_in_memory_and_count_their_progress(tmp_path, image):
    pred, _ = predictor("model.tta=flips")
    tifffile.imwrite(tmp_path / "scene.tif", image.transpose(1, 2, 0), tile=(64, 64))
    pred.predict_file(tmp_path / "scene.tif", tmp_path / "out", heatmap=True)
    in_memory = pred.predict(image)
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "scene.mask.tif"), in_memory.mask)
    heat = tifffile.imread(tmp_path / "out" / "scene.heatmap.tif")
    np.testing.assert_allclose(heat, in_memory.heatmap, rtol=1e-6, atol=1e-6)

    class Counting:
        windows = ticks = 0

        def write(self, window, data):
            self.windows += 1

        def tick(self):
            self.ticks += 1

    sink = Counting()
    pred.dense(pred.source(image), sink)
    assert sink.ticks + sink.windows == pred.num_regions(100, 150) == 4 * 6 + 1


def test_views_refused_for_detection():
    with pytest.raises(ConfigError, match="model.tta=d4"):
        load_config(None, [*TINY, "model.head=detection", "model.tta=d4"]).model.check()
    pred, _ = predictor("model.head=detection", "model.num_classes=1")
    with pytest.raises(ConfigError, match="model.tta=flips"):
        Predictor(pred.model, pred.config, tta="flips")
