"""Segmentation metrics: IoU and Dice per class, pooled over a data set.

Pooled ("corpus-level") scores sum the intersections and unions of every image before
dividing, so a large image counts by its area and an image without a class does not
produce an undefined 0/0; this is how context-dependent segmentation is scored in the
xT paper (Gupta et al., ICML 2024) and in most large-image benchmarks.
"""

from __future__ import annotations

import torch

from xtimage.errors import InputError


class SegmentationMeter:
    """Accumulates a pixel confusion matrix over batches.

    Args:
        num_classes: number of classes; class 0 is the background for `foreground_iou`.
        ignore_index: target value whose pixels are not scored, or None.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch.

        Args:
            preds: (B, H, W) class indices, or (B, C, H, W) scores (argmax is taken).
            targets: (B, H, W) class indices, ``ignore_index`` where unscored.
        """
        preds, targets = preds.detach().cpu(), targets.detach().cpu()
        if preds.ndim == targets.ndim + 1:
            preds = preds.argmax(1)
        if preds.shape != targets.shape:
            raise InputError(
                f"prediction of shape {tuple(preds.shape)} does not match target of shape "
                f"{tuple(targets.shape)}"
            )
        preds, targets = preds.reshape(-1).long(), targets.reshape(-1).long()
        if self.ignore_index is not None:
            keep = targets != self.ignore_index
            preds, targets = preds[keep], targets[keep]
        c = self.num_classes
        for name, values in (("predicted", preds), ("target", targets)):
            bad = (values < 0) | (values >= c)
            if bad.any():
                raise InputError(
                    f"{name} class {int(values[bad][0])} is outside 0..{c - 1}; check "
                    "num_classes, ignore_index and the masks"
                )
        self.confusion += torch.bincount(targets * c + preds, minlength=c * c).reshape(c, c)

    def iou(self) -> torch.Tensor:
        """(C,) float64 intersection over union per class; NaN where a class never occurs."""
        inter, pred, true = self._counts()
        return inter / (pred + true - inter)

    def dice(self) -> torch.Tensor:
        """(C,) float64 Dice (F1) per class; NaN where a class never occurs."""
        inter, pred, true = self._counts()
        return 2 * inter / (pred + true)

    def mean_iou(self, include_background: bool = True) -> float:
        """Mean of the per-class IoUs over the classes that occur."""
        iou = self.iou() if include_background else self.iou()[1:]
        return float(iou.nanmean())

    def foreground_iou(self) -> float:
        """IoU of foreground (any class but 0) against background, pooled; 0 if none."""
        total = self.confusion.sum()
        inter = self.confusion[1:, 1:].sum()
        union = total - self.confusion[0, 0]
        return float(inter / union) if union > 0 else 0.0

    def compute(self) -> dict[str, float | list[float]]:
        """Per-class ``iou`` and ``dice`` lists, ``miou`` and ``foreground_iou``."""
        return {
            "iou": self.iou().tolist(),
            "dice": self.dice().tolist(),
            "miou": self.mean_iou(),
            "foreground_iou": self.foreground_iou(),
        }

    def _counts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        confusion = self.confusion.double()
        return confusion.diagonal(), confusion.sum(0), confusion.sum(1)
