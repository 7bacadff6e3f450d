"""COCO detection data: the fixture read by pycocotools itself and by our loader."""

import json
import logging

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from xtimage.config import load_config
from xtimage.data.coco import CocoDetection
from xtimage.data.registry import build_datasets
from xtimage.errors import ConfigError, InputError
from xtimage.metrics.coco import coco_map, coco_results
from xtimage.train import Trainer
from xtimage.window import Window

from .coco_fixture import CATEGORIES, IMAGES, write_coco_fixture


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return write_coco_fixture(tmp_path_factory.mktemp("coco"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")  # its numpy 2 shim
def test_fixture_is_read_by_pycocotools(fx, capsys):
    coco = COCO(str(fx.annotation_file))
    capsys.readouterr()
    assert sorted(coco.getImgIds()) == sorted(IMAGES)
    assert sorted(coco.getCatIds()) == [c["id"] for c in CATEGORIES]
    for image_id, (height, width, _, objects) in IMAGES.items():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert [a["bbox"] for a in anns] == [list(o[:4]) for o in objects]
        for ann, obj in zip(anns, objects, strict=True):
            mask = coco.annToMask(ann)  # polygons and RLE decode
            assert mask.shape == (height, width)
            assert abs(int(mask.sum()) - ann["area"]) <= obj[2] + obj[3] + 1
    assert coco.getAnnIds(iscrowd=True) == [
        a["id"] for a in coco.dataset["annotations"] if a["iscrowd"]
    ]


def test_loader_matches_pycocotools(fx, capsys):
    coco = COCO(str(fx.annotation_file))
    capsys.readouterr()
    data = CocoDetection(fx.annotation_file, fx.image_root)
    assert data.category_ids == [1, 3, 18] and data.classes == ["person", "car", "dog"]
    assert len(data) == len(IMAGES) and data.num_classes == 3
    for i, image_id in enumerate(IMAGES):
        sample = data[i]
        assert sample["image_id"].item() == image_id
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        expected = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        np.testing.assert_allclose(
            sample["boxes"].numpy().reshape(-1, 4), np.reshape(expected, (-1, 4))
        )
        labels = [data.category_ids[k] for k in sample["labels"].tolist()]
        assert labels == [a["category_id"] for a in anns]
        assert sample["iscrowd"].tolist() == [bool(a["iscrowd"]) for a in anns]
        image = sample["image"]
        assert image.dtype == torch.float32 and image.shape == (3, *IMAGES[image_id][:2])
        expected_pixels = fx.pixels[image_id].transpose(2, 0, 1) / 255
        np.testing.assert_allclose(image.numpy(), expected_pixels, atol=1e-6)


def test_window_keeps_objects_whose_centre_is_inside(fx):
    data = CocoDetection(fx.annotation_file, fx.image_root)
    # image 139: person centre (14, 12), car centre (43, 31.25)
    crop = data.read(0, Window(8, 30, 32, 34))
    assert crop["image"].shape == (3, 32, 34)
    assert crop["labels"].tolist() == [1]
    np.testing.assert_allclose(crop["boxes"].numpy(), [[0.5, 12.0, 25.5, 34.5]])
    past = data.read(0, Window(40, 50, 16, 16))  # past the border: zero padding
    assert past["image"][:, 8:, :].abs().sum() == 0 and len(past["boxes"]) == 0


def test_ground_truth_as_detections_scores_ap_one(fx):
    data = CocoDetection(fx.annotation_file, fx.image_root)
    rows = []
    for i in range(len(data)):
        s = data[i]
        keep = ~s["iscrowd"]
        n = int(keep.sum())
        rows += coco_results(
            s["boxes"][keep],
            torch.ones(n),
            s["labels"][keep],
            int(s["image_id"]),
            data.category_ids,
        )
    stats = coco_map(fx.annotation_file, rows)
    assert stats["AP"] == pytest.approx(1.0)
    assert coco_map(fx.annotation_file, rows[1:])["AP"] < 1.0


def edited(fx, tmp_path, edit):
    data = json.loads(fx.annotation_file.read_text())
    edit(data)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["annotations"][2].update(image_id=5),
            r"annotations\[2\] \(id 900102\): image_id 5",
        ),
        (lambda d: d["annotations"][0].update(category_id=2), "category_id 2 is not in categories"),
        (lambda d: d["annotations"][1].update(bbox=[1, 2, 3]), r"bbox \[1, 2, 3\] must be 4"),
        (lambda d: d["annotations"][1].pop("area"), r"annotations\[1\] has area=None"),
        (lambda d: d["annotations"][3].update(iscrowd=2), "iscrowd must be 0 or 1"),
        (lambda d: d["images"][1].update(id=139), r"images\[1\] repeats id 139"),
        (lambda d: d["images"][0].pop("file_name"), r"images\[0\] has file_name=None"),
        (lambda d: d.pop("categories"), "'categories' must hold a list"),
    ],
)
def test_bad_entries_name_the_file_and_the_entry(fx, tmp_path, edit, message):
    path = edited(fx, tmp_path, edit)
    with pytest.raises(InputError, match=message) as info:
        CocoDetection(path, fx.image_root)
    assert str(path) in str(info.value)


def test_image_size_that_disagrees_with_the_file_is_an_error(fx, tmp_path):
    path = edited(fx, tmp_path, lambda d: d["images"][0].update(height=50))
    data = CocoDetection(path, fx.image_root)
    with pytest.raises(InputError, match="48 x 64 px but .* says 50 x 64"):
        data[0]


def test_empty_boxes_are_dropped_with_a_warning_and_boxes_clipped(fx, tmp_path, caplog):
    def edit(d):
        d["annotations"][0]["bbox"] = [5, 5, 0, 10]  # no width
        d["annotations"][1]["bbox"] = [50, 40, 30, 30]  # past the 64 x 48 image

    with caplog.at_level(logging.WARNING):
        data = CocoDetection(edited(fx, tmp_path, edit), fx.image_root)
    assert "dropped 1 box(es)" in caplog.text and "annotations[0]" in caplog.text
    np.testing.assert_allclose(data.records[0].boxes, [[50, 40, 64, 48]])


def coco_run(fx, tmp_path, **data):
    return load_config(
        {
            "model": {
                "backbone": "convnext_atto",
                "backbone_kwargs": {"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]},
                "region": 32,
                "context": "none",
                "dim": 16,
                "head": "detection",
                "num_classes": 3,
                "decoder_channels": 8,
            },
            "data": {
                "kind": "coco",
                "root": str(fx.annotation_file),
                "params": {"image_root": str(fx.image_root)},
                "augment": False,
                **data,
            },
            "train": {
                "steps": 12,
                "batch_size": 4,
                "lr": 3e-3,
                "device": "cpu",
                "amp": "none",
                "progress": False,
                "log_every": 6,
                "out": str(tmp_path),
            },
        }
    )


def test_coco_builder_trains_the_box_head(fx, tmp_path):
    config = coco_run(
        fx,
        tmp_path,
        val_root=str(fx.annotation_file),
        params={"image_root": str(fx.image_root), "val_image_root": str(fx.image_root)},
    )
    data = build_datasets(config)
    assert data.classes == ["person", "car", "dog"]
    assert data.train[1]["iscrowd"].tolist() == [False]  # image 285: its crowd left out
    assert data.val[1]["iscrowd"].tolist() == [False, True]
    result = Trainer(config).fit()
    losses = [
        json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").open() if '"loss"' in line
    ]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert {"precision", "recall", "f1"} <= set(result["metrics"])


def test_coco_builder_windows_and_errors(fx, tmp_path):
    data = build_datasets(coco_run(fx, tmp_path, window=24, train_samples=5))
    keys = data.train.plan(0)
    assert len(keys) == 5 and data.train[keys[0]]["image"].shape == (3, 24, 24)
    config = coco_run(fx, tmp_path)
    config.model.num_classes = 4
    with pytest.raises(ConfigError, match="has 3 categories but model.num_classes=4"):
        build_datasets(config)
