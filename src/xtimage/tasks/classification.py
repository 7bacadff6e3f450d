"""Classification: one label per image from the pooled contextualised tokens.

Writes ``NAME.json`` per input (label, class name, probabilities); scores top-1 (top-5
with more than 5 classes) and macro precision, recall and F1.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xtimage.distributed import all_reduce_sum
from xtimage.tasks.base import TASKS, Job, Prediction, Runner, Task, output_stem

if TYPE_CHECKING:
    from torch import nn

    from xtimage.encoders.region import FeatureInfo


@TASKS.register("classification")
class Classification(Task):
    """Image classification (xT's iNaturalist task)."""

    name = "classification"
    best_metric = "top1"

    def build_head(self, skips: Sequence[FeatureInfo], dim: int) -> nn.Module:
        from xtimage.heads import ClassificationHead

        c = self.config
        return ClassificationHead(
            dim,
            c.num_classes,
            pool=c.class_pool,
            label_smoothing=c.label_smoothing,
            mlp_ratio=c.class_mlp_ratio,
        )

    def targets(self, sample: dict[str, Any]) -> torch.Tensor:
        """The label, an int64 scalar."""
        return torch.as_tensor(self.key(sample, "label"), dtype=torch.long)

    def collate(self, targets: list[Any]) -> torch.Tensor:
        return torch.stack(targets)  # (B,)

    def loss_weight(self, image: torch.Tensor) -> float:
        return 1.0  # the loss is a mean over images

    def predict(self, runner: Runner, source: Any, image: Any) -> Prediction:
        scores = runner.classify(source)
        return Prediction(self.name, label=int(scores.argmax()), scores=scores)

    def outputs(self, path: Path, out_dir: Path, heatmap: bool = False) -> list[Path]:
        return [out_dir / f"{output_stem(path)}.json"]

    def write(self, runner: Runner, job: Job) -> Prediction:
        from xtimage.io.atomic import atomic_path

        found = self.predict(runner, job.source, job.reader)
        names = self.config.classes
        label = int(found.label)
        record = {
            "input": str(job.path),
            "label": label,
            "class": names[label] if names else str(label),
            "scores": [round(float(s), 6) for s in found.scores],
            "classes": names or [str(i) for i in range(len(found.scores))],
        }
        with atomic_path(job.outputs[0]) as temp:
            temp.write_text(json.dumps(record, indent=1) + "\n")
        found.files = list(job.outputs)
        return found

    def read_prediction(self, files: list[Path]) -> Prediction:
        record = json.loads(files[0].read_text())
        return Prediction(self.name, label=record["label"], scores=np.asarray(record["scores"]))

    def scorer(self) -> ClassificationScorer:
        return ClassificationScorer(self.config.num_classes)


class ClassificationScorer:
    """Top-k accuracy and macro scores, summed over processes."""

    def __init__(self, num_classes: int) -> None:
        from xtimage.metrics import ClassificationMeter

        self.meter = ClassificationMeter(num_classes, topk=(1, 5) if num_classes > 5 else (1,))

    def update(self, prediction: Prediction, sample: dict[str, Any]) -> None:
        scores = torch.as_tensor(prediction.scores)[None]  # (1, K)
        self.meter.update(scores, torch.as_tensor(sample["label"]).reshape(1))

    def compute(self) -> dict[str, Any]:
        meter = self.meter
        all_reduce_sum(meter.confusion)
        hits = torch.tensor([meter.hits[k] for k in meter.topk] + [meter.count])
        all_reduce_sum(hits)
        meter.hits = dict(zip(meter.topk, hits[:-1].tolist(), strict=True))
        meter.count = int(hits[-1])
        return meter.compute()
