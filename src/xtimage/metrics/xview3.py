"""The xView3-SAR challenge score, number for number with the official scorer.

Data set and score: Paolo et al., "xView3-SAR: Detecting Dark Fishing Activity Using
Synthetic Aperture Radar Imagery", NeurIPS 2022 Datasets and Benchmarks; xT (Gupta et al.,
"xT: Nested Tokenization for Larger Context in Large Images", ICML 2024) reports it.

Over 500 lines because it reproduces one external program, quirks included, and reads
best next to it; shoreline files, which only the shore score reads, load here too.

The official scorer is ``reference/metric.py`` of DIUx-xView/xview3-reference, run for the
leaderboard as ``metric.py --distance_tolerance 200 --shore_tolerance 2 --shore_root ...
--drop_low_detect --costly_dist``. This is our own implementation of the same rules; the
tests compare it with that scorer's output on committed cases (tests/metrics/xview3_cases)
to 1e-9. The rules, in order, quirks included:

1. Scenes: only scenes that appear in the predictions are scored. The truth of a scene
   without predictions is dropped, not counted as missed; predictions of a scene without
   (HIGH or MEDIUM) truth are ignored, not counted as false alarms.
2. LOW truth: per scene, predictions are first matched (rule 3) against all truth, LOW
   included; the predictions matched to LOW truth are dropped. Then only HIGH and MEDIUM
   truth is kept.
3. Matching: per scene, a Hungarian assignment (`scipy.optimize.linear_sum_assignment`) on
   the Euclidean pixel distance times 10 m; with ``costly_dist`` a pair further than the
   tolerance costs 99,999,990 instead of its distance, so the assignment first maximises
   the number of pairs within tolerance. A pair matches when its distance is *strictly*
   below 200 m.
4. Detection F1 (``loc_fscore``) over matches, unmatched predictions and unmatched truth.
5. Close to shore (``loc_fscore_shore``): truth whose ``distance_from_shore_km`` <= 2; a
   prediction is near shore when some point of the scene's shoreline contours lies within
   2.2 km (2 km + the 200 m match tolerance, i.e. 220 px, inclusive) at a distance above 0
   (the scorer marks absent pairs with 0, so a contour point exactly on the prediction
   does not count). A scene adds to the shore counts only when it has near-shore truth
   *and* near-shore predictions, matched as in rule 3. The score is 0 when no scored truth
   is near shore, or when no shoreline folder is given.
6. Vessel F1 over the matched pairs whose truth ``is_vessel`` is known; fishing F1 over the
   matched pairs whose truth is a vessel with known ``is_fishing``. A predicted flag is
   right when it equals the truth; the positive class is True.
7. Length accuracy over the matched pairs with a known true length:
   ``1 - min(mean(|min(pred, 500) - min(true, 500)| / min(true, 500)), 1)``.
8. ``aggregate = loc_fscore * (1 + length_acc + vessel_fscore + fishing_fscore +
   loc_fscore_shore) / 5``. Every empty denominator gives 0.

One deliberate difference: when rule 2 drops every prediction of a scene that still has
truth, the official scorer fails (``ValueError`` from an empty distance matrix); here that
truth is counted as missed. Predictions must be complete: a missing row, column, flag or
length is an `InputError` (the official scorer would give NaN or fail).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xtimage.errors import ConfigError, InputError, require

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

PIXEL_SIZE_M = 10.0  # the xView3 UTM grid
COSTLY_DISTANCE_M = 9999999 * PIXEL_SIZE_M  # the official scorer's cost of an out-of-reach pair
MAX_LENGTH_M = 500.0  # lengths are capped here before the relative error

PREDICTION_COLUMNS = (
    "detect_scene_row",
    "detect_scene_column",
    "scene_id",
    "is_vessel",
    "is_fishing",
    "vessel_length_m",
)
TRUTH_COLUMNS = (
    "detect_scene_row",
    "detect_scene_column",
    "scene_id",
    "is_vessel",
    "is_fishing",
    "vessel_length_m",
    "confidence",
    "distance_from_shore_km",
)
SCORE_KEYS = (
    "loc_fscore",
    "loc_fscore_shore",
    "vessel_fscore",
    "fishing_fscore",
    "length_acc",
    "aggregate",
)


def load_shoreline(root: str | Path, scene_id: str) -> np.ndarray:
    """All shoreline contour points of a scene, stacked, as (M, 2) (row, column) pixels.

    The official file is a NumPy object array of (n, 2) contour arrays, a pickle; it is
    read by `xtimage.io.npy.load_npy`, which admits only numpy arrays, so a hostile file
    is refused and never runs code.
    """
    path = Path(root) / f"{scene_id}_shoreline.npy"
    if not path.is_file():
        raise InputError(
            f"{path}: no shoreline file for scene {scene_id}; the shore score needs "
            f"{{scene_id}}_shoreline.npy for every scored scene in the shoreline folder"
        )
    from xtimage.io.npy import load_npy

    contours = load_npy(path)
    if len(contours) == 0:
        return np.zeros((0, 2))
    try:
        points = np.vstack(list(contours)).astype(np.float64)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: shoreline contours are not numeric arrays ({exc})") from exc
    if points.ndim != 2 or points.shape[1] != 2:
        raise InputError(
            f"{path}: shoreline contours must be (n, 2) row/column arrays, got points of "
            f"shape {points.shape}"
        )
    return points


def match_detections(
    pred_rc: np.ndarray,
    true_rc: np.ndarray,
    *,
    tolerance_m: float = 200.0,
    costly_dist: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matches of predictions to truth in one scene (rule 3).

    Args:
        pred_rc: (P, 2) prediction (row, column) pixel positions.
        true_rc: (T, 2) truth positions.
        tolerance_m: a pair matches when its distance is strictly below this.
        costly_dist: give pairs beyond the tolerance the official large cost.

    Returns:
        Indices into ``pred_rc`` and ``true_rc`` of the matched pairs, (M,) each.
    """
    linear_sum_assignment = require("scipy.optimize", "science", "xView3 scoring")
    linear_sum_assignment = linear_sum_assignment.linear_sum_assignment
    pred_rc = np.asarray(pred_rc, dtype=np.float64).reshape(-1, 2)
    true_rc = np.asarray(true_rc, dtype=np.float64).reshape(-1, 2)
    if len(pred_rc) == 0 or len(true_rc) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    # Written as the scorer's scipy.spatial.distance_matrix computes it, so that equal
    # costs (and so the assignment's tie-breaking) are bit-identical.
    diff = pred_rc[:, None, :] - true_rc[None, :, :]  # (P, T, 2)
    dist = np.sqrt((diff**2).sum(-1)) * PIXEL_SIZE_M  # (P, T) metres
    if costly_dist:
        dist[dist > tolerance_m] = COSTLY_DISTANCE_M
    rows, cols = linear_sum_assignment(dist)
    keep = dist[rows, cols] < tolerance_m
    return rows[keep], cols[keep]


def near_shore(points_rc: np.ndarray, shore_rc: np.ndarray, radius_px: float) -> np.ndarray:
    """Which points lie within ``radius_px`` (inclusive) of a shoreline point (rule 5).

    A shoreline point at distance exactly 0 does not count, as in the official scorer.

    Args:
        points_rc: (N, 2) (row, column) positions.
        shore_rc: (M, 2) shoreline contour points.
        radius_px: the reach, in pixels.

    Returns:
        (N,) bool.
    """
    spatial = require("scipy.spatial", "science", "xView3 scoring")
    points_rc = np.asarray(points_rc, dtype=np.float64).reshape(-1, 2)
    shore_rc = np.asarray(shore_rc, dtype=np.float64).reshape(-1, 2)
    near = np.zeros(len(points_rc), dtype=bool)
    if len(points_rc) == 0 or len(shore_rc) == 0:
        return near
    tree = spatial.cKDTree(shore_rc)
    for i, idx in enumerate(tree.query_ball_point(points_rc, radius_px)):
        d2 = ((shore_rc[idx] - points_rc[i]) ** 2).sum(-1)  # (k,)
        near[i] = bool((d2 > 0).any())
    return near


def f1_score(tp: int, fp: int, fn: int) -> float:
    """F1 from counts; 0 where precision, recall or their sum has an empty denominator."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def flag_f1(pred: np.ndarray, true: np.ndarray) -> float:
    """F1 of predicted flags against true flags of matched pairs (rule 6).

    Pairs whose truth is NaN are left out; a prediction is right when it equals the truth,
    and the positive class is a non-zero (True) truth.

    Args:
        pred: (M,) predicted flags as floats (True = 1.0).
        true: (M,) true flags as floats, NaN when unknown.
    """
    known = ~np.isnan(true)
    pred, true = pred[known], true[known]
    right = pred == true
    positive = true != 0
    return f1_score(
        int((right & positive).sum()),
        int((~right & ~positive).sum()),
        int((~right & positive).sum()),
    )


def length_accuracy(pred_m: np.ndarray, true_m: np.ndarray) -> float:
    """``1 - min(mean relative error, 1)`` over pairs with a known true length (rule 7).

    Both lengths are capped at 500 m first; no pair with a known length gives 0.

    Args:
        pred_m: (M,) predicted lengths in metres.
        true_m: (M,) true lengths, NaN when unknown.
    """
    known = ~np.isnan(true_m)
    if not known.any():
        return 0.0
    pred = np.minimum(pred_m[known], MAX_LENGTH_M)
    true = np.minimum(true_m[known], MAX_LENGTH_M)
    error = float(np.mean(np.abs(pred - true) / true))
    return 1.0 - min(error, 1.0)


def aggregate_score(
    loc_fscore: float,
    length_acc: float,
    vessel_fscore: float,
    fishing_fscore: float,
    loc_fscore_shore: float,
) -> float:
    """The challenge's single number, weighted by detection F1 (rule 8)."""
    return loc_fscore * (1 + length_acc + vessel_fscore + fishing_fscore + loc_fscore_shore) / 5


def score_xview3(
    predictions: pd.DataFrame | str | Path,
    ground_truth: pd.DataFrame | str | Path,
    shore_root: str | Path | None = None,
    *,
    distance_tolerance_m: float = 200.0,
    shore_tolerance_km: float = 2.0,
    costly_dist: bool = True,
    drop_low_detect: bool = True,
    score_all: bool = False,
) -> dict[str, float]:
    """The official xView3-SAR scores of a set of predictions.

    The defaults are the leaderboard's settings. The options mirror the official scorer's
    flags (``--costly_dist``, ``--drop_low_detect``, ``--score_all``).

    Args:
        predictions: a predictions table or CSV (`PREDICTION_COLUMNS`), one row per
            detection, scene pixel coordinates.
        ground_truth: the labels table or CSV (the xView3 label files' columns).
        shore_root: folder of ``{scene_id}_shoreline.npy`` files; None scores
            ``loc_fscore_shore`` as 0, as the official scorer does without one.
        distance_tolerance_m: match distance, strict.
        shore_tolerance_km: the "close to shore" distance.
        costly_dist: give out-of-tolerance pairs the official large cost.
        drop_low_detect: drop predictions matched to LOW truth before scoring.
        score_all: score against all truth, LOW included (skips the LOW handling).

    Returns:
        ``loc_fscore``, ``loc_fscore_shore``, ``vessel_fscore``, ``fishing_fscore``,
        ``length_acc`` and ``aggregate``, floats in [0, 1].
    """
    if distance_tolerance_m <= 0 or shore_tolerance_km <= 0:
        raise ConfigError(
            f"distance_tolerance_m={distance_tolerance_m} and shore_tolerance_km="
            f"{shore_tolerance_km} must both be positive (official: 200 m and 2 km)"
        )
    pred = _scenes(*_table(predictions, PREDICTION_COLUMNS, "predictions"), predictions=True)
    truth = _scenes(*_table(ground_truth, TRUTH_COLUMNS, "ground truth"), predictions=False)
    truth = {s: t for s, t in truth.items() if s in pred}  # rule 1
    if not score_all:  # rule 2
        if drop_low_detect:
            pred = {
                s: _drop_low_matches(p, truth.get(s), distance_tolerance_m, costly_dist)
                for s, p in pred.items()
            }
        truth = {s: t.select(np.isin(t.confidence, ["HIGH", "MEDIUM"])) for s, t in truth.items()}
        truth = {s: t for s, t in truth.items() if len(t)}
    if shore_root is None:
        logger.info("no shoreline folder given: loc_fscore_shore is 0, as officially")

    counts = _Counts()
    shore_counts = _Counts()
    shore_radius_px = (shore_tolerance_km + distance_tolerance_m / 1000) * 1000 / PIXEL_SIZE_M
    for scene, t in truth.items():
        p = pred[scene]
        pi, ti = match_detections(
            p.rc, t.rc, tolerance_m=distance_tolerance_m, costly_dist=costly_dist
        )
        counts.add(p, t, pi, ti)
        if shore_root is None:
            continue
        t_near = t.select(t.shore_km <= shore_tolerance_km)
        if not len(t_near) or not len(p):
            continue
        p_near = p.select(near_shore(p.rc, load_shoreline(shore_root, scene), shore_radius_px))
        if len(p_near):
            pi, ti = match_detections(
                p_near.rc, t_near.rc, tolerance_m=distance_tolerance_m, costly_dist=costly_dist
            )
            shore_counts.add(p_near, t_near, pi, ti)

    any_near_truth = any(
        (t.shore_km <= shore_tolerance_km).any() and len(pred[s]) for s, t in truth.items()
    )
    loc_fscore = counts.f1()
    loc_fscore_shore = shore_counts.f1() if shore_root is not None and any_near_truth else 0.0
    matched_pred, matched_true = counts.matched()
    vessel_fscore = flag_f1(matched_pred.is_vessel, matched_true.is_vessel)
    is_vessel = matched_true.is_vessel == 1  # NaN (unknown) is not a vessel here
    fishing_fscore = flag_f1(matched_pred.is_fishing[is_vessel], matched_true.is_fishing[is_vessel])
    length_acc = length_accuracy(matched_pred.length_m, matched_true.length_m)
    scores = {
        "loc_fscore": loc_fscore,
        "loc_fscore_shore": loc_fscore_shore,
        "vessel_fscore": vessel_fscore,
        "fishing_fscore": fishing_fscore,
        "length_acc": length_acc,
        "aggregate": aggregate_score(
            loc_fscore, length_acc, vessel_fscore, fishing_fscore, loc_fscore_shore
        ),
    }
    return {k: float(v) for k, v in scores.items()}


def write_predictions_csv(
    path: str | Path, predictions: pd.DataFrame | Mapping[str, Sequence[Any]]
) -> Path:
    """Write detections as an xView3 submission CSV (the official columns, in order).

    The file appears under its final name only once complete.

    Args:
        path: the CSV to write.
        predictions: a table with `PREDICTION_COLUMNS` (others are left out); row and
            column in scene pixels, flags as booleans, lengths in metres.

    Returns:
        The path written.
    """
    pd = require("pandas", "science", "writing xView3 predictions")
    path = Path(path)
    table, name = _table(pd.DataFrame(predictions), PREDICTION_COLUMNS, "predictions")
    _scenes(table, name, predictions=True)  # validates values
    table = table.loc[:, list(PREDICTION_COLUMNS)].reset_index(drop=True)
    table["is_vessel"] = table["is_vessel"].astype(bool)
    table["is_fishing"] = table["is_fishing"].astype(bool)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            table.to_csv(f, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --- internals ------------------------------------------------------------------------


@dataclass
class _Scene:
    """One scene's detections as arrays, in table order."""

    rc: np.ndarray  # (N, 2) row, column
    is_vessel: np.ndarray  # (N,) float: 1.0 True, 0.0 False, NaN unknown
    is_fishing: np.ndarray  # (N,)
    length_m: np.ndarray  # (N,)
    confidence: np.ndarray  # (N,) str ("" for predictions)
    shore_km: np.ndarray  # (N,) NaN for predictions

    def __len__(self) -> int:
        return len(self.rc)

    def select(self, which: np.ndarray) -> _Scene:
        return _Scene(*(getattr(self, f)[which] for f in self.__dataclass_fields__))


@dataclass
class _Counts:
    """Running match counts, and the matched pairs for the label and length scores."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    pred: list[_Scene] = field(default_factory=list)
    true: list[_Scene] = field(default_factory=list)

    def add(self, p: _Scene, t: _Scene, pi: np.ndarray, ti: np.ndarray) -> None:
        self.tp += len(pi)
        self.fp += len(p) - len(pi)
        self.fn += len(t) - len(ti)
        self.pred.append(p.select(pi))
        self.true.append(t.select(ti))

    def f1(self) -> float:
        return f1_score(self.tp, self.fp, self.fn)

    def matched(self) -> tuple[_Scene, _Scene]:
        def cat(parts: list[_Scene]) -> _Scene:
            if not parts:
                return _empty_scene()
            fields = _Scene.__dataclass_fields__
            return _Scene(*(np.concatenate([getattr(s, f) for s in parts]) for f in fields))

        return cat(self.pred), cat(self.true)


def _empty_scene() -> _Scene:
    nan = np.zeros(0, dtype=np.float64)
    return _Scene(np.zeros((0, 2)), nan, nan, nan, np.zeros(0, dtype=object), nan)


def _drop_low_matches(p: _Scene, t: _Scene | None, tolerance_m: float, costly_dist: bool) -> _Scene:
    """The scene's predictions without those matched to LOW truth (rule 2)."""
    if t is None:
        return p
    pi, ti = match_detections(p.rc, t.rc, tolerance_m=tolerance_m, costly_dist=costly_dist)
    keep = np.ones(len(p), dtype=bool)
    keep[pi[t.confidence[ti] == "LOW"]] = False
    return p.select(keep)


def _table(source: Any, columns: Sequence[str], what: str) -> tuple[pd.DataFrame, str]:
    """A DataFrame with at least ``columns`` (read from a CSV path when given one), its name."""
    pd = require("pandas", "science", "xView3 scoring")
    name = "table"
    if isinstance(source, str | os.PathLike):
        name = str(source)
        if not Path(source).is_file():
            raise InputError(f"{source}: no such {what} CSV")
        try:
            source = pd.read_csv(source, index_col=False)
        except (ValueError, pd.errors.ParserError) as exc:
            raise InputError(f"{name}: not a readable {what} CSV ({exc})") from exc
    if not isinstance(source, pd.DataFrame):
        raise InputError(f"{what}: expected a pandas DataFrame or a CSV path, got {type(source)}")
    missing = [c for c in columns if c not in source.columns]
    if missing:
        raise InputError(
            f"{name}: the {what} lack the column(s) {missing}; xView3 {what} need {list(columns)}"
        )
    return source, name


def _flags(values: Any, column: str) -> np.ndarray:
    """Booleans, numbers, empty cells and "True"/"False" strings as floats (NaN unknown)."""
    pd = require("pandas", "science", "xView3 scoring")
    out = np.full(len(values), np.nan)
    words = {"true": 1.0, "false": 0.0, "": np.nan, "nan": np.nan}
    for i, v in enumerate(values):
        if pd.isna(v):
            continue
        if isinstance(v, str):
            if v.strip().lower() not in words:
                raise InputError(f"{column}: {v!r} is not True, False or empty")
            out[i] = words[v.strip().lower()]
        else:
            out[i] = float(v)
    return out


def _scenes(table: pd.DataFrame, name: str, *, predictions: bool) -> dict[str, _Scene]:
    """The table split by scene, in order of first appearance; rows keep table order."""
    n = len(table)
    try:
        rc = table[["detect_scene_row", "detect_scene_column"]].to_numpy(dtype=np.float64)
        length = table["vessel_length_m"].to_numpy(dtype=np.float64)
        shore_km = np.full(n, np.nan)
        if not predictions:
            shore_km = table["distance_from_shore_km"].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{name}: detect_scene_row, detect_scene_column, vessel_length_m and "
            f"distance_from_shore_km must be numbers or empty ({exc})"
        ) from exc
    is_vessel = _flags(table["is_vessel"].tolist(), f"{name}: is_vessel")
    is_fishing = _flags(table["is_fishing"].tolist(), f"{name}: is_fishing")
    if predictions:
        bad = ~np.isfinite(rc).all(1) | np.isnan(is_vessel) | np.isnan(is_fishing)
        bad |= ~np.isfinite(length)
        if bad.any():
            raise InputError(
                f"{name}: {int(bad.sum())} prediction row(s) (first: {int(np.argmax(bad))}) "
                "lack a row, column, is_vessel, is_fishing or vessel_length_m; every "
                "prediction needs all of them"
            )
        confidence = np.full(n, "", dtype=object)
    else:
        confidence = table["confidence"].astype(str).to_numpy(dtype=object)
    everything = _Scene(rc, is_vessel, is_fishing, length, confidence, shore_km)
    scene_ids = table["scene_id"].astype(str).to_numpy()
    return {s: everything.select(scene_ids == s) for s in dict.fromkeys(scene_ids)}
