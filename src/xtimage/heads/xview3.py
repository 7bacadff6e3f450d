"""xView3-SAR head: centre heatmap, vessel and fishing maps and a length map, their
training targets, and the streamed decoding of centre peaks into the challenge's rows.

xT (Gupta et al., "xT: Nested Tokenization for Larger Context in Large Images", ICML
2024) runs a dense decoder over the whole scene and reports the xView3-SAR score (Paolo
et al., NeurIPS 2022 Datasets and Benchmarks). The four maps follow the challenge's
winning recipe (a CenterNet-style point heatmap plus per-pixel attributes):

- ``center``: 1 channel, focal loss; a gaussian of ``sigma = radius / 3`` that is exactly
  1 at the pixel holding each detection, cut at ``radius`` (overlaps keep the maximum).
- ``vessel``, ``fishing``: 1 channel each, BCE; the label painted in a disk of ``radius``
  around each centre (a pixel in several disks belongs to the nearest centre). Unknown
  labels (NaN, as in the public CSVs) are ignored through a weight map that is 0 there
  (``vessel_weight``, ``fishing_weight``), as is everything outside the disks: these
  maps are only read at peaks.
- ``length``: 1 channel, L1 on metres / `LENGTH_SCALE`, in the same disks, weight 0 where
  the length is unknown (``length_weight``).

Coordinates: a detection at scene pixel (row, col) (``detect_scene_row``, integers in the
labels) draws its peak at that pixel; a peak found at pixel (i, j) is reported as row i,
column j.

Streaming: `XView3Collector` is the writer `Engine.segment` sends each core window's
outputs to. Peaks are pixels equal to the maximum of their 3 x 3 neighbourhood inside a
window, so a peak on a core border may be found by both cores (the neighbour across the
border is not seen); `XView3Collector.finish` then suppresses, best first, every peak
within `MIN_DISTANCE` px of a better one over the whole scene, which keeps one.

Thresholds: the collector keeps every peak scoring at least `CANDIDATE_FLOOR`, with its
vessel and fishing probabilities; `apply_thresholds` turns these candidates into
predictions, and `choose_thresholds` picks the thresholds that maximise the official
aggregate (`xtimage.metrics.xview3.score_xview3`) on validation scenes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from xtimage.encoders.region import FeatureInfo
from xtimage.errors import ConfigError, InputError, require
from xtimage.heads.segmentation import DenseHead, DenseOutput, focal_loss
from xtimage.window import Window

if TYPE_CHECKING:
    import pandas as pd

LENGTH_SCALE = 100.0  # metres per unit of the length output (lengths reach ~500 m)
MIN_DISTANCE = 10.0  # px (100 m): peaks closer than half the 200 m match tolerance merge
CANDIDATE_FLOOR = 0.05  # least centre score a candidate peak keeps
PRIOR = 0.01  # initial centre probability (CenterNet's bias init); few pixels are centres
DEFAULT_THRESHOLDS = {"center": 0.5, "vessel": 0.5, "fishing": 0.5}
GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95

XVIEW3_OUTPUTS = (
    DenseOutput("center", 1, "focal"),
    DenseOutput("vessel", 1, "bce"),
    DenseOutput("fishing", 1, "bce"),
    DenseOutput("length", 1, "l1"),
)
CANDIDATE_COLUMNS = (
    "detect_scene_row",
    "detect_scene_column",
    "scene_id",
    "score",
    "vessel_p",
    "fishing_p",
    "vessel_length_m",
)


def xview3_targets(
    rows: np.ndarray,
    cols: np.ndarray,
    is_vessel: np.ndarray,
    is_fishing: np.ndarray,
    length_m: np.ndarray,
    height: int,
    width: int,
    radius: int = 4,
) -> dict[str, torch.Tensor]:
    """Training targets of `XView3Head` for one image (see the module docstring).

    Args:
        rows: (n,) detection rows in pixels (a float row lies in pixel ``floor(row)``).
        cols: (n,) detection columns.
        is_vessel: (n,) 1, 0 or NaN (unknown).
        is_fishing: (n,) 1, 0 or NaN.
        length_m: (n,) metres or NaN.
        height: image height H.
        width: image width W.
        radius: disk radius in pixels.

    Returns:
        ``center``, ``vessel``, ``fishing``, ``length`` (1, H, W) and ``vessel_weight``,
        ``fishing_weight``, ``length_weight`` (H, W), float32. Detections outside the
        image draw nothing.
    """
    if radius <= 0:
        raise ConfigError(f"the xView3 target radius must be positive, got {radius}")
    rows = np.floor(np.asarray(rows, np.float64).reshape(-1)).astype(np.int64)
    cols = np.floor(np.asarray(cols, np.float64).reshape(-1)).astype(np.int64)
    attrs = [np.asarray(a, np.float64).reshape(-1) for a in (is_vessel, is_fishing, length_m)]
    if any(len(a) != len(rows) for a in (cols, *attrs)):
        raise InputError(
            f"xview3_targets: rows, cols, is_vessel, is_fishing and length_m differ in length "
            f"({[len(a) for a in (rows, cols, *attrs)]})"
        )
    attrs[2] = attrs[2] / LENGTH_SCALE
    center = np.zeros((height, width), np.float64)
    values = np.zeros((3, height, width), np.float64)  # vessel, fishing, length
    known = np.zeros((3, height, width), np.float64)
    nearest = np.full((height, width), np.inf)  # distance to the owning centre
    sigma = radius / 3
    for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        if not (0 <= r < height and 0 <= c < width):
            continue
        r0, r1, c0, c1 = (
            max(r - radius, 0),
            min(r + radius + 1, height),
            max(c - radius, 0),
            min(c + radius + 1, width),
        )
        yy, xx = np.mgrid[r0:r1, c0:c1]
        d2 = (yy - r) ** 2 + (xx - c) ** 2  # (h', w')
        disk = d2 <= radius**2
        g = np.where(disk, np.exp(-d2 / (2 * sigma**2)), 0.0)  # 1 at the centre pixel
        center[r0:r1, c0:c1] = np.maximum(center[r0:r1, c0:c1], g)
        own = disk & (np.sqrt(d2) < nearest[r0:r1, c0:c1])
        nearest[r0:r1, c0:c1][own] = np.sqrt(d2)[own]
        for k, a in enumerate(attrs):
            good = np.isfinite(a[i])
            values[k, r0:r1, c0:c1][own] = a[i] if good else 0.0
            known[k, r0:r1, c0:c1][own] = float(good)
    t = {"center": center[None]}
    for k, name in enumerate(("vessel", "fishing", "length")):
        t[name] = values[k][None]
        t[f"{name}_weight"] = known[k]
    return {k: torch.from_numpy(v).float() for k, v in t.items()}


class XView3Head(DenseHead):
    """A `DenseHead` with the xView3 outputs ``center``, ``vessel``, ``fishing``, ``length``.

    The centre heatmap is trained with `focal_loss` on every valid pixel; vessel and
    fishing with BCE and length with L1, each pixel weighted by its target weight map
    (1 inside a disk with a known label, else 0). Sums over pixels, as `DenseHead`'s.

    Args:
        skips: channels and strides of the skip maps, shallow to deep.
        dim: token width.
        channels: decoder width.
        norm: decoder normalisation (see `DenseHead`).
    """

    def __init__(
        self, skips: Sequence[FeatureInfo], dim: int, *, channels: int = 32, norm: str = "layer"
    ) -> None:
        super().__init__(skips, dim, XVIEW3_OUTPUTS, channels, norm)
        with torch.no_grad():
            self.out.bias[0] = math.log(PRIOR / (1 - PRIOR))

    def loss_sum(
        self, out: torch.Tensor, targets: dict[str, torch.Tensor], valid: torch.Tensor
    ) -> torch.Tensor:
        """Focal + weighted BCE and L1 losses summed over the valid pixels.

        Args:
            out: (k, 4, H, W) raw outputs.
            targets: `xview3_targets` cropped to the chunk: maps (k, 1, H, W), weights
                (k, H, W).
            valid: (k, H, W) bool.
        """
        parts = self.split(out)
        v = valid.to(out.dtype)
        total = (focal_loss(parts["center"], targets["center"])[:, 0] * v).sum()
        for spec in self.outputs[1:]:
            pred, target = parts[spec.name][:, 0], targets[spec.name][:, 0]  # (k, H, W)
            if spec.loss == "bce":
                per_pixel = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
            else:
                per_pixel = (pred - target).abs()
            total = total + spec.weight * (per_pixel * targets[f"{spec.name}_weight"] * v).sum()
        return total


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
    from xtimage.metrics.xview3 import score_xview3

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


def scene_bands(in_chans: int) -> tuple[str, ...]:
    """The bands an xView3 model of ``in_chans`` channels reads: the first ``in_chans`` of
    VV, VH and the ancillary rasters, in `xtimage.data.xview3` order."""
    from xtimage.data.xview3 import ANCILLARY_BANDS, SAR_BANDS

    order = SAR_BANDS + ANCILLARY_BANDS
    if not 1 <= in_chans <= len(order):
        raise ConfigError(
            f"an xView3 model reads 1 to {len(order)} bands ({', '.join(order)}), in that "
            f"order; model.in_chans={in_chans}"
        )
    return order[:in_chans]


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
