"""Detection: CenterNet-style boxes decoded window by window and merged over the image.

Writes ``NAME.boxes.csv`` and ``NAME.boxes.geojson`` per input (WGS 84 for georeferenced
inputs, pixels otherwise). Scores precision, recall and F1 of boxes at score >=
``threshold`` matched greedily at IoU >= ``iou`` (`xtimage.metrics.detection`), and COCO
AP when pycocotools is installed.

Streaming: `BoxCollector` is the writer `Engine.segment` sends each region core's
outputs to. Peaks are found window by window with a 3 x 3 max-pool, which cannot see
across a core border: an object whose peak lies on a border (or a corner) may be found
by two (or four) cores. `BoxCollector.finish` applies class-wise box NMS over the whole
image, which keeps one.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torchvision.ops import batched_nms

from xtimage.distributed import all_gather, all_reduce_sum
from xtimage.errors import ConfigError
from xtimage.heads.detection import Boxes, decode_boxes
from xtimage.metrics.detection import match_boxes
from xtimage.tasks.base import TASKS, Job, Prediction, Runner, Task, output_stem

if TYPE_CHECKING:
    from torch import nn

    from xtimage.encoders.region import FeatureInfo
    from xtimage.io.vector import Detection
    from xtimage.window import Window

log = logging.getLogger(__name__)


@TASKS.register("detection")
class BoxDetection(Task):
    """Boxes from a centre heatmap with size and offset maps (`BoxHead`)."""

    name = "detection"
    best_metric = "f1"

    def build_head(self, skips: Sequence[FeatureInfo], dim: int) -> nn.Module:
        from xtimage.heads.detection import BoxHead

        c = self.config
        return BoxHead(skips, dim, c.num_classes, channels=c.decoder_channels, norm=c.decoder_norm)

    def targets(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        """`box_targets` of the sample's ``boxes`` and ``labels`` at the image size."""
        from xtimage.heads.detection import box_targets

        _, height, width = sample["image"].shape
        boxes = self.key(sample, "boxes")
        labels = sample.get("labels", torch.zeros(len(boxes), dtype=torch.long))
        return box_targets(boxes, labels, self.config.num_classes, height, width)

    def detect(self, runner: Runner, source: Any) -> list[Detection]:
        c = self.config
        collector = BoxCollector(c.num_classes, threshold=self.threshold, iou=self.iou)
        runner.dense(source, collector)
        return collector.finish().detections(c.classes)

    def predict(self, runner: Runner, source: Any, image: Any) -> Prediction:
        return Prediction(self.name, detections=self.detect(runner, source))

    def outputs(self, path: Path, out_dir: Path, heatmap: bool = False) -> list[Path]:
        stem = output_stem(path)
        return [out_dir / f"{stem}.boxes.csv", out_dir / f"{stem}.boxes.geojson"]

    def write(self, runner: Runner, job: Job) -> Prediction:
        from xtimage.io.vector import write_csv, write_geojson

        found = self.detect(runner, job.source)
        write_csv(job.outputs[0], found, geo=job.reader.geo)
        write_geojson(job.outputs[1], found, geo=job.reader.geo)
        return Prediction(self.name, detections=found, files=list(job.outputs))

    def read_prediction(self, files: list[Path]) -> Prediction:
        from dataclasses import replace

        from xtimage.io.vector import read_csv

        names = self.config.classes
        found = []
        for d in read_csv(files[0]):
            label: Any = d.label
            if names and label in names:
                label = names.index(label)
            elif str(label).isdigit():
                label = int(label)
            found.append(replace(d, label=label))
        return Prediction(self.name, detections=found)

    def scorer(self) -> DetectionScorer:
        return DetectionScorer(self.config.num_classes, self.config.classes, self.iou)

    def thresholds(self) -> dict[str, Any]:
        return {"score": self.threshold, "nms_iou": self.iou, "match_iou": self.iou}


class DetectionScorer:
    """Matched, predicted and true box counts (summed over processes) and, with
    pycocotools, COCO AP over every process's images."""

    def __init__(self, num_classes: int, classes: list[str] | None, iou: float) -> None:
        self.num_classes, self.classes, self.iou = num_classes, classes, iou
        self.counts = torch.zeros(3, dtype=torch.float64)  # matched, predicted, true
        self.images: list[tuple] = []  # per image: truth and boxes, for COCO AP

    def update(self, prediction: Prediction, sample: dict[str, Any]) -> None:
        found = prediction.detections or []
        true = torch.as_tensor(sample.get("boxes", torch.zeros(0, 4)), dtype=torch.float32)
        true = true.reshape(-1, 4)  # (T, 4) x1 y1 x2 y2
        true_labels = torch.as_tensor(sample.get("labels", torch.zeros(len(true))))
        true_labels = true_labels.long()
        boxes = torch.tensor([[d.box[1], d.box[0], d.box[3], d.box[2]] for d in found])
        boxes = boxes.reshape(-1, 4)  # (P, 4) x1 y1 x2 y2
        scores = torch.tensor([d.score or 0.0 for d in found], dtype=torch.float64)
        labels = torch.tensor([self._index(d.label) for d in found], dtype=torch.long)
        counts = match_boxes(boxes, scores, labels, true, true_labels, self.iou)
        self.counts += torch.tensor(counts, dtype=torch.float64)
        height, width = sample["image"].shape[-2:]
        self.images.append(
            (height, width, true.numpy(), true_labels.numpy(), boxes.numpy(),
             scores.numpy(), labels.numpy())
        )  # fmt: skip

    def _index(self, label: Any) -> int:
        """A detection's class index from its label (an index, or a name in ``classes``)."""
        if self.classes and label in self.classes:
            return self.classes.index(label)
        return int(label) if str(label).isdigit() else -1

    def compute(self) -> dict[str, Any]:
        matched, predicted, true = all_reduce_sum(self.counts).tolist()
        precision = matched / predicted if predicted else 0.0
        recall = matched / true if true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out = {"precision": precision, "recall": recall, "f1": f1, "boxes": int(predicted)}
        return out | self._coco()

    def _coco(self) -> dict[str, float]:
        """COCO AP, AP50... by pycocotools over every process's images (when installed)."""
        if importlib.util.find_spec("pycocotools") is None:
            log.info("pycocotools is not installed: no COCO AP (pip install 'xtimage[coco]')")
            return {}
        from xtimage.metrics.coco import CocoEvaluator

        evaluator = CocoEvaluator(self.classes or [str(i) for i in range(self.num_classes)])
        for height, width, *arrays in all_gather(self.images):
            true, true_labels, boxes, scores, labels = (torch.from_numpy(a) for a in arrays)
            evaluator.add(height, width, true, true_labels, boxes, scores, labels)
        return evaluator.compute()


class BoxCollector:
    """A writer for `Engine.segment` that decodes each core window and merges the boxes.

    Memory holds the boxes only, never the maps, so it serves images of any size.

    Args:
        num_classes: heatmap channels K of the `BoxHead`.
        threshold: minimum score of a peak.
        k: most peaks per core window.
        iou: class-wise NMS threshold across the whole image.
        max_detections: most boxes kept in the end (best first), or None.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        threshold: float = 0.1,
        k: int = 100,
        iou: float = 0.5,
        max_detections: int | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.threshold = threshold
        self.k = k
        self.iou = iou
        self.max_detections = max_detections
        self._parts: list[Boxes] = []

    def write(self, window: Window, data: np.ndarray) -> None:
        """Decode one core window's raw outputs (K + 4, h, w) at ``window``."""
        if data.shape[0] != self.num_classes + 4:
            raise ConfigError(
                f"BoxCollector for {self.num_classes} classes expects {self.num_classes + 4} "
                f"channels (heatmap, size, offset), got {data.shape[0]}"
            )
        x = torch.from_numpy(np.asarray(data, dtype=np.float32))  # (K + 4, h, w)
        k = self.num_classes
        found = decode_boxes(x[:k].sigmoid(), x[k : k + 2], x[k + 2 :], self.threshold, self.k)
        shift = torch.tensor([window.left, window.top] * 2, dtype=found.boxes.dtype)
        self._parts.append(Boxes(found.boxes + shift, found.scores, found.labels))

    def close(self) -> None:
        """Nothing to flush: the boxes stay in memory until `finish`."""

    def abort(self) -> None:
        """Drop the boxes gathered so far."""
        self._parts.clear()

    def finish(self) -> Boxes:
        """All boxes after class-wise NMS, best first."""
        found = Boxes.cat(self._parts)
        keep = batched_nms(found.boxes, found.scores, found.labels, self.iou)  # score order
        if self.max_detections is not None:
            keep = keep[: self.max_detections]
        return found.select(keep)


def detect(
    engine: Any,
    image: Any,
    *,
    keep: Sequence[bool] | None = None,
    threshold: float = 0.1,
    k: int = 100,
    iou: float = 0.5,
    max_detections: int | None = None,
) -> Boxes:
    """Boxes of one image of any size, streamed through an engine whose model has a
    `BoxHead`; ``keep`` is `Engine.segment`'s, the rest `BoxCollector`'s.
    """
    from xtimage.heads.detection import BoxHead

    head = engine.model.head
    if not isinstance(head, BoxHead):
        raise ConfigError(f"detect needs a model with a BoxHead, not {type(head).__name__}")
    collector = BoxCollector(
        head.num_classes, threshold=threshold, k=k, iou=iou, max_detections=max_detections
    )
    engine.segment(image, keep, writer=collector)
    return collector.finish()
