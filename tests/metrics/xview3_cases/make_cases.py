"""Write the xView3 scoring cases: predictions, labels and shoreline files per case.

Each case folder holds ``predictions.csv`` (the challenge's submission columns),
``labels.csv`` (the public label files' full header) and ``shoreline/{scene_id}_shoreline.npy``
(an object array of (n, 2) row/col contour arrays, the official format). ``cases.json``
lists the scoring runs: a folder and the scorer's options. ``make_expected.py`` then runs
the official scorer on every run and writes ``expected.json``.

Coordinates are in pixels of a notional 2,000 x 2,000 scene (10 m pixels); the cases need
no imagery. Everything is deterministic (fixed seeds), so running this again rewrites
identical files.

Usage: ``python tests/metrics/xview3_cases/make_cases.py``
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent

LABEL_COLUMNS = [
    "detect_lat",
    "detect_lon",
    "vessel_length_m",
    "source",
    "detect_scene_row",
    "detect_scene_column",
    "is_vessel",
    "is_fishing",
    "distance_from_shore_km",
    "scene_id",
    "confidence",
    "top",
    "left",
    "bottom",
    "right",
    "detect_id",
]
PREDICTION_COLUMNS = [
    "detect_scene_row",
    "detect_scene_column",
    "scene_id",
    "is_vessel",
    "is_fishing",
    "vessel_length_m",
]
OFFICIAL = {"shore": True, "costly_dist": True, "drop_low_detect": True, "score_all": False}


def scene_name(i: int) -> str:
    """A scene id shaped like the real ones (16 hex digits and a letter)."""
    return f"{(0x9E3779B97F4A7C15 * (i + 1)) % (1 << 64):016x}v"


def label(
    scene: str,
    row: float,
    col: float,
    *,
    vessel=True,
    fishing=False,
    length=50.0,
    shore_km=10.0,
    confidence="HIGH",
    source="manual",
) -> dict:
    """One label row; None means an empty cell (NaN once read)."""
    return {
        "scene_id": scene,
        "detect_scene_row": row,
        "detect_scene_column": col,
        "is_vessel": vessel,
        "is_fishing": fishing,
        "vessel_length_m": length,
        "distance_from_shore_km": shore_km,
        "confidence": confidence,
        "source": source,
    }


def pred(scene: str, row: float, col: float, *, vessel=True, fishing=False, length=50.0) -> dict:
    return {
        "scene_id": scene,
        "detect_scene_row": row,
        "detect_scene_column": col,
        "is_vessel": vessel,
        "is_fishing": fishing,
        "vessel_length_m": length,
    }


def write_case(
    name: str,
    labels: list[dict],
    preds: list[dict],
    shorelines: dict[str, list[np.ndarray]],
) -> None:
    """Write one case folder; label rows get the remaining real columns filled in."""
    folder = HERE / name
    (folder / "shoreline").mkdir(parents=True, exist_ok=True)
    gt = pd.DataFrame(labels, columns=LABEL_COLUMNS)
    if len(gt):
        row = gt["detect_scene_row"].astype(float)
        col = gt["detect_scene_column"].astype(float)
        gt["detect_lat"] = (43.0 - row * 9e-5).round(6)
        gt["detect_lon"] = (3.0 + col * 1.2e-4).round(6)
        gt["top"], gt["bottom"] = row - 3, row + 3
        gt["left"], gt["right"] = col - 3, col + 3
        gt["detect_id"] = [f"{s}_{i}" for i, s in enumerate(gt["scene_id"])]
    gt.to_csv(folder / "labels.csv", index=False)
    pd.DataFrame(preds, columns=PREDICTION_COLUMNS).to_csv(folder / "predictions.csv", index=False)
    for scene, contours in shorelines.items():
        array = np.empty(len(contours), dtype=object)
        for i, c in enumerate(contours):
            array[i] = np.asarray(c, dtype=np.float64).reshape(-1, 2)
        np.save(folder / "shoreline" / f"{scene}_shoreline.npy", array, allow_pickle=True)


def case_near_threshold() -> None:
    """Pairs at distances just under, at and just over 200 m (20 px); matching is strict <."""
    s = scene_name(0)
    offsets = [
        (19.99, 0.0),  # 199.9 m: match
        (20.0, 0.0),  # exactly 200 m: no match
        (12.0, 16.0),  # 20 px by a 3-4-5 triangle: no match
        (0.0, 19.999999),  # match
        (0.0, 20.000001),  # no match
        (14.0, 14.0),  # 19.80 px: match
        (16.0, 12.0),  # 20 px: no match
        (-15.0, 13.0),  # 19.85 px: match
    ]
    labels, preds = [], []
    for i, (dr, dc) in enumerate(offsets):
        r, c = 100.0 + 200 * i, 300.0 + 50 * i
        labels.append(label(s, r, c, vessel=i % 2 == 0, fishing=i % 3 == 0, length=20.0 + 5 * i))
        preds.append(pred(s, r + dr, c + dc, vessel=True, fishing=i % 2 == 0, length=30.0 + 4 * i))
    write_case("near_threshold", labels, preds, {s: []})


def case_low_confidence() -> None:
    """LOW truth: matched predictions are dropped first, unmatched LOW truth is no miss."""
    a, b, c = scene_name(1), scene_name(2), scene_name(3)
    labels = [
        # Scene a: a LOW label 3 px from a prediction that is also 10 px from a HIGH label.
        label(a, 500, 500, confidence="LOW"),
        label(a, 500, 513, confidence="HIGH", length=80.0),
        # A LOW label with nothing near: not a miss.
        label(a, 1500, 1500, confidence="LOW"),
        # MEDIUM truth counts like HIGH.
        label(a, 900, 900, confidence="MEDIUM", vessel=False, fishing=None, length=12.0),
        label(a, 1200, 300, confidence="HIGH", vessel=True, fishing=True, length=25.0),
        # Scene b: two preds, a LOW and a HIGH label crossing.
        label(b, 100, 100, confidence="LOW"),
        label(b, 100, 110, confidence="HIGH", fishing=True, length=40.0),
        # Scene c: LOW truth only, so the scene leaves the ground truth and its
        # unmatched predictions are not false positives.
        label(c, 700, 700, confidence="LOW"),
    ]
    preds = [
        pred(a, 500, 503, length=70.0),
        pred(a, 902, 899, vessel=False, fishing=False, length=15.0),
        pred(a, 1210, 305, vessel=True, fishing=True, length=20.0),
        pred(a, 40, 1900),  # false positive
        pred(b, 100, 102, length=33.0),
        pred(b, 101, 109, fishing=True, length=44.0),
        pred(c, 701, 701),
        pred(c, 1800, 100),
    ]
    write_case("low_confidence", labels, preds, {a: [], b: [], c: []})


def case_nan_labels() -> None:
    """Unknown is_vessel, is_fishing, length and shore distance in matched truth."""
    s = scene_name(4)
    rows = [
        dict(vessel=None, fishing=None, length=None, shore_km=None),
        dict(vessel=True, fishing=None, length=100.0, shore_km=1.0),
        dict(vessel=False, fishing=True, length=None, shore_km=3.0),
        dict(vessel=False, fishing=None, length=40.0, shore_km=None),
        dict(vessel=True, fishing=False, length=None, shore_km=0.5),
        dict(vessel=True, fishing=True, length=60.0, shore_km=1.9),
        dict(vessel=None, fishing=True, length=30.0, shore_km=2.5),
    ]
    labels, preds = [], []
    for i, kw in enumerate(rows):
        r, c = 200.0 + 150 * i, 1000.0
        labels.append(label(s, r, c, **kw))
        preds.append(pred(s, r + 3, c - 2, vessel=i % 2 == 1, fishing=i % 3 != 1, length=45.0))
    shore = [np.array([[200.0 + 150 * i, 1100.0] for i in range(7)])]
    write_case("nan_labels", labels, preds, {s: shore})


def case_nan_columns() -> None:
    """Whole label columns empty (read as float NaN): no vessel, fishing or length pairs."""
    s = scene_name(5)
    labels = [
        label(s, 100 + 100 * i, 100, vessel=None, fishing=None, length=None) for i in range(4)
    ]
    preds = [pred(s, 101 + 100 * i, 102) for i in range(3)]
    write_case("nan_columns", labels, preds, {s: []})


def case_empty_scenes() -> None:
    """Scenes that exist on one side only, or whose truth is all far away."""
    s = [scene_name(10 + i) for i in range(5)]
    labels = [
        label(s[0], 100, 100),
        label(s[0], 300, 300, vessel=False, fishing=None, length=8.0),
        # s[1]: predictions only, no truth: ignored.
        # s[2]: truth only, no predictions: the scene is not scored at all.
        label(s[2], 500, 500),
        label(s[2], 600, 600),
        # s[3]: LOW truth only.
        label(s[3], 700, 700, confidence="LOW"),
        # s[4]: truth far from every prediction.
        label(s[4], 100, 100, shore_km=1.0),
        label(s[4], 200, 200, shore_km=0.2),
    ]
    preds = [
        pred(s[0], 104, 99),
        pred(s[0], 301, 305, vessel=True),
        pred(s[1], 50, 50),
        pred(s[1], 60, 60),
        pred(s[3], 1000, 1000),
        pred(s[4], 1500, 1500),
    ]
    shore = {s[0]: [], s[1]: [], s[2]: [], s[3]: [], s[4]: [np.array([[120.0, 120.0]])]}
    write_case("empty_scenes", labels, preds, shore)


def case_shore() -> None:
    """Near-shore selection: 2.2 km to contour points, inclusive; distance 0 quirk."""
    a, b, c, d = (scene_name(20 + i) for i in range(4))
    contour_a = [
        np.array([[1000.0, 0.0], [1000.0, 400.0], [1000.0, 800.0]]),
        np.array([[0.0, 1900.0], [300.0, 1900.0]]),
    ]
    labels = [
        # Scene a: truth at shore distance 2.0 km (included), 2.0001 km (excluded), NaN.
        label(a, 1132, 576, shore_km=2.0),  # pred below at exactly 220 px from (1000, 400)
        label(a, 780, 400, shore_km=2.0001),
        label(a, 1221, 800, shore_km=0.1, vessel=False, fishing=None),
        label(a, 1000, 0, shore_km=None),
        label(a, 150, 1900, shore_km=0.0),
        label(a, 1500, 1500, shore_km=9.0),
        # Scene b: near-shore truth, but every prediction is far from the contour.
        label(b, 100, 100, shore_km=0.5),
        label(b, 900, 900, shore_km=5.0),
        # Scene c: near-shore predictions but no near-shore truth.
        label(c, 100, 100, shore_km=3.0),
        # Scene d: empty contour file; near-shore truth.
        label(d, 100, 100, shore_km=1.0),
    ]
    preds = [
        pred(a, 1132, 576),  # exactly 220 px from (1000, 400): near
        pred(a, 781, 402),  # 219.04 px from (1000, 400): near
        pred(a, 1220.5, 800),  # 220.5 px from (1000, 800): not near
        pred(a, 1000, 0),  # on a contour point, the next is 400 px away: not near (quirk)
        pred(a, 150, 1901),  # near
        pred(a, 0, 1900),  # on a contour point, the next is 300 px away: not near
        pred(a, 1500, 1505),
        pred(a, 1700, 200),  # false positive, far from shore
        pred(b, 101, 101),
        pred(b, 905, 902),
        pred(c, 102, 99),
        pred(c, 1001, 1001),
        pred(d, 100, 104),
    ]
    shore = {
        a: contour_a,
        b: [np.array([[1900.0, 1900.0], [1950.0, 1950.0]])],
        c: [np.array([[1000.0, 1000.0], [1000.0, 1100.0]])],
        d: [],
    }
    write_case("shore", labels, preds, shore)


def case_low_drops_scene() -> None:
    """Every prediction of a scene matches LOW truth and is dropped; HIGH truth remains.

    The official scorer fails here (it builds a distance matrix from no predictions);
    xtimage counts that scene's remaining truth as misses.
    """
    a, b = scene_name(6), scene_name(7)
    labels = [
        label(a, 100, 100, confidence="LOW"),
        label(a, 800, 800, confidence="HIGH"),
        label(b, 100, 100),
    ]
    preds = [pred(a, 101, 101), pred(b, 102, 100)]
    write_case("low_drops_scene", labels, preds, {a: [], b: []})


def case_long_objects() -> None:
    """Lengths above 500 m are capped on both sides before the relative error."""
    s = scene_name(30)
    pairs = [(600.0, 450.0), (700.0, 800.0), (480.0, 520.0), (120.0, 100.0), (510.0, 20.0)]
    labels, preds = [], []
    for i, (true, guess) in enumerate(pairs):
        labels.append(label(s, 100 + 200 * i, 100, length=true))
        preds.append(pred(s, 100 + 200 * i, 105, length=guess))
    write_case("long_objects", labels, preds, {s: []})


def case_length_error_cap() -> None:
    """A mean relative length error above 1 gives length accuracy 0."""
    s = scene_name(31)
    pairs = [(10.0, 40.0), (20.0, 20.0), (5.0, 15.0)]
    labels = [label(s, 100 + 200 * i, 100, length=t) for i, (t, _) in enumerate(pairs)]
    preds = [pred(s, 100 + 200 * i, 103, length=g) for i, (_, g) in enumerate(pairs)]
    write_case("length_error_cap", labels, preds, {s: []})


def case_hungarian() -> None:
    """Plain minimum-sum assignment makes one match here; the costly distances make two."""
    s = scene_name(40)
    labels = [label(s, 100, 100), label(s, 100, 119, vessel=False, fishing=None)]
    preds = [pred(s, 100, 100), pred(s, 118, 95, vessel=False)]
    # A second cluster: three predictions compete for two labels.
    labels += [label(s, 1000, 1000, fishing=True), label(s, 1000, 1016)]
    preds += [pred(s, 1000, 1008, fishing=True), pred(s, 1000, 992), pred(s, 1000, 1024)]
    write_case("hungarian", labels, preds, {s: [np.array([[1000.0, 900.0]])]})


def case_empty_predictions() -> None:
    """A submission with no rows scores 0 everywhere."""
    s = scene_name(50)
    write_case("empty_predictions", [label(s, 100, 100)], [], {s: []})


def random_case(name: str, seed: int, n_scenes: int, n_objects: int, jitter: float) -> None:
    """Many objects, random labels, confidences, NaNs, lengths and shorelines."""
    rng = np.random.default_rng(seed)
    labels, preds, shorelines = [], [], {}
    for k in range(n_scenes):
        s = scene_name(100 * seed + k)
        # Shoreline: a few random polylines, sampled every 5 px.
        contours = []
        for _ in range(rng.integers(0, 4)):
            start = rng.uniform(0, 2000, size=2)
            steps = rng.normal(0, 5, size=(rng.integers(5, 80), 2))
            contours.append(np.clip(start + np.cumsum(steps, axis=0), 0, 1999).round(1))
        shorelines[s] = contours
        # Integer truth positions on a coarse grid make equal distances (ties) common.
        rc = rng.integers(0, 400, size=(n_objects, 2)) * 5
        for r, c in rc:
            vessel = rng.choice([True, False, None], p=[0.6, 0.25, 0.15])
            fishing = rng.choice([True, False, None], p=[0.3, 0.5, 0.2]) if vessel else None
            length = None if rng.random() < 0.15 else float(rng.choice([rng.uniform(5, 300), 650]))
            labels.append(
                label(
                    s,
                    int(r),
                    int(c),
                    vessel=vessel,
                    fishing=fishing,
                    length=None if length is None else round(length, 3),
                    shore_km=None if rng.random() < 0.05 else round(rng.uniform(0, 5), 3),
                    confidence=rng.choice(["HIGH", "MEDIUM", "LOW"], p=[0.65, 0.15, 0.2]),
                    source=rng.choice(["manual", "ais", "ais/manual"]),
                )
            )
            if rng.random() < 0.8:
                # A detector that is right 75% of the time, lengths within ~25%.
                dr, dc = rng.normal(0, jitter, size=2)
                right = rng.random(2) < 0.75
                guess_vessel = bool(vessel) if vessel is not None else bool(rng.random() < 0.5)
                guess_fishing = bool(fishing) if fishing is not None else bool(rng.random() < 0.3)
                guess_length = (length or 60.0) * float(np.exp(rng.normal(0, 0.25)))
                preds.append(
                    pred(
                        s,
                        int(round(r + dr)),
                        int(round(c + dc)),
                        vessel=guess_vessel == right[0],
                        fishing=guess_fishing == right[1],
                        length=round(guess_length, 2),
                    )
                )
        for _ in range(n_objects // 5):  # false alarms
            preds.append(
                pred(
                    s,
                    int(rng.integers(0, 2000)),
                    int(rng.integers(0, 2000)),
                    vessel=bool(rng.random() < 0.5),
                    fishing=bool(rng.random() < 0.5),
                    length=round(float(rng.uniform(5, 300)), 2),
                )
            )
    order = rng.permutation(len(preds))  # submissions need not be grouped by scene
    write_case(name, labels, [preds[i] for i in order], shorelines)


def main() -> None:
    case_near_threshold()
    case_low_confidence()
    case_nan_labels()
    case_nan_columns()
    case_empty_scenes()
    case_shore()
    case_low_drops_scene()
    case_long_objects()
    case_length_error_cap()
    case_hungarian()
    case_empty_predictions()
    random_case("random_sparse", seed=1, n_scenes=4, n_objects=40, jitter=8.0)
    random_case("random_dense", seed=2, n_scenes=3, n_objects=120, jitter=12.0)
    folders = [
        "near_threshold",
        "low_confidence",
        "nan_labels",
        "nan_columns",
        "empty_scenes",
        "shore",
        "low_drops_scene",
        "long_objects",
        "length_error_cap",
        "hungarian",
        "empty_predictions",
        "random_sparse",
        "random_dense",
    ]
    runs = {name: {"case": name, "options": OFFICIAL} for name in folders}
    runs["hungarian_plain_distance"] = {
        "case": "hungarian",
        "options": {**OFFICIAL, "costly_dist": False},
    }
    runs["random_dense_no_shore"] = {
        "case": "random_dense",
        "options": {**OFFICIAL, "shore": False},
    }
    runs["random_dense_keep_low_matches"] = {
        "case": "random_dense",
        "options": {**OFFICIAL, "drop_low_detect": False},
    }
    runs["random_sparse_score_all"] = {
        "case": "random_sparse",
        "options": {**OFFICIAL, "score_all": True},
    }
    (HERE / "cases.json").write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
