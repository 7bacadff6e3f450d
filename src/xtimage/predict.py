"""Inference and scoring: a `Predictor` over any image, file or data set.

The model does math; the predictor owns the user's conventions (SAM's ``SamPredictor``
split): it loads a checkpoint, scales pixels as training did, streams regions through the
`Engine` with bounded memory, turns raw outputs into answers (a class, a class map and a
heatmap, boxes), writes them through the I/O writers, and scores them on a labelled set.
`xt predict`, `xt eval` and the training loop's evaluation all go through it.

Outputs for an input ``scene.tif`` (georeferenced inputs keep their CRS and transform):

=============== ======================================================================
classification  ``scene.json``: label, class name, probabilities
segmentation    ``scene.mask.tif``: class map (uint8, tiled, pyramidal; GeoTIFF for a
                GeoTIFF input); with ``heatmap``: ``scene.heatmap.tif``, float32
                probability of the foreground (1 - p(class 0)) or of the first map
detection       ``scene.boxes.csv`` and ``scene.boxes.geojson`` (WGS 84 for
                georeferenced inputs, pixels otherwise)
xview3          ``{scene_id}.xview3.csv`` for a scene folder: the challenge's columns
                (`xtimage.heads.xview3`; thresholds saved with the checkpoint)
=============== ======================================================================

Every file appears under its final name only when complete, so an input whose outputs
all exist is done and is skipped unless ``overwrite`` is asked for.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from xtimage.build import dense_outputs, unwrap
from xtimage.config import ModelConfig
from xtimage.distributed import World, all_gather, all_reduce_sum, current_world, shard
from xtimage.engine import Engine, RegionSource
from xtimage.errors import ConfigError, InputError
from xtimage.io.base import Reader, check_channels, read_padded
from xtimage.io.vector import Detection
from xtimage.model import XT
from xtimage.runtime import autocast
from xtimage.window import Window

log = logging.getLogger(__name__)

Image = str | Path | np.ndarray | torch.Tensor | Reader


def to_unit(pixels: np.ndarray) -> np.ndarray:
    """Pixels as float32 the way the data sets give them: integers over their type's
    maximum (uint8 / 255), floats unchanged."""
    if np.issubdtype(pixels.dtype, np.integer):
        return (pixels / np.iinfo(pixels.dtype).max).astype(np.float32)
    return pixels.astype(np.float32, copy=False)


def output_stem(path: Path) -> str:
    """``scene.ome.tif`` -> ``scene``; ``a.b.png`` -> ``a.b``."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


@dataclass
class Prediction:
    """One image's answer; which fields are set depends on the head family.

    Attributes:
        kind: "classification", "segmentation" or "detection".
        label: the predicted class (classification).
        scores: class probabilities, (K,) (classification).
        mask: class map (H, W) uint8/uint16 (segmentation, in-memory inputs only).
        heatmap: foreground probability (H, W) float32 (segmentation, in memory).
        detections: boxes as `Detection` (detection).
        points: xview3: detections in the challenge's columns (a pandas DataFrame).
        files: the files written (`Predictor.predict_file`).
    """

    kind: str
    label: int | None = None
    scores: np.ndarray | None = None
    mask: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    detections: list[Detection] | None = None
    points: Any = None
    files: list[Path] = field(default_factory=list)


class _ArrayWriter:
    """A `Writer` into an in-memory (C, H, W) array."""

    def __init__(self, channels: int, height: int, width: int, dtype: Any) -> None:
        self.array = np.zeros((channels, height, width), dtype=dtype)

    def write(self, window: Window, data: np.ndarray) -> None:
        inside = window.intersect(Window(0, 0, self.array.shape[1], self.array.shape[2]))
        if inside is not None:
            rows, cols = inside.shift(-window.top, -window.left).slices()
            self.array[(slice(None), *inside.slices())] = data[:, rows, cols]

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _mask_output(config: ModelConfig) -> tuple[slice, bool]:
    """Channels of the output that makes the mask, and whether it is a ``ce`` output
    (argmax) rather than a map (sigmoid >= 0.5): the first ``ce`` output, else the
    first channel."""
    start = 0
    for spec in dense_outputs(config):
        if spec.loss == "ce":
            return slice(start, start + spec.channels), True
        start += spec.channels
    return slice(0, 1), False


def mask_dtype(config: ModelConfig) -> np.dtype:
    """uint8 class maps up to 255 classes, uint16 beyond."""
    channels, _ = _mask_output(config)
    return np.dtype(np.uint8 if channels.stop - channels.start <= 255 else np.uint16)


class _DenseSink:
    """The writer `Engine.segment` feeds: raw outputs -> class map (+ heatmap) writers.

    The mask is the argmax of the mask output (see `_mask_output`); the heatmap is
    1 - p(class 0) of it, or the map's sigmoid.
    """

    def __init__(
        self, config: ModelConfig, mask: Any, heatmap: Any = None, bar: tqdm | None = None
    ) -> None:
        self.channels, self.ce = _mask_output(config)
        self.dtype = mask_dtype(config)
        self.mask, self.heatmap, self.bar = mask, heatmap, bar

    def write(self, window: Window, data: np.ndarray) -> None:
        logits = torch.from_numpy(np.ascontiguousarray(data[self.channels]))  # (K, h, w)
        if self.ce:
            classes = logits.argmax(0)
            fg = 1 - logits.softmax(0)[0] if self.heatmap is not None else None
        else:
            fg = logits[0].sigmoid()
            classes = (fg >= 0.5).long()
        self.mask.write(window, classes[None].numpy().astype(self.dtype))
        if self.heatmap is not None:
            self.heatmap.write(window, fg[None].float().numpy())
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> list[Path]:
        paths = [self.mask.close()] + ([self.heatmap.close()] if self.heatmap is not None else [])
        return [p for p in paths if p is not None]

    def abort(self) -> None:
        self.mask.abort()
        if self.heatmap is not None:
            self.heatmap.abort()


class Predictor:
    """Predicts with a trained model on images of any size.

    Args:
        model: an `XT` or a baseline wrapper (`xtimage.build.build_model`).
        config: the model's config (head family, classes, channels).
        device: where the model runs.
        region_batch: regions encoded at once (memory knob; results do not change).
        autocast: e.g. ``torch.bfloat16`` on GPU; None: float32.
        threshold: detection: least heatmap score of a box.
        iou: detection: IoU above which overlapping boxes are suppressed, and the IoU a
            box needs to match a true one when scoring.
        xview3_thresholds: xview3: ``center``, ``vessel`` and ``fishing`` thresholds;
            None: `evaluate` chooses them on the set it scores (the training loop's
            validation), and `predict` uses `DEFAULT_THRESHOLDS`.

    Example:
        >>> predictor = Predictor.from_checkpoint("runs/seg/checkpoints/best.safetensors")
        >>> predictor.predict("slide.svs").mask          # in memory
        >>> predictor.predict_file("scene.tif", "out/")  # streamed to out/scene.mask.tif
    """

    def __init__(
        self,
        model: nn.Module,
        config: ModelConfig,
        *,
        device: str | torch.device = "cpu",
        region_batch: int = 16,
        autocast: torch.dtype | None = None,
        threshold: float = 0.3,
        iou: float = 0.5,
        xview3_thresholds: dict[str, float] | None = None,
    ) -> None:
        self.model = model.eval()
        self.xview3_thresholds = xview3_thresholds
        self.config = config
        self.device = torch.device(device)
        self.autocast = autocast
        self.threshold, self.iou = threshold, iou
        self.kind = config.head
        # The downsample baseline needs the whole image at once; XT streams.
        self.engine = (
            Engine(model, region_batch, self.device, autocast=autocast)
            if isinstance(model, XT)
            else None
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        region_batch: int = 16,
        amp: str = "auto",
        **kwargs: Any,
    ) -> Predictor:
        """Rebuild the model a checkpoint (or a run folder) describes and wrap it."""
        from xtimage.checkpoint import load_model
        from xtimage.runtime import resolve_amp, resolve_device

        dev = resolve_device(device)
        model, ckpt = load_model(path, dev)
        autocast, _ = resolve_amp(amp, dev)  # inference needs no gradient scaler
        if ckpt.config.model.head == "xview3":
            from xtimage.heads.xview3 import saved_thresholds

            kwargs.setdefault("xview3_thresholds", saved_thresholds(ckpt.metrics, ckpt.path))
        return cls(
            model,
            ckpt.config.model,
            device=dev,
            region_batch=region_batch,
            autocast=autocast,
            **kwargs,
        )

    # ------------------------------------------------------------------ sources

    def _source(self, image: np.ndarray | torch.Tensor | Reader) -> RegionSource:
        dtype = next(self.model.parameters()).dtype
        if isinstance(image, torch.Tensor):
            if image.ndim != 3 or image.shape[0] != self.config.in_chans:
                raise InputError(
                    f"expected a ({self.config.in_chans}, H, W) image tensor for this model, "
                    f"got {tuple(image.shape)}"
                )
            return RegionSource(image.to(dtype), dtype=dtype)
        if isinstance(image, np.ndarray):
            from xtimage.io.array import ArrayReader

            image = ArrayReader(image)
        check_channels(image, self.config.in_chans)
        return RegionSource(image, to_unit, dtype=dtype)

    def _whole(self, source: RegionSource) -> torch.Tensor:
        """The whole image as (1, C, H, W) on the device (the downsample baseline)."""
        return source.read(Window(0, 0, source.height, source.width))[None].to(self.device)

    # ------------------------------------------------------------------ raw passes

    @torch.no_grad()
    def _classify(self, source: RegionSource) -> np.ndarray:
        if self.engine is not None:
            logits = self.engine.classify([source])
        else:
            with autocast(self.device, self.autocast):
                logits = self.model(self._whole(source))
        return logits.float().softmax(-1)[0].cpu().numpy()

    @torch.no_grad()
    def _dense(self, source: RegionSource, writer: Any) -> None:
        """Raw dense outputs of every core window into ``writer``."""
        if self.engine is not None:
            self.engine.segment(source, writer=writer)
            return
        with autocast(self.device, self.autocast):
            out = self.model(self._whole(source))[0].float().cpu().numpy()
        writer.write(Window(0, 0, source.height, source.width), out)

    def _detect(self, source: RegionSource) -> list[Detection]:
        from xtimage.heads.detection import BoxCollector

        collector = BoxCollector(self.config.num_classes, threshold=self.threshold, iou=self.iou)
        self._dense(source, collector)
        return collector.finish().detections(self.config.classes)

    def _open(self, path: str | Path) -> Reader:
        """A reader of an image file, or of an xView3 scene folder for an xview3 model."""
        from xtimage.io import open_reader

        if self.kind != "xview3":
            return open_reader(path)
        from xtimage.data.xview3 import XView3Scene
        from xtimage.heads.xview3 import scene_bands

        return XView3Scene(path, bands=scene_bands(self.config.in_chans))

    def _candidates(self, source: RegionSource, scene_id: str) -> Any:
        """xView3 candidate peaks of a scene (`XView3Collector.finish`)."""
        from xtimage.heads.xview3 import XView3Collector

        collector = XView3Collector(scene_id)
        self._dense(source, collector)
        return collector.finish()

    def _points(self, source: RegionSource, scene_id: str) -> Any:
        """xView3 detections of a scene at the predictor's thresholds."""
        from xtimage.heads.xview3 import DEFAULT_THRESHOLDS, apply_thresholds

        thresholds = self.xview3_thresholds or DEFAULT_THRESHOLDS
        return apply_thresholds(self._candidates(source, scene_id), thresholds)

    # ------------------------------------------------------------------ public

    def predict(self, image: Image) -> Prediction:
        """Predict one image held in memory or read window by window.

        Args:
            image: a file path, a (C, H, W) array or tensor (integers are scaled to [0, 1]
                as in training; tensors are used as they are), or an open `Reader`.

        Returns:
            The `Prediction`; segmentation maps are returned in memory (use
            `predict_file` to stream them to disk for images too large for that).
        """
        if isinstance(image, str | Path):
            reader = self._open(image)
            try:
                return self.predict(reader)
            finally:
                reader.close()
        source = self._source(image)
        if self.kind == "classification":
            scores = self._classify(source)
            return Prediction(self.kind, label=int(scores.argmax()), scores=scores)
        if self.kind == "detection":
            return Prediction(self.kind, detections=self._detect(source))
        if self.kind == "xview3":
            scene_id = getattr(image, "scene_id", None) or Path(image.path or "scene").name
            return Prediction(self.kind, points=self._points(source, scene_id))
        sink = _DenseSink(
            self.config,
            _ArrayWriter(1, source.height, source.width, np.int64),
            _ArrayWriter(1, source.height, source.width, np.float32),
        )
        self._dense(source, sink)
        mask = sink.mask.array[0].astype(sink.dtype)
        return Prediction(self.kind, mask=mask, heatmap=sink.heatmap.array[0])

    def outputs(self, path: str | Path, out_dir: str | Path, heatmap: bool = False) -> list[Path]:
        """The files `predict_file` writes for ``path``."""
        stem, out_dir = output_stem(Path(path)), Path(out_dir)
        if self.kind == "classification":
            return [out_dir / f"{stem}.json"]
        if self.kind == "detection":
            return [out_dir / f"{stem}.boxes.csv", out_dir / f"{stem}.boxes.geojson"]
        if self.kind == "xview3":
            return [out_dir / f"{Path(path).name}.xview3.csv"]
        return [out_dir / f"{stem}.mask.tif"] + (
            [out_dir / f"{stem}.heatmap.tif"] if heatmap else []
        )

    def predict_file(
        self,
        path: str | Path,
        out_dir: str | Path,
        *,
        overwrite: bool = False,
        heatmap: bool = False,
        progress: bool = False,
    ) -> Prediction | None:
        """Predict a file and write the outputs (see the module docstring) into ``out_dir``.

        Returns:
            The prediction with the files written, or None when they all existed already
            and ``overwrite`` is off.
        """
        path, out_dir = Path(path), Path(out_dir)
        expected = self.outputs(path, out_dir, heatmap)
        if not overwrite and all(p.exists() for p in expected):
            log.info("%s: outputs exist, skipped (pass overwrite to redo)", path)
            return None
        out_dir.mkdir(parents=True, exist_ok=True)
        reader = self._open(path)
        try:
            source = self._source(reader)
            if self.kind == "xview3":
                from xtimage.metrics.xview3 import write_predictions_csv

                points = self._points(source, path.name)
                return Prediction(
                    self.kind, points=points, files=[write_predictions_csv(expected[0], points)]
                )
            if self.kind == "classification":
                return self._write_class(path, source, expected[0])
            if self.kind == "detection":
                return self._write_boxes(reader, source, expected)
            return self._write_maps(reader, source, expected, progress)
        finally:
            reader.close()

    def _write_class(self, path: Path, source: RegionSource, out: Path) -> Prediction:
        from xtimage.io.atomic import atomic_path

        scores = self._classify(source)
        label = int(scores.argmax())
        names = self.config.classes
        record = {
            "input": str(path),
            "label": label,
            "class": names[label] if names else str(label),
            "scores": [round(float(s), 6) for s in scores],
            "classes": names or [str(i) for i in range(len(scores))],
        }
        with atomic_path(out) as temp:
            temp.write_text(json.dumps(record, indent=1) + "\n")
        return Prediction(self.kind, label=label, scores=scores, files=[out])

    def _write_boxes(self, reader: Reader, source: RegionSource, out: list[Path]) -> Prediction:
        from xtimage.io.vector import write_csv, write_geojson

        found = self._detect(source)
        write_csv(out[0], found, geo=reader.geo)
        write_geojson(out[1], found, geo=reader.geo)
        return Prediction(self.kind, detections=found, files=out)

    def _write_maps(
        self, reader: Reader, source: RegionSource, out: list[Path], progress: bool
    ) -> Prediction:
        height, width = source.height, source.width

        def writer(path: Path, dtype: Any, classes: bool) -> Any:
            """A tiled writer: GeoTIFF with the input's georeference, else (OME-)TIFF."""
            if reader.geo is not None:
                from xtimage.io.geotiff_writer import GeoTiffWriter

                resampling = "nearest" if classes else "average"
                return GeoTiffWriter(
                    path, height, width, 1, dtype, geo=reader.geo, resampling=resampling
                )
            from xtimage.io.tiff_writer import TiffWriter

            resampling = "nearest" if classes else "mean"
            return TiffWriter(
                path, height, width, 1, dtype, resampling=resampling, pixel_size=reader.pixel_size
            )

        mask = writer(out[0], mask_dtype(self.config), classes=True)
        try:
            heat = writer(out[1], np.float32, classes=False) if len(out) > 1 else None
        except BaseException:
            mask.abort()
            raise
        regions = unwrap(self.model).plan(height, width).num_regions
        bar = tqdm(
            total=regions if self.engine is not None else 1,
            desc=Path(reader.path or "image").name,
            unit="region",
            disable=not progress,
            leave=False,
        )
        sink = _DenseSink(self.config, mask, heat, bar)
        try:
            self._dense(source, sink)
        except BaseException:
            sink.abort()
            raise
        finally:
            bar.close()
        return Prediction(self.kind, files=sink.close())

    def predict_files(
        self,
        inputs: Sequence[str | Path],
        out_dir: str | Path,
        *,
        overwrite: bool = False,
        heatmap: bool = False,
        progress: bool = True,
        world: World | None = None,
    ) -> dict[str, int]:
        """Predict many files; with several processes each takes every W-th file.

        Returns:
            Counts of ``done`` and ``skipped`` files (this process's).
        """
        world = world or current_world()
        mine = shard(list(inputs), world)
        counts = {"done": 0, "skipped": 0}
        bar = tqdm(mine, desc="predict", unit="file", disable=not (progress and world.main))
        for path in bar:
            result = self.predict_file(
                path, out_dir, overwrite=overwrite, heatmap=heatmap, progress=progress
            )
            counts["skipped" if result is None else "done"] += 1
        return counts

    # ------------------------------------------------------------------ scoring

    def evaluate(
        self, dataset: Any, *, world: World | None = None, progress: bool = False
    ) -> dict[str, Any]:
        """The task's metric over a labelled data set (each process scores its share).

        Segmentation: pooled IoU per class, mean IoU, foreground IoU (argmax of the mask
        output). Classification: top-1 (and top-5 with more than 5 classes), macro P/R/F1.
        Detection: precision, recall and F1 of boxes at score >= ``threshold``, matched
        greedily by score at IoU >= ``iou``. The thresholds used are in ``thresholds``.
        """
        world = world or current_world()
        if self.kind == "xview3":
            return self._evaluate_xview3(dataset, world, progress)
        scorer = _Scorer(self.config, self.iou)
        indices = shard(range(len(dataset)), world)
        for i in tqdm(indices, desc="eval", unit="image", disable=not (progress and world.main)):
            sample = dataset[i]
            scorer.update(self.predict(sample["image"]), sample)
        out = scorer.compute()
        out["thresholds"] = self.thresholds()
        return out

    def _evaluate_xview3(self, dataset: Any, world: World, progress: bool) -> dict[str, Any]:
        """The official xView3 scores of whole scenes (`score_xview3`); without saved
        thresholds, those that maximise the aggregate here (`choose_thresholds`)."""
        import pandas as pd

        from xtimage.heads.xview3 import apply_thresholds, choose_thresholds
        from xtimage.metrics.xview3 import score_xview3

        parts = []
        indices = shard(range(len(dataset)), world)
        for i in tqdm(indices, desc="eval", unit="scene", disable=not (progress and world.main)):
            sample = dataset[i]
            try:
                parts.append(self._candidates(self._source(sample["image"]), sample["scene_id"]))
            finally:
                sample["image"].close()
        candidates = pd.concat(all_gather(parts), ignore_index=True)
        if self.xview3_thresholds is None:
            thresholds, scores = choose_thresholds(candidates, dataset.labels, dataset.shore_root)
        else:
            thresholds = dict(self.xview3_thresholds)
            found = apply_thresholds(candidates, thresholds)
            scores = score_xview3(found, dataset.labels, dataset.shore_root)
        detections = int((candidates["score"] >= thresholds["center"]).sum())
        return {**scores, "detections": detections, "thresholds": thresholds}

    def thresholds(self) -> dict[str, Any]:
        """The decision rules that turn scores into answers."""
        if self.kind == "xview3":
            return dict(self.xview3_thresholds or {"rule": "chosen on the scored set"})
        if self.kind == "classification":
            return {"rule": "argmax"}
        if self.kind == "detection":
            return {"score": self.threshold, "nms_iou": self.iou, "match_iou": self.iou}
        return {"rule": "argmax of the class logits (sigmoid >= 0.5 for a single map)"}

    def score_files(self, dataset: Any, pred_dir: str | Path) -> dict[str, Any]:
        """Score prediction files written by `predict_file` against a labelled folder set.

        Each sample's image file names its prediction (``<stem>.mask.tif``, ``.json``,
        ``.boxes.csv`` in ``pred_dir``).
        """
        if self.kind == "xview3":
            return _score_xview3_files(dataset, Path(pred_dir), self.thresholds())
        scorer = _Scorer(self.config, self.iou)
        for i in range(len(dataset)):
            image = _image_path(dataset, i)
            files = self.outputs(image, pred_dir)
            missing = [p for p in files if not p.exists()]
            if missing:
                raise InputError(f"{missing[0]}: no prediction for {image}; run xt predict first")
            scorer.update(_read_prediction(self.kind, files, self.config), dataset[i])
        out = scorer.compute()
        out["thresholds"] = self.thresholds()
        return out


class _Scorer:
    """Accumulates a task's metric from predictions and samples; sums over processes."""

    def __init__(self, config: ModelConfig, iou: float) -> None:
        from xtimage.metrics import ClassificationMeter, SegmentationMeter

        self.kind, self.iou, self.classes = config.head, iou, config.classes
        k = config.num_classes
        if self.kind == "classification":
            self.meter = ClassificationMeter(k, topk=(1, 5) if k > 5 else (1,))
        elif self.kind == "segmentation":
            spec = next((o for o in dense_outputs(config) if o.loss == "ce"), None)
            self.target = spec.name if spec is not None else dense_outputs(config)[0].name
            self.meter = SegmentationMeter(spec.channels if spec is not None else 2)
        else:
            self.num_classes = k
            self.counts = torch.zeros(3, dtype=torch.float64)  # matched, predicted, true
            self.images: list[tuple] = []  # per image: ground truth and boxes, for COCO AP

    def update(self, pred: Prediction, sample: dict[str, Any]) -> None:
        if self.kind == "classification":
            scores = torch.as_tensor(pred.scores)[None]
            self.meter.update(scores, torch.as_tensor(sample["label"]).reshape(1))
        elif self.kind == "segmentation":
            target = torch.as_tensor(sample[self.target])
            target = target[0] if target.ndim == 3 else target
            self.meter.update(torch.from_numpy(pred.mask.astype(np.int64))[None], target[None])
        else:
            found = pred.detections or []
            self.counts += torch.tensor(_match_boxes(found, sample, self.iou, self.classes))
            true, labels = _truth(sample)
            boxes = np.array([[d.box[1], d.box[0], d.box[3], d.box[2]] for d in found])
            self.images.append(
                (
                    *sample["image"].shape[-2:],
                    true.numpy(),
                    labels.numpy(),
                    boxes.reshape(-1, 4),
                    np.array([d.score or 0.0 for d in found]),
                    np.array([_label_index(d.label, self.classes) for d in found], np.int64),
                )
            )

    def compute(self) -> dict[str, Any]:
        if self.kind == "detection":
            matched, predicted, true = all_reduce_sum(self.counts).tolist()
            precision = matched / predicted if predicted else 0.0
            recall = matched / true if true else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            out = {"precision": precision, "recall": recall, "f1": f1, "boxes": int(predicted)}
            return out | self._coco()
        meter = self.meter
        all_reduce_sum(meter.confusion)
        if self.kind == "classification":
            hits = torch.tensor([meter.hits[k] for k in meter.topk] + [meter.count])
            all_reduce_sum(hits)
            meter.hits = dict(zip(meter.topk, hits[:-1].tolist(), strict=True))
            meter.count = int(hits[-1])
        return meter.compute()

    def _coco(self) -> dict[str, float]:
        """COCO AP, AP50... by pycocotools over every process's images (when installed)."""
        import importlib.util

        if importlib.util.find_spec("pycocotools") is None:
            log.info("pycocotools is not installed: no COCO AP (pip install 'xtimage[coco]')")
            return {}
        from xtimage.metrics.coco import CocoEvaluator

        names = self.classes or [str(i) for i in range(self.num_classes)]
        evaluator = CocoEvaluator(names)
        for height, width, true, labels, boxes, scores, found in all_gather(self.images):
            evaluator.add(
                height, width, torch.from_numpy(true), torch.from_numpy(labels),
                torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(found),
            )  # fmt: skip
        return evaluator.compute()


def _score_xview3_files(dataset: Any, pred_dir: Path, thresholds: dict) -> dict[str, Any]:
    """The official scores of the ``{scene_id}.xview3.csv`` files of a scene set."""
    import pandas as pd

    from xtimage.metrics.xview3 import score_xview3

    tables = []
    for scene_id in dataset.scene_ids:
        path = pred_dir / f"{scene_id}.xview3.csv"
        if not path.is_file():
            raise InputError(f"{path}: no prediction for scene {scene_id}; run xt predict first")
        tables.append(pd.read_csv(path))
    found = pd.concat(tables, ignore_index=True)
    found["scene_id"] = found["scene_id"].astype(str)
    scores = score_xview3(found, dataset.labels, dataset.shore_root)
    return {**scores, "detections": len(found), "thresholds": thresholds}


def _truth(sample: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """A sample's true boxes (n, 4) ``(x1, y1, x2, y2)`` and class indices (n,)."""
    true = torch.as_tensor(sample.get("boxes", torch.zeros(0, 4)), dtype=torch.float32)
    true = true.reshape(-1, 4)
    labels = torch.as_tensor(sample.get("labels", torch.zeros(len(true))), dtype=torch.long)
    return true, labels


def _match_boxes(
    found: list[Detection], sample: dict[str, Any], iou: float, classes: list[str] | None
) -> list[float]:
    """(matched, predicted, true) for one image: greedy by score, same class, IoU >= iou."""
    from torchvision.ops import box_iou

    true, labels = _truth(sample)
    if not found or not len(true):
        return [0.0, float(len(found)), float(len(true))]
    order = sorted(found, key=lambda d: -(d.score or 0.0))
    boxes = torch.tensor([[d.box[1], d.box[0], d.box[3], d.box[2]] for d in order])  # x1y1x2y2
    overlap = box_iou(boxes, true)  # (P, T)
    taken = torch.zeros(len(true), dtype=torch.bool)
    matched = 0
    for p, d in enumerate(order):
        same = labels == _label_index(d.label, classes)
        cand = torch.where(~taken & same & (overlap[p] >= iou), overlap[p], -1.0)
        if cand.max() >= 0:
            taken[cand.argmax()] = True
            matched += 1
    return [float(matched), float(len(found)), float(len(true))]


def _label_index(label: Any, classes: list[str] | None) -> int:
    """A detection's class index from its label (an index, or a name in ``classes``)."""
    if classes and label in classes:
        return classes.index(label)
    return int(label) if str(label).isdigit() else -1


def _image_path(dataset: Any, index: int) -> Path:
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


def _read_prediction(kind: str, files: list[Path], config: ModelConfig) -> Prediction:
    """A `Prediction` read back from the files `Predictor.predict_file` wrote."""
    if kind == "classification":
        record = json.loads(files[0].read_text())
        return Prediction(kind, label=record["label"], scores=np.asarray(record["scores"]))
    if kind == "segmentation":
        from xtimage.io import open_reader

        reader = open_reader(files[0])
        try:
            mask = read_padded(reader, Window(0, 0, reader.height, reader.width))[0]
        finally:
            reader.close()
        return Prediction(kind, mask=mask)
    return Prediction(kind, detections=list(_read_boxes(files[0], config)))


def _read_boxes(path: Path, config: ModelConfig) -> Iterable[Detection]:
    import csv

    names = config.classes
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            label: Any = row["label"]
            if names and label in names:
                label = names.index(label)
            elif str(label).isdigit():
                label = int(label)
            box = tuple(float(row[k]) for k in ("top", "left", "bottom", "right"))
            yield Detection.from_box(*box, score=float(row["score"] or 0), label=label)
