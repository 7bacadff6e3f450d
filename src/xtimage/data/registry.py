"""Data sets by name: ``data.kind`` -> a builder of the training and validation sets.

Each data module registers its builder in `DATASETS` (synthetic, folder, xView3, COCO,
iNaturalist); `build_datasets` imports the module of the kind asked for, so a run pays
only for the loader it uses. A builder returns `Datasets`; each sample is a dict with
``image`` (C, H, W) float and the task's target (``label``, ``mask``, ``boxes`` with
``labels``, or ``points``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from xtimage.errors import ConfigError
from xtimage.registry import Registry

if TYPE_CHECKING:
    from xtimage.config import RunConfig


@dataclass
class Datasets:
    """A run's samples: ``train`` (map-style, optionally with ``plan(epoch)`` giving the
    keys of an epoch in order), ``val`` (map-style, whole images), and class names.

    ``turns_keep_labels`` is False where a flip or a 90-degree turn can change an answer
    (a label that names a stripe's direction): training then augments by jitter alone.
    """

    train: Any
    val: Any
    classes: list[str] | None = None
    turns_keep_labels: bool = True


DATASETS: Registry[Datasets] = Registry("data set kind (data.kind)")

# Where each kind's builder lives; imported when the kind is asked for.
DATA_MODULES = {
    "synthetic": "xtimage.data.synthetic",
    "folder": "xtimage.data.folder",
    "xview3": "xtimage.data.xview3",
    "inaturalist": "xtimage.data.inaturalist",
    "coco": "xtimage.data.coco",
}


def build_datasets(config: RunConfig) -> Datasets:
    """The training and validation sets of ``config.data`` (builder by ``data.kind``)."""
    kind = config.data.kind
    if kind not in DATASETS and kind in DATA_MODULES:
        importlib.import_module(DATA_MODULES[kind])
    if kind not in DATASETS:
        raise ConfigError(f"unknown data.kind '{kind}'; known: {', '.join(sorted(DATA_MODULES))}")
    return DATASETS.get(kind)(config.model, config.data)


def holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices ``0..n-1`` split into (train, validation): ``fraction`` of them, drawn by
    ``seed``, held out (none of a single item); both sorted."""
    order = np.random.default_rng([seed, 7]).permutation(n)
    n_val = round(n * fraction) if n > 1 else 0
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())
