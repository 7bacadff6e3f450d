"""COCO box mAP through pycocotools, the detection community's reference scorer.

Detection on large scenes is scored as COCO scores it (Lin et al., "Microsoft COCO:
Common Objects in Context", ECCV 2014), by pycocotools' own `COCOeval` so that numbers
compare with published ones: AP averaged over IoU thresholds 0.50:0.05:0.95 with
101-point interpolated precision, AP50, AP75, AP and AR by object area (small < 32^2 <
medium < 96^2 < large, by the ground truth's ``area`` field), AR at 1, 10 and 100
detections per image. A value of -1 means pycocotools found no ground truth to score
(e.g. no small objects), as in its printed summary. Crowd ground truth (``iscrowd``
1) is neither a miss nor, when matched, a false positive.

Detections leave the model as contiguous class indices and pixel boxes ``(x1, y1, x2,
y2)``; `coco_results` turns them into COCO results rows (``bbox`` ``[x, y, w, h]``,
``category_id`` the data set's id). `CocoEvaluator` gathers images, ground truth and
detections in memory (synthetic or user data without a COCO file).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xtimage.errors import InputError, require

STATS = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


def _pycocotools():
    require("pycocotools", "coco", "COCO mAP")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def coco_results(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    image_id: int,
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """COCO results rows of one image's detections.

    Args:
        boxes: (n, 4) ``(x1, y1, x2, y2)`` in pixels.
        scores: (n,).
        labels: (n,) contiguous class indices.
        image_id: the COCO image id.
        category_ids: COCO category id of each class index.
    """
    rows = []
    for (x1, y1, x2, y2), score, label in zip(
        boxes.tolist(), scores.tolist(), labels.tolist(), strict=True
    ):
        if not 0 <= label < len(category_ids):
            raise InputError(f"class index {label} has no COCO category id in {category_ids}")
        rows.append(
            {
                "image_id": int(image_id),
                "category_id": int(category_ids[label]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(score),
            }
        )
    return rows


def _load_json(source: str | Path | dict | list, what: str) -> Any:
    if isinstance(source, dict | list):
        return copy.deepcopy(source)  # pycocotools writes into what it is given
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path}: no such {what} file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc


def coco_map(
    ground_truth: str | Path | dict[str, Any],
    results: str | Path | list[dict[str, Any]],
    image_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """COCO box AP and AR of ``results`` against ``ground_truth``.

    Args:
        ground_truth: a COCO detection JSON file or its parsed dict.
        results: a COCO results JSON file or its rows.
        image_ids: score only these images (default: every image of the ground truth).

    Returns:
        The twelve `STATS` of pycocotools' summary, by name.
    """
    COCO, COCOeval = _pycocotools()
    gt_data = _load_json(ground_truth, "ground truth")
    rows = _load_json(results, "results")
    if not isinstance(rows, list):
        raise InputError(f"COCO results must be a list of rows, got {type(rows).__name__}")
    images = {img["id"] for img in gt_data.get("images", [])}
    categories = {cat["id"] for cat in gt_data.get("categories", [])}
    for i, row in enumerate(rows):
        if row.get("image_id") not in images:
            raise InputError(
                f"results row {i}: image_id {row.get('image_id')} is not in the ground truth"
            )
        if row.get("category_id") not in categories:
            raise InputError(
                f"results row {i}: category_id {row.get('category_id')} is not among the "
                f"ground truth's categories {sorted(categories)}"
            )
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
        if rows:
            dt = gt.loadRes(rows)
        else:  # loadRes cannot take an empty list
            dt = COCO()
            dt.dataset = {"images": gt_data["images"], "categories": gt_data["categories"]}
            dt.dataset["annotations"] = []
            dt.createIndex()
        evaluator = COCOeval(gt, dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(STATS, evaluator.stats, strict=True)}


class CocoEvaluator:
    """Gathers ground truth and detections image by image, then scores them with `coco_map`.

    Args:
        classes: class names by contiguous index; their COCO ids are ``1..K``.
    """

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        self.category_ids = list(range(1, len(self.classes) + 1))
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []

    def add(
        self,
        height: int,
        width: int,
        gt_boxes: torch.Tensor,
        gt_labels: torch.Tensor,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        labels: torch.Tensor,
    ) -> int:
        """Add one image: its ground truth and detections, boxes ``(x1, y1, x2, y2)``.

        Returns:
            The image's id (1, 2, ...).
        """
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "height": int(height), "width": int(width)})
        gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        for (x1, y1, x2, y2), label in zip(
            gt.tolist(), np.asarray(gt_labels).tolist(), strict=True
        ):
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": self.category_ids[int(label)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
        self.results += coco_results(boxes, scores, labels, image_id, self.category_ids)
        return image_id

    def ground_truth(self) -> dict[str, Any]:
        """The gathered ground truth as a COCO detection dict."""
        categories = [
            {"id": i, "name": name} for i, name in zip(self.category_ids, self.classes, strict=True)
        ]
        return {"images": self.images, "annotations": self.annotations, "categories": categories}

    def compute(self) -> dict[str, float]:
        """`coco_map` over every image added."""
        return coco_map(self.ground_truth(), self.results)
