"""Box detection counts: greedy matching of predicted to true boxes.

Predictions are taken best score first; each takes the unmatched true box of its class
with the highest IoU, if that IoU is at least ``iou`` (the rule of PASCAL VOC and of
COCO at one threshold). Precision, recall and F1 follow from the three counts; COCO's
AP over thresholds is `xtimage.metrics.coco`.
"""

from __future__ import annotations

import torch


def match_boxes(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    true_boxes: torch.Tensor,
    true_labels: torch.Tensor,
    iou: float = 0.5,
) -> tuple[int, int, int]:
    """(matched, predicted, true) for one image.

    Args:
        boxes: (P, 4) predicted ``(x1, y1, x2, y2)``.
        scores: (P,) their scores.
        labels: (P,) their class indices.
        true_boxes: (T, 4) true ``(x1, y1, x2, y2)``.
        true_labels: (T,) their class indices.
        iou: least IoU of a match.
    """
    from torchvision.ops import box_iou

    if not len(boxes) or not len(true_boxes):
        return 0, len(boxes), len(true_boxes)
    overlap = box_iou(boxes.float(), true_boxes.float())  # (P, T)
    taken = torch.zeros(len(true_boxes), dtype=torch.bool)
    matched = 0
    for p in scores.argsort(descending=True, stable=True).tolist():
        same = true_labels == labels[p]
        candidates = torch.where(~taken & same & (overlap[p] >= iou), overlap[p], -1.0)
        if candidates.max() >= 0:
            taken[candidates.argmax()] = True
            matched += 1
    return matched, len(boxes), len(true_boxes)
