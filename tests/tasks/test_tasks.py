"""The task contract, for every registered task: the head it builds is the kind the
engine expects, targets come from samples, answers come back in the task's form, written
files are the ones `outputs` names and read back to the same answer, and scoring reports
the task's best metric. xView3's scene-folder I/O is covered by tests/test_xview3_e2e.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny import TINY_MODEL
from xtimage.build import build_model
from xtimage.config import HEADS, load_config
from xtimage.data.synthetic import SyntheticTask
from xtimage.errors import ConfigError
from xtimage.heads import Head
from xtimage.metrics.xview3 import SCORE_KEYS
from xtimage.predict import Predictor
from xtimage.tasks import TASKS, Prediction, get_task

TINY = TINY_MODEL
FILE_TASKS = ["classification", "segmentation", "detection"]  # samples from SyntheticTask
CLASSES = {"classification": 4, "segmentation": 2, "detection": 1, "xview3": 1}


def config_for(name):
    overrides = [*TINY, f"model.head={name}", f"model.num_classes={CLASSES[name]}"]
    if name == "xview3":
        overrides.append("model.in_chans=2")
    return load_config(None, overrides).model


def test_the_registry_is_the_config_s_list_of_heads():
    assert sorted(TASKS.names()) == sorted(HEADS)
    with pytest.raises(ConfigError, match="known: classification"):
        TASKS.get("segmentaton")


@pytest.mark.parametrize("name", sorted(HEADS))
def test_task_builds_a_head_of_the_declared_kind(name):
    config = config_for(name)
    task = get_task(config)
    assert task.name == name
    model = build_model(config)
    assert isinstance(model.head, Head)
    assert model.head.dense == (name != "classification")


@pytest.mark.parametrize("name", FILE_TASKS)
def test_predict_write_read_back_and_score(name, tmp_path):
    config = config_for(name)
    torch.manual_seed(0)
    model = build_model(config).eval()
    predictor = Predictor(model, config, region_batch=3, threshold=0.0)
    data = SyntheticTask(name, size=128, region=64, length=2, textures=max(CLASSES[name], 2))
    sample = data[0]
    target = predictor.task.targets(sample)
    batch = predictor.task.collate([target, target])
    assert isinstance(batch, torch.Tensor | list)

    image = (sample["image"].numpy() * 255).round().astype(np.uint8)
    np.save(tmp_path / "a.npy", image)
    found = predictor.predict_file(tmp_path / "a.npy", tmp_path / "out")
    assert isinstance(found, Prediction) and found.kind == name
    assert found.files == predictor.outputs(tmp_path / "a.npy", tmp_path / "out")
    assert all(p.is_file() for p in found.files)
    again = predictor.task.read_prediction(found.files)
    in_memory = predictor.predict(image)
    if name == "classification":
        assert again.label == in_memory.label
    elif name == "segmentation":
        assert np.array_equal(again.mask, in_memory.mask)
    else:
        assert len(again.detections) == len(in_memory.detections) > 0

    scorer = predictor.task.scorer()
    scorer.update(in_memory, sample)
    assert predictor.task.best_metric in scorer.compute()


def test_xview3_best_metric_is_an_official_score():
    assert get_task(config_for("xview3")).best_metric in SCORE_KEYS
