"""Classification metrics: top-k accuracy and macro precision, recall and F1.

Scores of the kind reported for xT on iNaturalist (Gupta et al., "xT: Nested
Tokenization for Larger Context in Large Images", ICML 2024): top-1 and top-5 accuracy,
plus macro-averaged precision, recall and F1 from a confusion matrix, accumulated batch
by batch so that a whole data set never has to be held in memory.
"""

from __future__ import annotations

import torch

from xtimage.errors import InputError


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts of (target, prediction) pairs: rows are targets, columns predictions.

    Args:
        preds: (N,) predicted class indices.
        targets: (N,) true class indices.
        num_classes: number of classes C.

    Returns:
        (C, C) int64.
    """
    preds, targets = preds.reshape(-1).long(), targets.reshape(-1).long()
    for name, values in (("prediction", preds), ("target", targets)):
        bad = (values < 0) | (values >= num_classes)
        if bad.any():
            raise InputError(
                f"{name} class {int(values[bad][0])} is outside 0..{num_classes - 1}; "
                "check num_classes and the labels"
            )
    flat = torch.bincount(targets * num_classes + preds, minlength=num_classes**2)
    return flat.reshape(num_classes, num_classes)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> int:
    """How many targets are among the ``k`` highest scores of their row.

    ``k`` larger than the number of classes counts every row as correct.
    """
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices  # (N, k)
    return int((top == targets.reshape(-1, 1)).any(dim=-1).sum())


def macro_scores(confusion: torch.Tensor) -> dict[str, float]:
    """Macro precision, recall and F1 of a confusion matrix.

    Per class: precision = TP / predicted, recall = TP / true, F1 = their harmonic mean,
    each 0 where its denominator is 0. The macro average runs over the classes that occur
    as a target or a prediction (as scikit-learn does without ``labels``), so classes
    absent from a small evaluation set do not drag the mean to 0.
    """
    confusion = confusion.double()
    tp = confusion.diagonal()
    predicted, true = confusion.sum(0), confusion.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
    recall = torch.where(true > 0, tp / true.clamp(min=1), 0.0)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), 0.0)
    seen = (predicted > 0) | (true > 0)
    if not seen.any():
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    return {
        "precision": float(precision[seen].mean()),
        "recall": float(recall[seen].mean()),
        "f1": float(f1[seen].mean()),
    }


class ClassificationMeter:
    """Accumulates top-k hits and a confusion matrix over batches.

    Args:
        num_classes: number of classes.
        topk: the k of each top-k accuracy reported.
    """

    def __init__(self, num_classes: int, *, topk: tuple[int, ...] = (1, 5)) -> None:
        self.num_classes = num_classes
        self.topk = topk
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        self.hits = dict.fromkeys(self.topk, 0)
        self.count = 0

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``logits`` (N, C) scores, ``targets`` (N,) class indices."""
        logits, targets = logits.detach().cpu(), targets.detach().cpu().reshape(-1)
        if logits.ndim != 2 or logits.shape != (targets.numel(), self.num_classes):
            raise InputError(
                f"expected logits of shape ({targets.numel()}, {self.num_classes}) for "
                f"{targets.numel()} targets, got {tuple(logits.shape)}"
            )
        self.confusion += confusion_matrix(logits.argmax(-1), targets, self.num_classes)
        for k in self.topk:
            self.hits[k] += topk_correct(logits, targets, k)
        self.count += targets.numel()

    def compute(self) -> dict[str, float]:
        """``top{k}`` accuracies and macro ``precision``, ``recall``, ``f1``."""
        out = {f"top{k}": self.hits[k] / max(self.count, 1) for k in self.topk}
        return out | macro_scores(self.confusion)
