"""xView3 head: targets, loss against a plain reference, peaks across core borders, a
perfect prediction of the fixture scoring 1.0 officially, threshold choice."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from data.xview3_fixture import HEIGHT, WIDTH, write_xview3_fixture
from xtimage.data.xview3 import scene_bands
from xtimage.encoders.region import FeatureInfo
from xtimage.errors import ConfigError, InputError
from xtimage.heads.xview3 import LENGTH_SCALE, XView3Head, xview3_targets
from xtimage.metrics.xview3 import SCORE_KEYS, score_xview3
from xtimage.tasks.xview3 import (
    CANDIDATE_COLUMNS,
    XView3Collector,
    apply_thresholds,
    choose_thresholds,
)
from xtimage.tiling import RegionPlan

NAN = float("nan")


def perfect_outputs(targets: dict[str, torch.Tensor]) -> np.ndarray:
    """Raw outputs (4, H, W) whose decoding is the targets: logits of the centre map,
    +-20 logits of the labels, the length map as it is."""
    center = targets["center"][0].double().clamp(1e-6, 1 - 1e-6)
    logit = torch.log(center / (1 - center))
    flags = [20 * (2 * targets[k][0] - 1) for k in ("vessel", "fishing")]
    return torch.stack([logit.float(), *flags, targets["length"][0]]).numpy()


def collect(outputs: np.ndarray, scene_id: str, core: int) -> pd.DataFrame:
    """Stream ``outputs`` through a collector core window by core window (raster order)."""
    plan = RegionPlan(outputs.shape[1], outputs.shape[2], region=core)
    collector = XView3Collector(scene_id)
    for i in range(plan.num_regions):
        window = plan.core_window(i)
        window = window.intersect(type(window)(0, 0, plan.height, plan.width))
        collector.write(window, outputs[(slice(None), *window.slices())])
    return collector.finish()


def test_targets_peak_disk_and_unknown_labels():
    t = xview3_targets(
        rows=[10.7, 30],
        cols=[12, 30],
        is_vessel=[1, NAN],
        is_fishing=[0, NAN],
        length_m=[50.0, NAN],
        height=40,
        width=48,
        radius=4,
    )
    assert t["center"].shape == (1, 40, 48) and t["vessel_weight"].shape == (40, 48)
    assert t["center"][0, 10, 12] == 1 and t["center"][0, 30, 30] == 1
    sigma = 4 / 3
    assert t["center"][0, 10, 14].item() == pytest.approx(math.exp(-4 / (2 * sigma**2)), 1e-6)
    assert t["center"][0, 10, 17] == 0  # outside the disk
    assert (t["center"] == 1).sum() == 2
    # the first detection: known flags and length in its disk, 13 x ... pixels of radius 4
    disk = t["vessel_weight"][6:15, 8:17]
    assert disk.sum() == sum(1 for y in range(-4, 5) for x in range(-4, 5) if x * x + y * y <= 16)
    assert t["vessel"][0, 10, 12] == 1 and t["fishing"][0, 10, 12] == 0
    assert t["fishing_weight"][10, 12] == 1
    assert t["length"][0, 10, 12] == pytest.approx(50 / LENGTH_SCALE)
    # the second: every label unknown, so nothing but the centre is trained there
    for name in ("vessel", "fishing", "length"):
        assert t[f"{name}_weight"][26:35, 26:35].sum() == 0
    with pytest.raises(InputError):
        xview3_targets([1], [1, 2], [1], [1], [1], 8, 8)
    with pytest.raises(ConfigError):
        xview3_targets([1], [1], [1], [1], [1], 8, 8, radius=0)


def test_disk_pixels_belong_to_the_nearest_centre():
    t = xview3_targets([5, 5], [5, 9], [1, 0], [NAN, NAN], [NAN, NAN], 12, 16, radius=4)
    assert t["vessel"][0, 5, 6] == 1 and t["vessel"][0, 5, 8] == 0  # columns 6 | 8
    assert t["vessel_weight"][5, 4:11].tolist() == [1.0] * 7


def reference_loss(out, targets, valid):
    """The head's loss written pixel by pixel in float64 from probabilities."""
    total = 0.0
    k, _, h, w = out.shape
    for b in range(k):
        for i in range(h):
            for j in range(w):
                if not valid[b, i, j]:
                    continue
                x, y = out[b, 0, i, j].item(), targets["center"][b, 0, i, j].item()
                p = 1 / (1 + math.exp(-x))
                total += (
                    -((1 - p) ** 2) * math.log(p)
                    if y >= 1
                    else -((1 - y) ** 4) * p**2 * math.log(1 - p)
                )
                for c, name in ((1, "vessel"), (2, "fishing")):
                    q = 1 / (1 + math.exp(-out[b, c, i, j].item()))
                    t = targets[name][b, 0, i, j].item()
                    bce = -(t * math.log(q) + (1 - t) * math.log(1 - q))
                    total += bce * targets[f"{name}_weight"][b, i, j].item()
                err = abs(out[b, 3, i, j].item() - targets["length"][b, 0, i, j].item())
                total += err * targets["length_weight"][b, i, j].item()
    return total


def test_loss_equals_a_pixel_by_pixel_reference():
    torch.manual_seed(0)
    head = XView3Head([FeatureInfo(8, 4)], dim=16, channels=8)
    parts = [
        xview3_targets([3, 9], [4, 2], [1, 0], [1, NAN], [120, NAN], 12, 12, radius=3),
        xview3_targets([6], [6], [NAN], [NAN], [30], 12, 12, radius=3),
    ]
    targets = {k: torch.stack([p[k] for p in parts]).double() for k in parts[0]}
    out = torch.randn(2, 4, 12, 12, dtype=torch.float64, requires_grad=True)
    valid = torch.rand(2, 12, 12) > 0.2
    loss = head.loss_sum(out, targets, valid)
    assert loss.item() == pytest.approx(reference_loss(out.detach(), targets, valid), rel=1e-9)
    loss.backward()
    unknown = (targets["vessel_weight"] == 0) | ~valid
    assert (out.grad[:, 1][unknown] == 0).all()  # unknown labels are ignored
    assert (out.grad[:, 1][~unknown] != 0).all()
    assert head.out.bias[0].item() == pytest.approx(math.log(0.01 / 0.99))


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


def test_scene_bands_follow_the_data_order():
    assert scene_bands(2) == ("VV_dB", "VH_dB")
    assert scene_bands(3)[-1] == "bathymetry"
    with pytest.raises(ConfigError):
        scene_bands(9)
