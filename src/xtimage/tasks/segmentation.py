"""Segmentation: dense outputs decoded region by region into a class map and a heat map.

Writes ``NAME.mask.tif`` per input (a uint8 class map, uint16 beyond 255 classes; tiled,
pyramidal; a GeoTIFF with the input's georeference for a GeoTIFF input) and with
``heatmap`` ``NAME.heatmap.tif`` (float32 probability of the foreground, 1 - p(class 0),
or of the first map). Scores pooled IoU per class, mean IoU and foreground IoU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xtimage.distributed import all_reduce_sum
from xtimage.errors import ConfigError
from xtimage.io.nodata import MaskedWriter, ValidPixels, output_nodata
from xtimage.limits import check_alloc
from xtimage.tasks.base import TASKS, Job, Prediction, Runner, Task, output_stem
from xtimage.window import Window

if TYPE_CHECKING:
    from torch import nn

    from xtimage.encoders.region import FeatureInfo
    from xtimage.heads import DenseOutput
    from xtimage.io.base import Reader


@TASKS.register("segmentation")
class Segmentation(Task):
    """Dense prediction with a U-Net-style decoder (`DenseHead`)."""

    name = "segmentation"
    best_metric = "foreground_iou"

    def dense_outputs(self) -> list[DenseOutput]:
        """The head's outputs: the config's ``outputs``, else one ``mask`` (ce)."""
        from xtimage.heads import DenseOutput

        if not self.config.outputs:
            return [DenseOutput("mask", self.config.num_classes, "ce")]
        out = []
        for i, spec in enumerate(self.config.outputs):
            if spec.get("class_weights") == "auto":  # measured by fit_to_data in training
                spec = {**spec, "class_weights": None}
            try:
                out.append(DenseOutput(**spec))
            except TypeError as exc:
                raise ConfigError(
                    f"model.outputs[{i}] = {spec!r}: {exc}; give name, channels, loss, weight"
                ) from None
        return out

    def build_head(self, skips: Sequence[FeatureInfo], dim: int) -> nn.Module:
        from xtimage.heads import DenseHead

        c = self.config
        return DenseHead(
            skips,
            dim,
            self.dense_outputs(),
            channels=c.decoder_channels,
            norm=c.decoder_norm,
            depth=c.decoder_depth,
            project_tokens=c.decoder_project_tokens,
            fusion=c.decoder_fusion,
        )

    def fit_to_data(self, train: Any, samples: int = 64) -> None:
        """``class_weights: auto`` becomes ``sqrt(f_0 / f_c)`` for each class c of that
        output, f the pixel frequencies over up to ``samples`` training samples (spread
        evenly; a data set with ``plan`` is read in its first epoch's order): 5% foreground
        weighs ~4.4, 0.3% ~18. Background keeps 1; an absent class gets the largest weight
        seen."""
        auto = [i for i, spec in enumerate(self.config.outputs or [])
                if spec.get("class_weights") == "auto"]  # fmt: skip
        if not auto:
            return
        keys = train.plan(0) if hasattr(train, "plan") else list(range(len(train)))
        step = max(1, len(keys) // samples)
        counts = {i: np.zeros(self.config.outputs[i]["channels"]) for i in auto}
        for key in keys[::step][:samples]:
            sample = train[key]
            for i in auto:
                spec = self.config.outputs[i]
                target = torch.as_tensor(self.key(sample, spec["name"])).flatten()
                target = target[(target >= 0) & (target < spec["channels"])]
                counts[i] += np.bincount(target.numpy(), minlength=spec["channels"])
        for i in auto:
            c = counts[i]
            if c[0] == 0 or c.sum() == 0:
                raise ConfigError(
                    f"model.outputs[{i}].class_weights=auto: no background pixels in "
                    f"{min(len(keys), samples)} training samples; give the weights by hand"
                )
            weights = np.sqrt(c[0] / np.maximum(c, 1))
            weights[c == 0] = weights[c > 0].max()
            self.config.outputs[i] = {
                **self.config.outputs[i],
                "class_weights": [round(float(w), 4) for w in weights],
            }

    def targets(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{output name: target}``, each from the sample key of the same name."""
        return {o.name: torch.as_tensor(self.key(sample, o.name)) for o in self.dense_outputs()}

    # ------------------------------------------------------------------ answers

    def mask_output(self) -> tuple[slice, bool]:
        """Channels of the output that makes the mask, and whether it is a ``ce`` output
        (argmax) rather than a map (sigmoid >= 0.5): the first ``ce`` output, else the
        first channel."""
        start = 0
        for spec in self.dense_outputs():
            if spec.loss == "ce":
                return slice(start, start + spec.channels), True
            start += spec.channels
        return slice(0, 1), False

    def mask_dtype(self) -> np.dtype:
        """uint8 class maps up to 255 classes, uint16 beyond."""
        channels, _ = self.mask_output()
        return np.dtype(np.uint8 if channels.stop - channels.start <= 255 else np.uint16)

    def predict(self, runner: Runner, source: Any, image: Any) -> Prediction:
        height, width = source.height, source.width
        sink = MaskSink(
            self,
            ArrayWriter(1, height, width, np.int64),
            ArrayWriter(1, height, width, np.float32),
        )
        runner.dense(source, sink)
        mask = sink.mask.array[0].astype(sink.dtype)
        return Prediction(self.name, mask=mask, heatmap=sink.heatmap.array[0])

    def outputs(self, path: Path, out_dir: Path, heatmap: bool = False) -> list[Path]:
        stem = output_stem(path)
        return [out_dir / f"{stem}.mask.tif"] + ([out_dir / f"{stem}.heatmap.tif"] * heatmap)

    def write(self, runner: Runner, job: Job) -> Prediction:
        reader, source, outputs = job.reader, job.source, job.outputs
        valid = ValidPixels.of(reader, self.config.in_chans)  # nodata: the outputs' NoData
        mask = _map_writer(reader, outputs[0], self.mask_dtype(), classes=True, valid=valid)
        try:
            heat = (
                _map_writer(reader, outputs[1], np.float32, classes=False, valid=valid)
                if len(outputs) > 1
                else None
            )
        except BaseException:
            mask.abort()
            raise
        bar = tqdm(
            total=runner.num_regions(source.height, source.width),
            desc=Path(reader.path or "image").name,
            unit="region",
            disable=not job.progress,
            leave=False,
        )
        sink = MaskSink(self, mask, heat, bar)
        try:
            runner.dense(source, sink, keep=valid and valid.keep)  # regions with data only
        except BaseException:
            sink.abort()
            raise
        finally:
            bar.close()
        return Prediction(self.name, files=sink.close())

    def read_prediction(self, files: list[Path]) -> Prediction:
        from xtimage.io.open import read_output

        return Prediction(self.name, mask=read_output(files[0])[0])  # its digest checked

    def scorer(self) -> SegmentationScorer:
        outputs = self.dense_outputs()
        spec = next((o for o in outputs if o.loss == "ce"), None)
        if spec is None:
            return SegmentationScorer(outputs[0].name, 2)
        return SegmentationScorer(spec.name, spec.channels)

    def thresholds(self) -> dict[str, Any]:
        return {"rule": "argmax of the class logits (sigmoid >= 0.5 for a single map)"}


def _map_writer(
    reader: Reader, path: Path, dtype: Any, classes: bool, valid: ValidPixels | None = None
) -> Any:
    """A tiled one-band writer of an image-sized map: a GeoTIFF with the input's
    georeference, else an (OME-)TIFF; class maps are reduced by nearest neighbour in the
    pyramid, probabilities by averaging. With the input's ``valid`` pixels, pixels without
    data get `output_nodata`, which the file declares as its NoData."""
    height, width = reader.height, reader.width
    nodata = output_nodata(dtype)
    if reader.geo is not None:
        from xtimage.io.geotiff_writer import GeoTiffWriter

        resampling = "nearest" if classes else "average"
        writer = GeoTiffWriter(path, height, width, 1, dtype, geo=reader.geo,
                               resampling=resampling, nodata=nodata if valid else None)  # fmt: skip
        return MaskedWriter.over(valid, nodata, writer)
    from xtimage.io.tiff_writer import TiffWriter

    resampling = "nearest" if classes else "mean"
    writer = TiffWriter(path, height, width, 1, dtype, resampling=resampling,
                        pixel_size=reader.pixel_size, nodata=nodata if valid else None)  # fmt: skip
    return MaskedWriter.over(valid, nodata, writer)


class ArrayWriter:
    """A `Writer` into an in-memory (C, H, W) array."""

    def __init__(self, channels: int, height: int, width: int, dtype: Any) -> None:
        check_alloc(channels * height * width * np.dtype(dtype).itemsize,
                    f"an in-memory output of {height} x {width} px")  # fmt: skip
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


class MaskSink:
    """The writer `Engine.segment` feeds: raw outputs -> class map (+ heat map) writers.

    The mask is the argmax of the mask output (see `Segmentation.mask_output`); the heat
    map is 1 - p(class 0) of it, or the map's sigmoid.
    """

    def __init__(
        self, task: Segmentation, mask: Any, heatmap: Any = None, bar: tqdm | None = None
    ) -> None:
        self.channels, self.ce = task.mask_output()
        self.dtype = task.mask_dtype()
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
        self.tick()

    def tick(self) -> None:
        """One window done (also each test-time view's windows, `Predictor.dense`)."""
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> list[Path]:
        paths = [self.mask.close()] + ([self.heatmap.close()] if self.heatmap is not None else [])
        return [p for p in paths if p is not None]

    def abort(self) -> None:
        self.mask.abort()
        if self.heatmap is not None:
            self.heatmap.abort()


class SegmentationScorer:
    """Pooled confusion of the mask against the sample's ``target`` key, over processes."""

    def __init__(self, target: str, num_classes: int) -> None:
        from xtimage.metrics import SegmentationMeter

        self.target = target
        self.meter = SegmentationMeter(num_classes)

    def update(self, prediction: Prediction, sample: dict[str, Any]) -> None:
        target = torch.as_tensor(sample[self.target])
        target = target[0] if target.ndim == 3 else target  # (H, W)
        pred = torch.from_numpy(prediction.mask.astype(np.int64))
        self.meter.update(pred[None], target[None])

    def compute(self) -> dict[str, Any]:
        all_reduce_sum(self.meter.confusion)
        return self.meter.compute()
