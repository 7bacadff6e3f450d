"""Scoring: a predictor's answers against a labelled data set, or written files against it.

Each task gives its metric accumulator (`Task.scorer`); a task that scores whole sets its
own way (xView3: thresholds chosen over every scene) overrides `Task.evaluate`. Every
process scores its share of the samples and the scorers sum over processes, so the result
is the same on any number of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from xtimage.distributed import World, current_world, shard
from xtimage.errors import ConfigError, InputError

if TYPE_CHECKING:
    from xtimage.predict import Predictor


def evaluate(
    predictor: Predictor, dataset: Any, *, world: World | None = None, progress: bool = False
) -> dict[str, Any]:
    """The task's metric over a labelled data set (each process scores its share).

    Segmentation: pooled IoU per class, mean IoU, foreground IoU (argmax of the mask
    output). Classification: top-1 (and top-5 with more than 5 classes), macro P/R/F1.
    Detection: precision, recall and F1 of boxes at score >= ``threshold``, matched
    greedily by score at IoU >= ``iou``. xView3: the challenge's scores. The thresholds
    used are in ``thresholds``.
    """
    world = world or current_world()
    task = predictor.task
    indices = shard(range(len(dataset)), world)
    show = progress and world.main
    out = task.evaluate(predictor, dataset, indices, show)
    if out is not None:
        return out
    scorer = task.scorer()
    for i in tqdm(indices, desc="eval", unit="image", disable=not show):
        sample = dataset[i]
        scorer.update(predictor.predict(sample["image"]), sample)
    return {**scorer.compute(), "thresholds": task.thresholds()}


def score_files(predictor: Predictor, dataset: Any, pred_dir: str | Path) -> dict[str, Any]:
    """Score prediction files written by `Predictor.predict_file` against a labelled set.

    Each sample's image file names its prediction (``<stem>.mask.tif``, ``.json``,
    ``.boxes.csv`` in ``pred_dir``).
    """
    task, pred_dir = predictor.task, Path(pred_dir)
    out = task.score_files(dataset, pred_dir)
    if out is not None:
        return out
    scorer = task.scorer()
    for i in range(len(dataset)):
        image = image_path(dataset, i)
        files = task.outputs(image, pred_dir)
        missing = [p for p in files if not p.exists()]
        if missing:
            raise InputError(f"{missing[0]}: no prediction for {image}; run xt predict first")
        scorer.update(task.read_prediction(files), dataset[i])
    return {**scorer.compute(), "thresholds": task.thresholds()}


def image_path(dataset: Any, index: int) -> Path:
    """The image file of a folder data set's sample (through a `Subset`)."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset, index = dataset.dataset, dataset.indices[index]
    records = getattr(dataset, "records", None)
    if records is None:
        raise ConfigError(
            "prediction files can be scored only on a folder data set (data.kind=folder), "
            "whose samples are files"
        )
    return Path(records[index].image)
