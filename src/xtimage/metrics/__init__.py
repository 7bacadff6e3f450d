"""Task metrics, accumulated batch by batch and pooled over a data set."""

from xtimage.metrics.classification import ClassificationMeter, confusion_matrix, macro_scores
from xtimage.metrics.segmentation import SegmentationMeter

__all__ = ["ClassificationMeter", "SegmentationMeter", "confusion_matrix", "macro_scores"]
