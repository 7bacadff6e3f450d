"""Inference: a `Predictor` over any image, file or folder.

The model does math; the predictor owns the user's conventions (SAM's ``SamPredictor``
split): it loads a checkpoint, scales pixels as training did, streams regions through the
`Engine` with bounded memory, and hands raw outputs to the model's task
(`xtimage.tasks`), which turns them into answers and files. `xt predict`, `xt eval` and
the training loop's evaluation all go through it; scoring is `xtimage.evaluate`.

Outputs for an input ``scene.tif`` (georeferenced inputs keep their CRS and transform):

=============== ======================================================================
classification  ``scene.json``: label, class name, probabilities
segmentation    ``scene.mask.tif``: class map (uint8, tiled, pyramidal; GeoTIFF for a
                GeoTIFF input); with ``heatmap``: ``scene.heatmap.tif``, float32
                probability of the foreground (1 - p(class 0)) or of the first map
detection       ``scene.boxes.csv`` and ``scene.boxes.geojson`` (WGS 84 for
                georeferenced inputs, pixels otherwise)
xview3          ``{scene_id}.xview3.csv`` for a scene folder: the challenge's columns
                (`xtimage.tasks.xview3`; thresholds saved with the checkpoint)
=============== ======================================================================

Every file appears under its final name only when complete, so an input whose outputs
all exist is done and is skipped unless ``overwrite`` is asked for; an output that does
not read, or a raster whose pixels no longer match the digest stored in it
(`xtimage.io.digest`), is reported and written again.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xtimage.config import ModelConfig
from xtimage.data.preprocess import resize_image, to_unit
from xtimage.distributed import World
from xtimage.engine import Engine, RegionSource
from xtimage.engine.views import BAND, VIEW_SETS, ViewAverage, ViewedSource, output_kinds
from xtimage.errors import InputError
from xtimage.io.atomic import output_dir, remove_stale
from xtimage.io.base import Reader, read_padded
from xtimage.io.nodata import ValidPixels
from xtimage.io.open import output_problem
from xtimage.io.transforms import match_channels
from xtimage.model import XT
from xtimage.runtime import autocast
from xtimage.tasks import Job, Prediction, get_task, task_class
from xtimage.window import Window

log = logging.getLogger(__name__)

Image = str | Path | np.ndarray | torch.Tensor | Reader


class Predictor:
    """Predicts with a trained model on images of any size.

    Args:
        model: an `XT` or a baseline wrapper (`xtimage.build.build_model`).
        config: the model's config (task, classes, channels).
        device: where the model runs.
        region_batch: regions encoded at once (memory knob; results do not change).
        autocast: e.g. ``torch.bfloat16`` on GPU; None: float32.
        threshold: detection: least heatmap score of a box.
        iou: detection: IoU above which overlapping boxes are suppressed, and the IoU a
            box needs to match a true one when scoring.
        thresholds: xview3: ``center``, ``vessel`` and ``fishing`` thresholds; None:
            `evaluate` chooses them on the set it scores (the training loop's
            validation), and `predict` uses the task's defaults.
        tta: the test-time views whose probabilities are averaged, ``none``, ``flips``
            or ``d4`` (`xtimage.engine.views`); None: the model's ``model.tta``.

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
        thresholds: dict[str, float] | None = None,
        tta: str | None = None,
    ) -> None:
        if tta is not None and tta != config.tta:
            config = replace(config, tta=tta)
            config.check()  # the views suit the head
        self.model = model.eval()
        self.config = config
        self.task = get_task(config, threshold=threshold, iou=iou, thresholds=thresholds)
        self.views = VIEW_SETS[config.tta]
        self.device = torch.device(device)
        self.autocast = autocast
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
        channels_last: bool = False,
        **kwargs: Any,
    ) -> Predictor:
        """Rebuild the model a checkpoint (or a run folder) describes and wrap it; the
        task and its saved decision thresholds come from the checkpoint. ``amp`` as
        ``train.amp``; ``channels_last`` as ``train.channels_last`` (a CPU speed option
        for convolutional backbones)."""
        from xtimage.checkpoint import load_model
        from xtimage.runtime import resolve_amp, resolve_device, to_channels_last

        dev = resolve_device(device)
        model, ckpt = load_model(path, dev)
        if channels_last:
            to_channels_last(model)
        autocast, _ = resolve_amp(amp, dev)  # inference needs no gradient scaler
        task = task_class(ckpt.config.model.head)
        for key, value in task.checkpoint_options(ckpt.metrics, ckpt.path).items():
            kwargs.setdefault(key, value)
        return cls(
            model,
            ckpt.config.model,
            device=dev,
            region_batch=region_batch,
            autocast=autocast,
            **kwargs,
        )

    # ------------------------------------------------------------------ runner

    def source(self, image: np.ndarray | torch.Tensor | Reader) -> RegionSource:
        """An image as a region source, preprocessed as the data sets do
        (`xtimage.data.preprocess`): tensors as they are; arrays and readers with their
        bands matched to the model (grey -> RGB, alpha dropped), scaled to [0, 1] window
        by window, or read whole and resized for a model with ``input_size``."""
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
        valid = ValidPixels.of(image, self.config.in_chans)  # nodata reaches the model as 0
        image = match_channels(valid.filled() if valid else image, self.config.in_chans)
        size = self.config.input_size
        if size is not None:
            pixels = read_padded(image, Window(0, 0, image.height, image.width))
            resized = resize_image(torch.from_numpy(pixels), size)  # (C, size, size)
            return RegionSource(resized.to(dtype), dtype=dtype)
        return RegionSource(image, to_unit, dtype=dtype)

    def _whole(self, source: RegionSource) -> torch.Tensor:
        """The whole image as (1, C, H, W) on the device (the downsample baseline)."""
        return source.read(Window(0, 0, source.height, source.width))[None].to(self.device)

    def _viewed(self, source: RegionSource) -> list[RegionSource]:
        """The source in each test-time view (the identity as it is: read ahead)."""
        return [ViewedSource(source, v) if v.turns or v.flip else source for v in self.views]

    @torch.no_grad()
    def classify(self, source: RegionSource) -> np.ndarray:
        """Class probabilities (K,) of one image: their mean over the test-time views."""
        probs = [self._classify(s) for s in self._viewed(source)]
        return np.mean(probs, axis=0)

    def _classify(self, source: RegionSource) -> np.ndarray:
        if self.engine is not None:
            logits = self.engine.classify([source])
        else:
            with autocast(self.device, self.autocast):
                logits = self.model(self._whole(source))
        return logits.float().softmax(-1)[0].cpu().numpy()

    @torch.no_grad()
    def dense(self, source: RegionSource, writer: Any, keep: Any = None) -> None:
        """Raw dense outputs of every core window into ``writer`` (of the regions
        ``keep(plan)`` keeps, e.g. `ValidPixels.keep`).

        With test-time views, each view's probabilities are summed in memory
        (`ViewAverage`, every region predicted) and their mean is written band by band
        as log-probabilities (logits for maps), which the task decodes as logits.
        """
        if len(self.views) == 1:
            self._dense(source, writer, keep)
            return
        kinds = output_kinds(self.task.dense_outputs())
        average = ViewAverage(kinds, source.height, source.width, getattr(writer, "tick", None))
        for view, viewed in zip(self.views, self._viewed(source), strict=True):
            self._dense(viewed, average.writer(view))
        average.flush(writer)

    def _dense(self, source: RegionSource, writer: Any, keep: Any = None) -> None:
        if self.engine is not None:
            plan = self.engine.model.plan(source.height, source.width)
            self.engine.segment(source, keep=keep and keep(plan), writer=writer)
            return
        with autocast(self.device, self.autocast):
            out = self.model(self._whole(source))[0].float().cpu().numpy()
        writer.write(Window(0, 0, source.height, source.width), out)

    def num_regions(self, height: int, width: int) -> int:
        """Windows a dense writer's progress counts for an image of this size: its
        regions (1 for the downsample baseline), in every test-time view, plus the
        bands of their average."""
        per_view = self.engine.model.plan(height, width).num_regions if self.engine else 1
        if len(self.views) == 1:
            return per_view
        return per_view * len(self.views) + -(-height // BAND)

    # ------------------------------------------------------------------ public

    @property
    def kind(self) -> str:
        """The task's name (``model.head``)."""
        return self.task.name

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
            reader = self.task.open(image)
            try:
                return self.predict(reader)
            finally:
                reader.close()
        return self.task.predict(self, self.source(image), image)

    def outputs(self, path: str | Path, out_dir: str | Path, heatmap: bool = False) -> list[Path]:
        """The files `predict_file` writes for ``path``."""
        return self.task.outputs(Path(path), Path(out_dir), heatmap)

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
            problems = [(p, output_problem(p)) for p in expected]
            for p, problem in problems:
                if problem:  # never trusted: written again below
                    log.warning("%s: %s; predicting %s again", p, problem, path)
            if not any(problem for _, problem in problems):
                for p in expected:  # a killed earlier run's temporary and scratch files
                    remove_stale(p)
                log.info("%s: outputs exist, skipped (pass overwrite to redo)", path)
                return None
        output_dir(out_dir)
        reader = self.task.open(path)
        try:
            job = Job(path, reader, self.source(reader), expected, progress)
            return self.task.write(self, job)
        finally:
            reader.close()

    def evaluate(
        self, dataset: Any, *, world: World | None = None, progress: bool = False
    ) -> dict[str, Any]:
        """The task's metrics over a labelled data set (`xtimage.evaluate.evaluate`)."""
        from xtimage.evaluate import evaluate

        return evaluate(self, dataset, world=world, progress=progress)

    def score_files(self, dataset: Any, pred_dir: str | Path) -> dict[str, Any]:
        """Scores of prediction files `predict_file` wrote (`xtimage.evaluate.score_files`)."""
        from xtimage.evaluate import score_files

        return score_files(self, dataset, pred_dir)

    def thresholds(self) -> dict[str, Any]:
        """The decision rules that turn scores into answers."""
        return self.task.thresholds()
