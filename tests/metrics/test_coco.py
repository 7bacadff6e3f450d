"""COCO mAP: hand-checked cases, a plain AP50 reference, files written by our writers."""

import json

import numpy as np
import pytest
import torch

from xtimage.errors import InputError
from xtimage.heads.detection import Boxes
from xtimage.io.vector import write_coco_results
from xtimage.metrics.coco import CocoEvaluator, coco_map, coco_results


def t(rows):
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)


def score_one(gt, dets, scores, gt_labels=None, labels=None, size=(100, 100)):
    ev = CocoEvaluator(["a", "b"])
    n, m = len(gt), len(dets)
    ev.add(
        *size,
        t(gt),
        torch.tensor(gt_labels or [0] * n),
        t(dets),
        torch.tensor(scores, dtype=torch.float64),
        torch.tensor(labels or [0] * m),
    )
    return ev.compute()


def test_perfect_detections_score_one():
    ev = CocoEvaluator(["a", "b"])
    gt1 = t([[0, 0, 20, 20], [30, 30, 90, 80], [5, 60, 130, 190]])  # small, medium, large
    ev.add(
        200,
        200,
        gt1,
        torch.tensor([0, 1, 0]),
        gt1,
        torch.tensor([0.9, 0.8, 0.7]),
        torch.tensor([0, 1, 0]),
    )
    gt2 = t([[10, 10, 50, 40]])
    ev.add(64, 64, gt2, torch.tensor([1]), gt2, torch.tensor([0.5]), torch.tensor([1]))
    stats = ev.compute()
    for name in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100"):
        assert stats[name] == pytest.approx(1.0), name
    assert stats["AR1"] == pytest.approx(0.75)  # image 1 has 2 objects of class a: 1 of 2


def test_false_positive_ranked_above_the_true_positive_halves_ap():
    # ranked FP then TP: precision 1/2 at recall 1; interpolated 1/2 everywhere
    stats = score_one([[10, 10, 30, 30]], [[60, 60, 80, 80], [10, 10, 30, 30]], [0.9, 0.8])
    assert stats["AP"] == pytest.approx(0.5) and stats["AP50"] == pytest.approx(0.5)
    # ranked below the TP it costs nothing: precision is 1 up to recall 1
    stats = score_one([[10, 10, 30, 30]], [[60, 60, 80, 80], [10, 10, 30, 30]], [0.7, 0.8])
    assert stats["AP"] == pytest.approx(1.0)


def test_half_recall_gives_51_of_101_recall_points():
    stats = score_one([[10, 10, 30, 30], [50, 50, 70, 70]], [[10, 10, 30, 30]], [0.9])
    assert stats["AP"] == pytest.approx(51 / 101)
    assert stats["AR100"] == pytest.approx(0.5)


def test_iou_062_counts_at_three_of_ten_thresholds():
    # IoU = (10 x 6.2) / (10 x 10) = 0.62: matched at 0.50, 0.55, 0.60 only
    stats = score_one([[0, 0, 10, 10]], [[0, 0, 10, 6.2]], [0.9])
    assert stats["AP"] == pytest.approx(0.3)
    assert stats["AP50"] == pytest.approx(1.0) and stats["AP75"] == pytest.approx(0.0)
    assert stats["AP_small"] == pytest.approx(0.3) and stats["AP_medium"] == -1


def test_wrong_class_is_a_miss_and_a_false_positive():
    stats = score_one([[0, 0, 10, 10]], [[0, 0, 10, 10]], [0.9], gt_labels=[0], labels=[1])
    assert stats["AP"] == pytest.approx(0.0)


def crowd_ground_truth(crowd):
    return {
        "images": [{"id": 7, "height": 100, "width": 100, "file_name": "x.png"}],
        "categories": [{"id": 3, "name": "car"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 3,
                "bbox": [0, 0, 20, 20],
                "area": 400,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 7,
                "category_id": 3,
                "bbox": [50, 50, 40, 40],
                "area": 1600,
                "iscrowd": int(crowd),
            },
        ],
    }


def test_detection_on_crowd_is_neither_fp_nor_tp():
    results = [
        {"image_id": 7, "category_id": 3, "bbox": [55, 55, 20, 20], "score": 0.95},  # in the crowd
        {"image_id": 7, "category_id": 3, "bbox": [0, 0, 20, 20], "score": 0.9},
    ]
    assert coco_map(crowd_ground_truth(True), results)["AP"] == pytest.approx(1.0)
    # the same region as an ordinary object: the first box is an FP (IoU 0.25), one
    # object is missed: precision 1/2 at recall 1/2
    stats = coco_map(crowd_ground_truth(False), results)
    assert stats["AP"] == pytest.approx(0.5 * 51 / 101)


def test_no_detections_score_zero():
    stats = coco_map(crowd_ground_truth(False), [])
    assert stats["AP"] == 0 and stats["AR100"] == 0


def plain_ap50(gt, dets):
    """Single-class AP at IoU 0.5: greedy matching in score order, 101-point envelope."""

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    n_gt = sum(len(g) for g in gt)
    flat = sorted(
        (
            (s, i, box)
            for i, (boxes, scores) in enumerate(dets)
            for box, s in zip(boxes, scores, strict=True)
        ),
        key=lambda x: -x[0],
    )
    used = [set() for _ in gt]
    tp = []
    for _, i, box in flat:
        best, best_iou = None, 0.5
        for j, g in enumerate(gt[i]):
            if j not in used[i] and iou(box, g) >= best_iou:
                best, best_iou = j, iou(box, g)
        if best is not None:
            used[i].add(best)
        tp.append(best is not None)
    tp = np.cumsum(tp)
    recall = tp / n_gt
    precision = tp / np.arange(1, len(tp) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    points = [
        precision[np.searchsorted(recall, r, "left")] if r <= recall[-1] else 0
        for r in np.linspace(0, 1, 101)
    ]
    return float(np.mean(points))


def test_ap50_equals_a_plain_reference_on_random_scenes():
    rng = np.random.default_rng(3)
    ev = CocoEvaluator(["object"])
    gt_all, det_all = [], []
    for _ in range(4):
        xy = rng.uniform(0, 200, (6, 2))
        gt = np.concatenate([xy, xy + rng.uniform(10, 60, (6, 2))], 1)
        noisy = gt[:5] + rng.normal(0, 4, (5, 4))  # 5 of 6 found, some badly
        fp = np.concatenate([rng.uniform(0, 200, (3, 2))] * 2, 1) + [0, 0, 15, 15]
        dets = np.concatenate([noisy, fp])
        scores = rng.uniform(0, 1, len(dets))
        ev.add(
            300,
            300,
            torch.tensor(gt),
            torch.zeros(6),
            torch.tensor(dets),
            torch.tensor(scores),
            torch.zeros(len(dets), dtype=torch.long),
        )
        gt_all.append(gt.tolist())
        det_all.append((dets.tolist(), scores.tolist()))
    expected = plain_ap50(gt_all, det_all)
    assert 0.2 < expected < 0.95  # a case that tests something
    assert ev.compute()["AP50"] == pytest.approx(expected, abs=1e-12)


def test_results_written_by_the_coco_writer_score_the_same(tmp_path):
    gt = crowd_ground_truth(False)
    boxes = Boxes(
        t([[0, 0, 20, 20], [50, 50, 90, 90]]).float(),
        torch.tensor([0.9, 0.6]),
        torch.tensor([0, 0]),
    )
    rows = coco_results(boxes.boxes, boxes.scores, boxes.labels, 7, [3])
    path = write_coco_results(
        tmp_path / "res.json", boxes.detections(), image_id=7, categories=None
    )
    on_disk = json.loads(path.read_text())
    assert [r["category_id"] for r in on_disk] == [0, 0]  # the writer keeps our indices
    for r in on_disk:
        r["category_id"] = 3
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(on_disk))
    assert coco_map(tmp_path / "gt.json", tmp_path / "res.json") == coco_map(gt, rows)
    assert coco_map(gt, rows)["AP"] == pytest.approx(1.0)


def test_results_for_unknown_images_or_categories_are_input_errors():
    gt = crowd_ground_truth(False)
    with pytest.raises(InputError, match="image_id 8"):
        coco_map(gt, [{"image_id": 8, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1}])
    with pytest.raises(InputError, match="category_id 4"):
        coco_map(gt, [{"image_id": 7, "category_id": 4, "bbox": [0, 0, 1, 1], "score": 1}])
