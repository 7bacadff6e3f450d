"""The xView3 task: peaks found once across core borders, a perfect prediction scoring
one, thresholds chosen to maximise the official aggregate."""


import numpy as np
import pandas as pd
import pytest

from data.xview3_fixture import HEIGHT, WIDTH, write_xview3_fixture
from heads.test_xview3_head import perfect_outputs
from xtimage.errors import ConfigError
from xtimage.heads.xview3 import xview3_targets
from xtimage.metrics.xview3 import SCORE_KEYS, score_xview3
from xtimage.tasks.xview3 import (
    CANDIDATE_COLUMNS,
    XView3Collector,
    apply_thresholds,
    choose_thresholds,
)
from xtimage.tiling import RegionPlan

NAN = float("nan")


def collect(outputs: np.ndarray, scene_id: str, core: int) -> pd.DataFrame:
    """Stream ``outputs`` through a collector core window by core window (raster order)."""
    plan = RegionPlan(outputs.shape[1], outputs.shape[2], region=core)
    collector = XView3Collector(scene_id)
    for i in range(plan.num_regions):
        window = plan.core_window(i)
        window = window.intersect(type(window)(0, 0, plan.height, plan.width))
        collector.write(window, outputs[(slice(None), *window.slices())])
    return collector.finish()


def test_peaks_on_core_borders_are_found_once_with_their_attributes():
    # centres on a border, a corner and inside; cores of 16 px over a 40 x 50 image
    rows, cols = [15, 16, 31, 5, 39], [20, 31, 32, 5, 49]
    vessel, fishing, length = [1, 0, 1, 1, 0], [1, 0, 0, 1, 0], [40, 12, 300, 77, 5]
    t = xview3_targets(rows, cols, vessel, fishing, length, 40, 50, radius=4)
    outputs = perfect_outputs(t)
    whole = collect(outputs, "s", core=64)  # one window
    for core in (16, 7):
        found = collect(outputs, "s", core=core)
        assert list(found.columns) == list(CANDIDATE_COLUMNS)
        pd.testing.assert_frame_equal(found, whole)
    found = whole.sort_values("detect_scene_row", kind="stable").reset_index(drop=True)
    order = np.argsort(rows, kind="stable")
    assert found["detect_scene_row"].tolist() == [rows[i] for i in order]
    assert found["detect_scene_column"].tolist() == [cols[i] for i in order]
    assert found["score"].tolist() == pytest.approx([1.0] * 5, abs=1e-5)
    assert (found["vessel_p"] > 0.5).tolist() == [bool(vessel[i]) for i in order]
    assert (found["fishing_p"] > 0.5).tolist() == [bool(fishing[i]) for i in order]
    assert found["vessel_length_m"].tolist() == pytest.approx([length[i] for i in order], 1e-5)
    with pytest.raises(ConfigError):
        XView3Collector("s").write(type_window(), np.zeros((3, 4, 4), np.float32))


def type_window():
    from xtimage.window import Window

    return Window(0, 0, 4, 4)


def test_a_perfect_prediction_of_the_fixture_scores_one(tmp_path):
    fx = write_xview3_fixture(tmp_path)
    labels = pd.read_csv(fx.labels_csv)
    # The fixture's scored (HIGH/MEDIUM) vessels are all non-fishing, which makes the
    # fishing F1 0 for any prediction (positive class True): make one of them fishing.
    scored_vessel = (labels["is_vessel"] == True) & (labels["confidence"] != "LOW")  # noqa: E712
    assert (labels.loc[scored_vessel, "is_fishing"] == False).all()  # noqa: E712
    labels.loc[scored_vessel.idxmax(), "is_fishing"] = True
    near = labels["distance_from_shore_km"] <= 2
    assert (near & (labels["confidence"] != "LOW")).any()  # the shore score is exercised
    preds = []
    for scene_id in fx.scene_ids:
        mine = labels[labels["scene_id"] == scene_id]
        t = xview3_targets(
            mine["detect_scene_row"],
            mine["detect_scene_column"],
            mine["is_vessel"].map({True: 1.0, False: 0.0}),
            mine["is_fishing"].map({True: 1.0, False: 0.0}),
            mine["vessel_length_m"],
            HEIGHT,
            WIDTH,
        )
        candidates = collect(perfect_outputs(t), scene_id, core=96)
        assert len(candidates) == len(mine)
        preds.append(apply_thresholds(candidates, {"center": 0.5, "vessel": 0.5, "fishing": 0.5}))
    scores = score_xview3(pd.concat(preds), labels, fx.shoreline_root)
    assert set(scores) == set(SCORE_KEYS)
    assert scores == pytest.approx(dict.fromkeys(SCORE_KEYS, 1.0), abs=1e-6)


def test_choose_thresholds_finds_the_separating_values():
    # 6 true objects (score 0.8), 4 false alarms (0.3) far away; vessels have vessel_p 0.7,
    # non-vessels 0.45; fishing 0.9 vs 0.2
    truth = pd.DataFrame(
        {
            "detect_scene_row": [100 * i for i in range(6)],
            "detect_scene_column": 50,
            "scene_id": "a",
            "is_vessel": [True, True, False, True, False, True],
            "is_fishing": [True, False, None, False, None, True],
            "vessel_length_m": [100.0, 50.0, 20.0, 80.0, 10.0, 30.0],
            "confidence": "HIGH",
            "distance_from_shore_km": 50.0,
        }
    )
    true_part = pd.DataFrame(
        {
            "detect_scene_row": truth["detect_scene_row"] + 1,
            "detect_scene_column": 50,
            "scene_id": "a",
            "score": 0.8,
            "vessel_p": np.where(truth["is_vessel"], 0.7, 0.45),
            "fishing_p": np.where(truth["is_fishing"] == True, 0.9, 0.2),  # noqa: E712
            "vessel_length_m": truth["vessel_length_m"],
        }
    )
    false_part = true_part.iloc[:4].assign(detect_scene_column=500, score=0.3)
    candidates = pd.concat([true_part, false_part], ignore_index=True)
    chosen, scores = choose_thresholds(candidates, truth)
    assert 0.3 < chosen["center"] <= 0.8
    assert 0.45 < chosen["vessel"] <= 0.7
    assert 0.2 < chosen["fishing"] <= 0.9
    assert scores == score_xview3(apply_thresholds(candidates, chosen), truth)
    # loc, vessel, fishing, length perfect; no shoreline: shore 0 -> aggregate 4 / 5
    assert scores["aggregate"] == pytest.approx(0.8)
    worse = {"center": 0.25, "vessel": 0.4, "fishing": 0.5}
    assert score_xview3(apply_thresholds(candidates, worse), truth)["aggregate"] < 0.8
