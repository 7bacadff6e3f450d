"""Task heads over contextualised tokens: classification and dense prediction."""

from xtimage.heads.base import Head
from xtimage.heads.classification import ClassificationHead, PoolState
from xtimage.heads.segmentation import DenseHead, DenseOutput

__all__ = ["ClassificationHead", "DenseHead", "DenseOutput", "Head", "PoolState"]
