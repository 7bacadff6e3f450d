"""xView3-SAR score: equal to the official scorer on committed cases, and by hand per part.

``xview3_cases/expected.json`` holds the official scorer's numbers (DIUx-xView/
xview3-reference ``reference/metric.py``, run by ``xview3_cases/make_expected.py``).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xtimage.errors import InputError
from xtimage.metrics.xview3 import (
    PREDICTION_COLUMNS,
    SCORE_KEYS,
    aggregate_score,
    f1_score,
    flag_f1,
    length_accuracy,
    match_detections,
    near_shore,
    score_xview3,
    write_predictions_csv,
)

CASES = Path(__file__).parent / "xview3_cases"
EXPECTED = json.loads((CASES / "expected.json").read_text())["runs"]


def score_case(run: dict) -> dict[str, float]:
    case, options = CASES / run["case"], run["options"]
    return score_xview3(
        case / "predictions.csv",
        case / "labels.csv",
        case / "shoreline" if options["shore"] else None,
        costly_dist=options["costly_dist"],
        drop_low_detect=options["drop_low_detect"],
        score_all=options["score_all"],
    )


@pytest.mark.parametrize("name", [n for n, r in EXPECTED.items() if "error" not in r["scores"]])
def test_equals_the_official_scorer(name):
    run = EXPECTED[name]
    ours = score_case(run)
    assert tuple(ours) == SCORE_KEYS
    for key, official in run["scores"].items():
        assert ours[key] == pytest.approx(official, abs=1e-9, rel=0), key


def test_where_the_official_scorer_fails_remaining_truth_is_missed():
    # Scene a: the only prediction matches LOW truth and is dropped; its HIGH truth
    # remains (the official scorer raises here). Scene b: one hit.
    run = EXPECTED["low_drops_scene"]
    assert run["scores"]["error"].startswith("ValueError")
    ours = score_case(run)
    f1 = 2 * 1.0 * 0.5 / 1.5  # tp 1, fp 0, fn 1
    assert ours["loc_fscore"] == pytest.approx(f1)
    assert ours["vessel_fscore"] == 1.0 and ours["length_acc"] == 1.0
    assert ours["aggregate"] == pytest.approx(f1 * 3 / 5)


def brute_force_matches(pred, true, tolerance_m, costly):
    """The most pairs within tolerance, by enumerating every assignment (tiny inputs)."""
    dist = np.sqrt(((pred[:, None] - true[None]) ** 2).sum(-1)) * 10.0
    cost = np.where(dist > tolerance_m, 99999990.0, dist) if costly else dist
    n, m = dist.shape
    best = None
    for perm in itertools.permutations(range(max(n, m)), min(n, m)):
        pairs = (
            [(i, j) for i, j in zip(range(n), perm, strict=False)]
            if n <= m
            else [(i, j) for j, i in zip(range(m), perm, strict=False)]
        )
        total = sum(cost[i, j] for i, j in pairs)
        if best is None or total < best[0]:
            best = (total, pairs)
    return sorted((i, j) for i, j in best[1] if dist[i, j] < tolerance_m)


def test_match_is_strictly_below_200_m():
    true = np.array([[0.0, 0.0]])
    for offset, hit in [(19.99, True), (20.0, False), (20.000001, False), (0.0, True)]:
        pi, _ = match_detections(np.array([[offset, 0.0]]), true)
        assert (len(pi) == 1) is hit, offset
    pi, _ = match_detections(np.array([[12.0, 16.0]]), true)  # 3-4-5: exactly 20 px
    assert len(pi) == 0
    empty = match_detections(np.zeros((0, 2)), true)
    assert len(empty[0]) == len(empty[1]) == 0


def test_costly_distances_maximise_matches_where_plain_cost_does_not():
    true = np.array([[100.0, 100.0], [100.0, 119.0]])
    pred = np.array([[100.0, 100.0], [118.0, 95.0]])  # plain sum: 0 + 30 px < 19 + 18.7 px
    plain = match_detections(pred, true, costly_dist=False)
    costly = match_detections(pred, true, costly_dist=True)
    assert sorted(zip(*plain, strict=True)) == [(0, 0)]
    assert sorted(zip(*costly, strict=True)) == [(0, 1), (1, 0)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("costly", [True, False])
def test_match_counts_equal_brute_force(seed, costly):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, 40, size=(rng.integers(1, 6), 2)).astype(float)
    true = rng.integers(0, 40, size=(rng.integers(1, 6), 2)).astype(float)
    pi, ti = match_detections(pred, true, costly_dist=costly)
    expected = brute_force_matches(pred, true, 200.0, costly)
    # Equal-cost optima may pair differently, never with a different count.
    assert len(pi) == len(expected)
    assert len(set(pi)) == len(pi) and len(set(ti)) == len(ti)
    assert (np.hypot(*(pred[pi] - true[ti]).T) * 10 < 200).all()


def test_near_shore_reach_is_inclusive_and_ignores_zero_distance():
    shore = np.array([[1000.0, 400.0], [1000.0, 800.0], [0.0, 0.0]])
    points = np.array(
        [
            [1132.0, 576.0],  # exactly 220 px from (1000, 400)
            [1220.5, 800.0],  # 220.5 px
            [1000.0, 800.0],  # on a point, next point 400 px away: not near (quirk)
            [1000.0, 600.0],  # 200 px from two points
            [0.0, 0.0],  # on a point, alone
        ]
    )
    np.testing.assert_array_equal(near_shore(points, shore, 220.0), [1, 0, 0, 1, 0])
    # A second contour point 100 px away makes the on-contour point near.
    more = np.vstack([shore, [[1000.0, 900.0]]])
    assert near_shore(points[2:3], more, 220.0)[0]
    assert not near_shore(points, np.zeros((0, 2)), 220.0).any()


def test_near_shore_equals_plain_loops():
    rng = np.random.default_rng(0)
    shore = rng.integers(0, 100, size=(60, 2)).astype(float)
    points = np.vstack([rng.integers(0, 100, size=(40, 2)), shore[:5]]).astype(float)
    expected = [
        any(0 < np.hypot(*(p - s)) <= 12.0 for s in shore) for p in points
    ]  # loops over every pair
    np.testing.assert_array_equal(near_shore(points, shore, 12.0), expected)


def test_f1_and_flag_f1_by_hand():
    assert f1_score(3, 1, 2) == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert f1_score(0, 0, 0) == 0.0 and f1_score(0, 5, 5) == 0.0
    nan = np.nan
    pred = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    true = np.array([1.0, 0.0, 1.0, 0.0, nan, nan])
    # Known pairs: tp 1, fp 1 (true False, said True), fn 1, tn 1 -> P = R = 0.5.
    assert flag_f1(pred, true) == pytest.approx(0.5)
    assert flag_f1(pred[4:], true[4:]) == 0.0


def test_length_accuracy_by_hand():
    # Caps at 500: |450 - 500| / 500 = 0.1; |500 - 500| = 0; |40 - 20| / 20 = 1; NaN skipped.
    pred = np.array([450.0, 800.0, 40.0, 10.0])
    true = np.array([600.0, 700.0, 20.0, np.nan])
    assert length_accuracy(pred, true) == pytest.approx(1 - (0.1 + 0 + 1) / 3)
    assert length_accuracy(np.array([100.0]), np.array([10.0])) == 0.0  # error 9, capped at 1
    assert length_accuracy(np.array([1.0]), np.array([np.nan])) == 0.0


def test_aggregate_by_hand():
    assert aggregate_score(0.8, 0.5, 0.9, 0.7, 0.4) == pytest.approx(0.8 * 3.5 / 5)
    assert aggregate_score(0.0, 1, 1, 1, 1) == 0.0


def frame(rows, columns):
    return pd.DataFrame(rows, columns=columns)


TRUTH = [
    "detect_scene_row",
    "detect_scene_column",
    "scene_id",
    "is_vessel",
    "is_fishing",
    "vessel_length_m",
    "confidence",
    "distance_from_shore_km",
]


def test_whole_score_by_hand(tmp_path):
    truth = frame(
        [
            [100, 100, "s1", True, True, 100.0, "HIGH", 1.0],
            [500, 500, "s1", True, False, 50.0, "MEDIUM", 5.0],
            [900, 900, "s1", False, np.nan, np.nan, "HIGH", 5.0],
            [300, 300, "s1", True, np.nan, 20.0, "LOW", 5.0],
            [100, 100, "s2", True, True, 10.0, "HIGH", 1.0],  # s2 has no predictions
        ],
        TRUTH,
    )
    preds = frame(
        [
            [103, 104, "s1", True, True, 110.0],  # hit (5 px), near shore
            [505, 500, "s1", True, True, 40.0],  # hit, fishing wrong
            [950, 900, "s1", True, False, 30.0],  # 50 px: a false alarm
            [301, 300, "s1", True, False, 30.0],  # matches LOW truth: dropped
        ],
        list(PREDICTION_COLUMNS),
    )
    shore = tmp_path / "shore"
    shore.mkdir()
    contours = np.empty(1, dtype=object)
    contours[0] = np.array([[100.0, 200.0]])
    np.save(shore / "s1_shoreline.npy", contours, allow_pickle=True)
    scores = score_xview3(preds, truth, shore)
    # Detection: tp 2, fp 1, fn 1 (s2 ignored, LOW match dropped) -> P = R = 2/3.
    assert scores["loc_fscore"] == pytest.approx(2 / 3)
    # Vessel: both hits are vessels called vessels -> tp 2 -> F1 1.
    assert scores["vessel_fscore"] == pytest.approx(1.0)
    # Fishing: tp 1 (first), fp 1 (second: False called True) -> P 1/2, R 1 -> 2/3.
    assert scores["fishing_fscore"] == pytest.approx(2 / 3)
    # Length: |110 - 100| / 100 = 0.1, |40 - 50| / 50 = 0.2 -> 1 - 0.15.
    assert scores["length_acc"] == pytest.approx(0.85)
    # Shore: truth (100, 100) within 2 km; predictions within 220 px of (100, 200): the
    # first only -> one hit, nothing else -> F1 1.
    assert scores["loc_fscore_shore"] == pytest.approx(1.0)
    assert scores["aggregate"] == pytest.approx(2 / 3 * (1 + 0.85 + 1 + 2 / 3 + 1) / 5)
    # Without the shoreline folder the shore score is 0, as officially.
    assert score_xview3(preds, truth)["loc_fscore_shore"] == 0.0


def test_frames_and_csv_paths_score_the_same_and_predictions_round_trip(tmp_path):
    case = CASES / "random_sparse"
    preds = pd.read_csv(case / "predictions.csv")
    truth = pd.read_csv(case / "labels.csv")
    from_paths = score_case(EXPECTED["random_sparse"])
    assert score_xview3(preds, truth, case / "shoreline") == from_paths
    written = write_predictions_csv(tmp_path / "out" / "submission.csv", preds.assign(extra=1))
    again = pd.read_csv(written)
    assert list(again.columns) == list(PREDICTION_COLUMNS)
    assert [p.name for p in written.parent.iterdir()] == ["submission.csv"]  # no temp left
    pd.testing.assert_frame_equal(again, preds)
    assert score_xview3(written, case / "labels.csv", case / "shoreline") == from_paths


def test_user_errors_name_the_problem(tmp_path):
    case = CASES / "shore"
    preds = pd.read_csv(case / "predictions.csv")
    with pytest.raises(InputError, match="is_fishing"):
        score_xview3(preds.drop(columns=["is_fishing"]), case / "labels.csv")
    with pytest.raises(InputError, match="prediction row"):
        score_xview3(preds.assign(vessel_length_m=np.nan), case / "labels.csv")
    with pytest.raises(InputError, match="no such"):
        score_xview3(tmp_path / "missing.csv", case / "labels.csv")
    with pytest.raises(InputError, match="_shoreline.npy"):
        score_xview3(preds, case / "labels.csv", tmp_path)  # no shoreline files there
    with pytest.raises(InputError, match="maybe"):
        score_xview3(preds.assign(is_vessel="maybe"), case / "labels.csv")
