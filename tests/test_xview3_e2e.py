"""xView3 end to end through the `xt` command on the fixture's scene folders: a tiny
`xt train` (crops with xView3 targets, thresholds chosen on the validation scenes and
saved with the checkpoint), `xt eval` printing the official keys, `xt predict` writing
the challenge CSV, and a perfect prediction scoring 1.0 through `xt eval --predictions`."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from data.xview3_fixture import write_xview3_fixture
from xtimage.build import build_model
from xtimage.checkpoint import load_weights, read_checkpoint, save_checkpoint
from xtimage.cli import main
from xtimage.config import load_config
from xtimage.data.registry import build_datasets
from xtimage.metrics.xview3 import PREDICTION_COLUMNS, SCORE_KEYS
from xtimage.tasks import get_task
from xtimage.tasks.xview3 import DEFAULT_THRESHOLDS

TINY = [
    "model.head=xview3",
    "model.in_chans=2",
    "model.region=64",
    "model.dim=32",
    "model.backbone_kwargs={depths: [1, 1, 1, 1], dims: [8, 8, 16, 16]}",
    "model.context_kwargs={depth: 1, heads: 2}",
    "model.decoder_channels=8",
    "data.kind=xview3",
    "data.window=128",
    "data.train_samples=4",
    "data.augment=true",
    "train.batch_size=2",
    "train.steps=2",
    "train.warmup=0",
    "train.log_every=1",
    "train.progress=false",
]


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """The fixture, with one scored vessel made a fishing vessel (otherwise every scored
    vessel is non-fishing and no prediction can reach a fishing F1 above 0)."""
    tmp = tmp_path_factory.mktemp("xview3_e2e")
    fx = write_xview3_fixture(tmp / "data")
    labels = pd.read_csv(fx.labels_csv)
    scored_vessel = (labels["is_vessel"] == True) & (labels["confidence"] != "LOW")  # noqa: E712
    labels.loc[scored_vessel.idxmax(), "is_fishing"] = True
    labels.to_csv(fx.labels_csv, index=False)
    data = [
        f"data.root={fx.root}",
        f"data.val_root={fx.root}",
        f"data.params={{labels: {fx.labels_csv}, shoreline: {fx.shoreline_root}}}",
    ]
    return fx, data, tmp


@pytest.fixture(scope="module")
def run(fx):
    _, data, tmp = fx
    assert main(["train", "synthetic_seg", *TINY, *data, f"train.out={tmp / 'run'}"]) == 0
    return tmp / "run"


@pytest.fixture(scope="module")
def busy(run, fx):
    """The trained checkpoint with its centre bias raised: an untrained model finds no
    peak above the candidate floor, this one finds many (so that scores are not all 0)."""
    ckpt = read_checkpoint(run)
    model = build_model(ckpt.config.model, load_pretrained=False)
    load_weights(model, ckpt)
    with torch.no_grad():
        model.head.out.bias[0] = 3.0
    return save_checkpoint(fx[2] / "busy.safetensors", model, ckpt.config, metrics=ckpt.metrics)


def test_training_samples_carry_targets_that_follow_augmentation(fx):
    _, data, _ = fx
    config = load_config("synthetic_seg", [*TINY, *data])
    sets = build_datasets(config)
    samples = [sets.train[key] for key in sets.train.plan(0)]
    sample = next(s for s in samples if len(s["points"]))  # a crop around detections
    assert sample["image"].shape == (2, 128, 128)
    t = get_task(config.model).targets(sample)
    peaks = torch.nonzero(t["center"][0] == 1).tolist()
    rows, cols = (sample["points"][:, 1] - 0.5).long(), (sample["points"][:, 0] - 0.5).long()
    assert sorted(peaks) == sorted(map(list, zip(rows.tolist(), cols.tolist(), strict=True)))
    # the Trainer's flips and turns move the points; their targets move with the pixels
    from xtimage.data.sampling import Augment

    for seed in range(4):
        moved = Augment(jitter=0)({**sample, "mask": t["center"][0]}, np.random.default_rng(seed))
        assert torch.equal(get_task(config.model).targets(moved)["center"][0], moved["mask"])
    assert len(sets.val) == 2 and set(sets.val.labels["scene_id"]) == set(sets.val.scene_ids)


def test_train_chooses_thresholds_and_eval_prints_the_official_keys(run, fx, capsys):
    _, data, _ = fx
    ckpt = read_checkpoint(run)
    assert set(SCORE_KEYS) <= set(ckpt.metrics)
    assert set(ckpt.metrics["thresholds"]) == set(DEFAULT_THRESHOLDS)
    capsys.readouterr()
    assert main(["eval", str(run), *data, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(SCORE_KEYS) <= set(out)
    assert all(0 <= out[k] <= 1 for k in SCORE_KEYS)
    assert out["thresholds"] == ckpt.metrics["thresholds"]  # the saved ones, not re-chosen
    # the validation set is the same scenes: the same numbers as the training's evaluation
    assert {k: out[k] for k in SCORE_KEYS} == pytest.approx(
        {k: ckpt.metrics[k] for k in SCORE_KEYS}, abs=1e-6
    )
    assert main(["eval", str(run), *data]) == 0
    text = capsys.readouterr().out
    assert all(k in text for k in SCORE_KEYS)


def test_predict_writes_the_challenge_csv_that_eval_scores_the_same(busy, fx, capsys, tmp_path):
    f, data, _ = fx
    out = tmp_path / "pred"
    assert main(["predict", str(busy), str(f.root), "-o", str(out), "--quiet"]) == 0
    table = pd.read_csv(out / "predictions.csv")
    assert list(table.columns) == list(PREDICTION_COLUMNS)
    for scene_id in f.scene_ids:
        assert (out / f"{scene_id}.xview3.csv").is_file()
    capsys.readouterr()
    assert main(["eval", str(busy), *data, "--predictions", str(out), "--json"]) == 0
    from_files = json.loads(capsys.readouterr().out)
    assert main(["eval", str(busy), *data, "--json"]) == 0
    from_model = json.loads(capsys.readouterr().out)
    assert from_model["detections"] == len(table) > 0 and from_model["loc_fscore"] > 0
    assert {k: from_files[k] for k in SCORE_KEYS} == pytest.approx(
        {k: from_model[k] for k in SCORE_KEYS}, abs=1e-9
    )


def test_a_perfect_prediction_scores_one_through_xt_eval(run, fx, capsys, tmp_path):
    f, data, _ = fx
    labels = pd.read_csv(f.labels_csv)
    for scene_id in f.scene_ids:
        mine = labels[labels["scene_id"] == scene_id]
        table = pd.DataFrame(
            {
                "detect_scene_row": mine["detect_scene_row"],
                "detect_scene_column": mine["detect_scene_column"],
                "scene_id": scene_id,
                "is_vessel": mine["is_vessel"] == True,  # noqa: E712
                "is_fishing": mine["is_fishing"] == True,  # noqa: E712
                "vessel_length_m": mine["vessel_length_m"].fillna(0.0),
            }
        )
        table.to_csv(tmp_path / f"{scene_id}.xview3.csv", index=False)
    capsys.readouterr()
    assert main(["eval", str(run), *data, "--predictions", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {k: out[k] for k in SCORE_KEYS} == pytest.approx(dict.fromkeys(SCORE_KEYS, 1.0))
    assert out["detections"] == len(labels)
    assert np.isfinite(out["aggregate"])


def test_data_kind_xview3_names_what_it_needs(fx, capsys):
    _, data, _ = fx
    assert main(["train", "synthetic_seg", *TINY, data[0], "data.params={}"]) == 2
    assert "data.params.labels" in capsys.readouterr().err
    assert main(["train", "synthetic_seg", *TINY[1:], *data]) == 2  # head segmentation
    assert "model.head=xview3" in capsys.readouterr().err


def test_the_collector_path_is_what_predict_uses(fx, tmp_path):
    """`Predictor.predict` on a scene folder gives the challenge columns, scene id set."""
    from xtimage.build import build_model
    from xtimage.predict import Predictor

    f, data, _ = fx
    config = load_config("synthetic_seg", [*TINY, *data])
    torch.manual_seed(0)
    predictor = Predictor(build_model(config.model), config.model, thresholds=None)
    scene = Path(f.root) / f.scene_ids[0]
    points = predictor.predict(scene).points
    assert list(points.columns) == list(PREDICTION_COLUMNS)
    assert (points["scene_id"] == f.scene_ids[0]).all()
