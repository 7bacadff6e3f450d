"""xView3-SAR: vessel detection in whole SAR scenes, scored by the challenge's metric.

Inputs are scene folders (`xtimage.data.xview3.XView3Scene`). The head's four maps
(`xtimage.heads.xview3`) are decoded core window by core window into candidate peaks by
`XView3Collector`, the writer `Engine.segment` feeds: peaks are pixels equal to the
maximum of their 3 x 3 neighbourhood inside a window, so a peak on a core border may be
found by both cores (the neighbour across the border is not seen); `XView3Collector.finish`
then suppresses, best first, every peak within `MIN_DISTANCE` px of a better one over the
whole scene, which keeps one.

Thresholds: the collector keeps every peak scoring at least `CANDIDATE_FLOOR`, with its
vessel and fishing probabilities; `apply_thresholds` turns these candidates into
predictions, and `choose_thresholds` picks the thresholds that maximise the official
aggregate (`xtimage.metrics.xview3.score_xview3`) on validation scenes; they are saved
with the checkpoint.

Writes ``{scene_id}.xview3.csv`` per scene in the challenge's columns, and after a run
``predictions.csv``, every scene's rows in the challenge's submission file.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xtimage.distributed import all_gather
from xtimage.errors import ConfigError, InputError, require
from xtimage.heads.xview3 import LENGTH_SCALE, XVIEW3_OUTPUTS
from xtimage.metrics.xview3 import score_xview3, write_predictions_csv
from xtimage.tasks.base import TASKS, Job, Prediction, Runner, Task
from xtimage.window import Window

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

    from xtimage.encoders.region import FeatureInfo
    from xtimage.io.base import Reader

MIN_DISTANCE = 10.0  # px (100 m): peaks closer than half the 200 m match tolerance merge
CANDIDATE_FLOOR = 0.05  # least centre score a candidate peak keeps
DEFAULT_THRESHOLDS = {"center": 0.5, "vessel": 0.5, "fishing": 0.5}
GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95

CANDIDATE_COLUMNS = (
    "detect_scene_row",
    "detect_scene_column",
    "scene_id",
    "score",
    "vessel_p",
    "fishing_p",
    "vessel_length_m",
)


class XView3Collector:
    """A writer for `Engine.segment` that finds centre peaks and reads their attributes.

    Memory holds the candidates only, never the maps, so it serves whole scenes.

    Args:
        scene_id: the scene's id, written in every row.
        floor: least centre score kept (the thresholds chosen later are at least this).
        k: most peaks per core window.
        min_distance: peaks within this many pixels of a better one are dropped.
    """

    def __init__(
        self,
        scene_id: str,
        *,
        floor: float = CANDIDATE_FLOOR,
        k: int = 256,
        min_distance: float = MIN_DISTANCE,
    ) -> None:
        self.scene_id = scene_id
        self.floor, self.k, self.min_distance = floor, k, min_distance
        self._parts: list[np.ndarray] = []

    def write(self, window: Window, data: np.ndarray) -> None:
        """Peaks of one core window's raw outputs (4, h, w) at ``window``."""
        if data.shape[0] != len(XVIEW3_OUTPUTS):
            raise ConfigError(
                f"XView3Collector expects {len(XVIEW3_OUTPUTS)} channels (center, vessel, "
                f"fishing, length), got {data.shape[0]}"
            )
        x = torch.from_numpy(np.asarray(data, dtype=np.float32))  # (4, h, w)
        center = x[0].sigmoid()  # (h, w)
        peaks = center == F.max_pool2d(center[None], 3, stride=1, padding=1)[0]
        scores = torch.where(peaks & (center >= self.floor), center, -1.0).flatten()
        top = scores.topk(min(self.k, scores.numel()))
        index = top.indices[top.values >= 0]  # (n,)
        i, j = index // center.shape[1], index % center.shape[1]
        rows = np.stack(
            [
                (i + window.top).numpy(),
                (j + window.left).numpy(),
                center[i, j].numpy(),
                x[1, i, j].sigmoid().numpy(),
                x[2, i, j].sigmoid().numpy(),
                (x[3, i, j] * LENGTH_SCALE).clamp_min(0).numpy(),
            ],
            axis=1,
        )  # (n, 6)
        self._parts.append(rows.astype(np.float64))

    def close(self) -> None:
        """Nothing to flush: the candidates stay in memory until `finish`."""

    def abort(self) -> None:
        """Drop the candidates gathered so far."""
        self._parts.clear()

    def finish(self) -> pd.DataFrame:
        """The scene's candidates after distance suppression (`CANDIDATE_COLUMNS`), best
        first, ties in raster order: the same for any window layout."""
        from scipy.spatial import cKDTree

        pd = require("pandas", "science", "xView3 predictions")
        found = np.concatenate(self._parts) if self._parts else np.zeros((0, 6))
        found = found[np.lexsort((found[:, 1], found[:, 0], -found[:, 2]))]  # ties: raster
        keep = np.ones(len(found), bool)
        if len(found):
            tree = cKDTree(found[:, :2])
            for a in range(len(found)):
                if keep[a]:
                    near = tree.query_ball_point(found[a, :2], self.min_distance)
                    keep[[b for b in near if b > a]] = False
        found = found[keep]
        return pd.DataFrame(
            {
                "detect_scene_row": found[:, 0].astype(np.int64),
                "detect_scene_column": found[:, 1].astype(np.int64),
                "scene_id": self.scene_id,
                "score": found[:, 2],
                "vessel_p": found[:, 3],
                "fishing_p": found[:, 4],
                "vessel_length_m": found[:, 5],
            },
            columns=list(CANDIDATE_COLUMNS),
        )




def apply_thresholds(candidates: pd.DataFrame, thresholds: dict[str, float]) -> pd.DataFrame:
    """Predictions in the challenge's columns: candidates scoring at least
    ``thresholds["center"]``, flagged vessel / fishing at their thresholds."""
    kept = candidates[candidates["score"] >= thresholds["center"]]
    out = kept[["detect_scene_row", "detect_scene_column", "scene_id"]].copy()
    out["is_vessel"] = (kept["vessel_p"] >= thresholds["vessel"]).to_numpy()
    out["is_fishing"] = (kept["fishing_p"] >= thresholds["fishing"]).to_numpy()
    out["vessel_length_m"] = kept["vessel_length_m"].to_numpy()
    return out.reset_index(drop=True)




def choose_thresholds(
    candidates: pd.DataFrame,
    ground_truth: pd.DataFrame | str,
    shore_root: str | None = None,
    *,
    grid: Sequence[float] = GRID,
) -> tuple[dict[str, float], dict[str, float]]:
    """The centre, vessel and fishing thresholds that maximise the official aggregate.

    The centre threshold is searched first with the others at 0.5; then the vessel and
    the fishing thresholds, each on its own: given the centre threshold, the vessel
    threshold changes only ``vessel_fscore`` and the fishing threshold only
    ``fishing_fscore``, so these two searches are exact. Ties keep the lowest value.

    Args:
        candidates: `XView3Collector.finish` rows of the validation scenes.
        ground_truth: their labels (table or CSV).
        shore_root: the shoreline folder (for ``loc_fscore_shore``), or None.
        grid: the values tried for each threshold (each >= the collector's floor).

    Returns:
        The thresholds and the official scores they give.
    """
    if not len(grid):
        raise ConfigError("choose_thresholds needs a non-empty grid of thresholds")
    chosen = dict(DEFAULT_THRESHOLDS)
    best: dict[str, float] = {}

    for name in ("center", "vessel", "fishing"):
        best = {"aggregate": -1.0}
        for value in grid:
            trial = {**chosen, name: float(value)}
            result = score_xview3(apply_thresholds(candidates, trial), ground_truth, shore_root)
            if result["aggregate"] > best["aggregate"]:
                best, chosen = result, trial
    return chosen, best




def saved_thresholds(metrics: dict[str, Any], path: Any = None) -> dict[str, float]:
    """The thresholds a checkpoint keeps: its evaluation's ``thresholds`` (chosen on the
    validation scenes by `choose_thresholds` and saved in the checkpoint's ``metrics``),
    or `DEFAULT_THRESHOLDS` with a warning when it was saved before any evaluation."""
    saved = metrics.get("thresholds") or {}
    if not all(k in saved for k in DEFAULT_THRESHOLDS):
        warnings.warn(
            f"{path}: no xView3 thresholds saved (no validation ran); using "
            f"{DEFAULT_THRESHOLDS}; evaluate on validation scenes to choose them",
            stacklevel=2,
        )
        return dict(DEFAULT_THRESHOLDS)
    return {k: float(saved[k]) for k in DEFAULT_THRESHOLDS}


@TASKS.register("xview3")
class XView3(Task):
    """xView3-SAR vessel detection over whole scenes (`XView3Head`)."""

    name = "xview3"
    best_metric = "aggregate"

    def build_head(self, skips: Sequence[FeatureInfo], dim: int) -> nn.Module:
        from xtimage.heads.xview3 import XView3Head

        c = self.config
        return XView3Head(skips, dim, channels=c.decoder_channels, norm=c.decoder_norm)

    def targets(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        """`xview3_targets` of the sample's ``points`` (x, y) and attributes."""
        from xtimage.heads.xview3 import xview3_targets

        _, height, width = sample["image"].shape
        x, y = torch.as_tensor(self.key(sample, "points")).reshape(-1, 2).unbind(-1)
        attrs = [sample[k] for k in ("is_vessel", "is_fishing", "length_m")]
        radius = int(sample.get("point_radius", 4))
        return xview3_targets(y, x, *attrs, height, width, radius)

    # ------------------------------------------------------------------ inputs

    def open(self, path: str | Path) -> Reader:
        from xtimage.data.xview3 import XView3Scene, scene_bands

        return XView3Scene(path, bands=scene_bands(self.config.in_chans))

    def expand_inputs(self, inputs: Sequence[str | Path], out: Path) -> list[Path]:
        """Scene folders: each input is a scene folder (holding VV_dB.tif) or a folder of
        them."""
        from xtimage.data.xview3 import list_scenes

        scenes: list[Path] = []
        for name in inputs:
            path = Path(name)
            if (path / "VV_dB.tif").is_file():
                scenes.append(path)
            elif path.is_dir() and list_scenes(path):
                scenes += [path / s for s in list_scenes(path)]
            else:
                raise InputError(f"{path}: neither an xView3 scene folder nor a folder of them")
        return scenes

    # ------------------------------------------------------------------ answers

    def candidates(self, runner: Runner, source: Any, scene_id: str) -> pd.DataFrame:
        """A scene's candidate peaks (`XView3Collector.finish`)."""
        collector = XView3Collector(scene_id)
        runner.dense(source, collector)
        return collector.finish()

    def points(self, runner: Runner, source: Any, scene_id: str) -> pd.DataFrame:
        """A scene's detections at the saved thresholds (or `DEFAULT_THRESHOLDS`)."""
        thresholds = self.saved_thresholds or DEFAULT_THRESHOLDS
        return apply_thresholds(self.candidates(runner, source, scene_id), thresholds)

    def predict(self, runner: Runner, source: Any, image: Any) -> Prediction:
        scene_id = getattr(image, "scene_id", None) or Path(image.path or "scene").name
        return Prediction(self.name, points=self.points(runner, source, scene_id))

    def outputs(self, path: Path, out_dir: Path, heatmap: bool = False) -> list[Path]:
        return [out_dir / f"{path.name}.xview3.csv"]

    def write(self, runner: Runner, job: Job) -> Prediction:
        points = self.points(runner, job.source, job.path.name)
        written = write_predictions_csv(job.outputs[0], points)
        return Prediction(self.name, points=points, files=[written])

    def finish_outputs(self, inputs: Sequence[Path], out_dir: Path) -> None:
        """Every scene's ``SCENE.xview3.csv`` as one challenge file, ``predictions.csv``."""
        pd = require("pandas", "science", "xView3 predictions")
        tables = [pd.read_csv(out_dir / f"{scene.name}.xview3.csv") for scene in inputs]
        table = pd.concat(tables, ignore_index=True).astype({"scene_id": str})
        write_predictions_csv(out_dir / "predictions.csv", table)

    # ------------------------------------------------------------------ scoring

    def evaluate(
        self, runner: Runner, dataset: Any, indices: Sequence[int], progress: bool
    ) -> dict[str, Any]:
        """The official scores of whole scenes (`score_xview3`); without saved thresholds,
        those that maximise the aggregate here (`choose_thresholds`)."""
        pd = require("pandas", "science", "xView3 scoring")
        parts = []
        for i in tqdm(indices, desc="eval", unit="scene", disable=not progress):
            sample = dataset[i]
            try:
                source = runner.source(sample["image"])
                parts.append(self.candidates(runner, source, sample["scene_id"]))
            finally:
                sample["image"].close()
        candidates = pd.concat(all_gather(parts), ignore_index=True)
        if self.saved_thresholds is None:
            thresholds, scores = choose_thresholds(candidates, dataset.labels, dataset.shore_root)
        else:
            thresholds = dict(self.saved_thresholds)
            found = apply_thresholds(candidates, thresholds)
            scores = score_xview3(found, dataset.labels, dataset.shore_root)
        detections = int((candidates["score"] >= thresholds["center"]).sum())
        return {**scores, "detections": detections, "thresholds": thresholds}

    def score_files(self, dataset: Any, pred_dir: Path) -> dict[str, Any]:
        """The official scores of the ``{scene_id}.xview3.csv`` files of a scene set."""
        pd = require("pandas", "science", "xView3 scoring")
        tables = []
        for scene_id in dataset.scene_ids:
            path = pred_dir / f"{scene_id}.xview3.csv"
            if not path.is_file():
                raise InputError(
                    f"{path}: no prediction for scene {scene_id}; run xt predict first"
                )
            tables.append(pd.read_csv(path))
        found = pd.concat(tables, ignore_index=True)
        found["scene_id"] = found["scene_id"].astype(str)
        scores = score_xview3(found, dataset.labels, dataset.shore_root)
        return {**scores, "detections": len(found), "thresholds": self.thresholds()}

    def thresholds(self) -> dict[str, Any]:
        return dict(self.saved_thresholds or {"rule": "chosen on the scored set"})

    @classmethod
    def checkpoint_options(cls, metrics: dict[str, Any], path: Any = None) -> dict[str, Any]:
        return {"thresholds": saved_thresholds(metrics, path)}
