"""The task interface: everything that varies between task families, in one place.

A *task* (classification, segmentation, detection, xView3) is the one concept of the
project that changes the head, the training targets, how raw outputs become answers and
files, and how answers are scored. Each family is one module of this package with a
`Task` subclass registered in `TASKS` under the name ``model.head`` uses; the builder,
the trainer, the predictor, the scorer and the CLI ask the task and never branch on its
name.

A task runs models only through a `Runner` (the predictor implements it), so this layer
sits below the engine and the predictor: it turns raw outputs into answers, it never
decides how regions are streamed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch

from xtimage.errors import ConfigError, InputError
from xtimage.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from xtimage.config import ModelConfig
    from xtimage.encoders.region import FeatureInfo
    from xtimage.io.base import Reader
    from xtimage.io.vector import Detection


@dataclass
class Prediction:
    """One image's answer; which fields are set depends on the task.

    Attributes:
        kind: the task's name (``model.head``).
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


@dataclass
class Job:
    """One input being predicted into files.

    Attributes:
        path: the input (a file, or a scene folder).
        reader: its open reader (`Task.open`).
        source: the model's region source of it.
        outputs: the files to write (`Task.outputs`).
        progress: show a progress bar.
    """

    path: Path
    reader: Reader
    source: Any
    outputs: list[Path]
    progress: bool = False


class Runner(Protocol):
    """What a task needs to run a model: raw passes over an image (`Predictor`)."""

    config: ModelConfig

    def classify(self, source: Any) -> np.ndarray:
        """Class probabilities (K,) of one image."""

    def dense(self, source: Any, writer: Any, keep: Any = None) -> None:
        """Raw dense outputs of every core window of one image into ``writer``; with
        ``keep``, a function of the region plan, only of the regions it keeps."""

    def num_regions(self, height: int, width: int) -> int:
        """Regions the model cuts an image of this size into (for progress bars)."""

    def source(self, image: Any) -> Any:
        """An image (array, tensor or reader) as the model's region source."""


class Scorer(Protocol):
    """Accumulates a task's metric over (prediction, sample) pairs, over processes."""

    def update(self, prediction: Prediction, sample: dict[str, Any]) -> None: ...

    def compute(self) -> dict[str, Any]: ...


class Task:
    """A task family; subclasses set the class attributes and override what differs.

    Args:
        config: the model's architecture (classes, outputs, channels).
        threshold: detection: least score of a box.
        iou: detection: NMS and matching IoU.
        thresholds: xview3: saved decision thresholds (None: chosen when scoring).
    """

    name: ClassVar[str]
    best_metric: ClassVar[str]  # the validation metric that picks the best checkpoint

    def __init__(
        self,
        config: ModelConfig,
        *,
        threshold: float = 0.3,
        iou: float = 0.5,
        thresholds: dict[str, float] | None = None,
    ) -> None:
        self.config = config
        self.threshold, self.iou = threshold, iou
        self.saved_thresholds = thresholds

    # ------------------------------------------------------------------ model

    def build_head(self, skips: Sequence[FeatureInfo], dim: int) -> nn.Module:
        """The head over ``dim``-wide tokens and the region encoder's skip maps."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training

    def targets(self, sample: dict[str, Any]) -> Any:
        """A sample's training target in the engine's form."""
        raise NotImplementedError

    def collate(self, targets: list[Any]) -> Any:
        """A micro-batch's targets as the engine's streamed steps take them."""
        return targets

    def loss_weight(self, image: torch.Tensor) -> float:
        """How much one image counts in the batch mean: its valid pixels (dense losses are
        means over pixels); 1 for tasks whose loss is a mean over images."""
        return float(image.shape[-2] * image.shape[-1])

    def fit_to_data(self, train: Any) -> None:
        """Settle the config's data-dependent choices on the training set, in place, before
        the model is built (a fresh run only; the resolved values are saved with it)."""

    def key(self, sample: dict[str, Any], key: str) -> Any:
        """``sample[key]``, or an error naming what the data set gives instead."""
        if key not in sample:
            raise ConfigError(
                f"a {self.name} model needs '{key}' in every sample, but the data set gives "
                f"{', '.join(sorted(sample))}; match model.head / model.outputs to the data"
            )
        return sample[key]

    # ------------------------------------------------------------------ inputs

    def open(self, path: str | Path) -> Reader:
        """A reader of one input (an image file; tasks may read other layouts)."""
        from xtimage.io import open_reader

        return open_reader(path)

    def expand_inputs(self, inputs: Sequence[str | Path], out: Path) -> list[Path]:
        """The inputs of `xt predict`: files as given, and every readable image file under
        each folder (sorted), leaving out the output folder."""
        from xtimage.io.open import READERS

        files: list[Path] = []
        for name in inputs:
            path = Path(name)
            if path.is_dir():
                found = sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and not p.name.startswith(".")
                    and out.resolve() not in p.resolve().parents
                    and (
                        p.suffix.lower() in READERS or "".join(p.suffixes[-2:]).lower() in READERS
                    )
                )
                if not found:
                    raise InputError(f"{path}: no image files found in this folder")
                files += found
            elif path.is_file():
                files.append(path)
            else:
                raise InputError(f"{path}: no such file or folder")
        return files

    # ------------------------------------------------------------------ answers

    def predict(self, runner: Runner, source: Any, image: Any) -> Prediction:
        """The answer for one image in memory (``image`` is what the caller passed)."""
        raise NotImplementedError

    def outputs(self, path: Path, out_dir: Path, heatmap: bool = False) -> list[Path]:
        """The files `write` makes for the input ``path``."""
        raise NotImplementedError

    def write(self, runner: Runner, job: Job) -> Prediction:
        """Predict one input and write ``job.outputs`` (each atomically)."""
        raise NotImplementedError

    def finish_outputs(self, inputs: Sequence[Path], out_dir: Path) -> None:
        """After every input of a run is written: files that span inputs (none here)."""

    # ------------------------------------------------------------------ scoring

    def scorer(self) -> Scorer:
        """A fresh metric accumulator for this task."""
        raise NotImplementedError

    def evaluate(
        self, runner: Runner, dataset: Any, indices: Sequence[int], progress: bool
    ) -> dict[str, Any] | None:
        """Scores over this process's ``indices`` of a labelled set when the task scores
        whole sets its own way; None: predict and score sample by sample (the default)."""
        return None

    def read_prediction(self, files: list[Path]) -> Prediction:
        """A `Prediction` read back from the files `write` made."""
        raise NotImplementedError

    def score_files(self, dataset: Any, pred_dir: Path) -> dict[str, Any] | None:
        """Scores of written prediction files when the task reads them its own way; None:
        read each sample's files with `read_prediction` (the default)."""
        return None

    def thresholds(self) -> dict[str, Any]:
        """The decision rules that turn scores into answers."""
        return {"rule": "argmax"}

    @classmethod
    def checkpoint_options(cls, metrics: dict[str, Any], path: Any = None) -> dict[str, Any]:
        """Predictor options a checkpoint's saved evaluation fixes (e.g. thresholds)."""
        return {}


TASKS: Registry[type[Task]] = Registry("task (model.head)")


def output_stem(path: Path) -> str:
    """An input's name without its image suffix: ``scene.ome.tif`` -> ``scene``;
    ``a.b.png`` -> ``a.b``."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def task_class(name: str) -> type[Task]:
    """The registered task class ``name``; an unknown name lists the known ones."""
    import xtimage.tasks  # noqa: F401  (registers the built-in families)

    return TASKS.get(name)


def get_task(config: ModelConfig, **kwargs: Any) -> Task:
    """The task of a model config (``config.head``), with predictor options."""
    return task_class(config.head)(config, **kwargs)
