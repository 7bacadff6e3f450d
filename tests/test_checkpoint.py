"""Checkpoints: round trip, exact training-state restore, no pickle, atomic writes."""

import pickle
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tiny import TINY_MODEL
from xtimage import checkpoint as ckpt_module
from xtimage.build import build_model
from xtimage.checkpoint import (
    load_model,
    read_checkpoint,
    restore_training,
    save_checkpoint,
)
from xtimage.config import load_config
from xtimage.errors import InputError

TINY = TINY_MODEL


def _trained(config):
    """A model and an AdamW optimizer after two steps (moments and step counts set)."""
    model = build_model(config.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(1, 3, 64, 96)
    for _ in range(2):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return model, opt


def test_round_trip_restores_weights_optimizer_and_generators(tmp_path):
    config = load_config(None, TINY)
    model, opt = _trained(config)
    path = tmp_path / "last.safetensors"
    torch.manual_seed(5)
    np.random.seed(6)
    random.seed(7)
    save_checkpoint(path, model, config, step=2, epoch=1, position=8, optimizer=opt,
                    metrics={"miou": 0.5}, extra={"best": 0.5})  # fmt: skip
    after = (torch.rand(3), np.random.rand(3), random.random())

    ckpt = read_checkpoint(path)
    assert ckpt.config == config and ckpt.resumable
    assert (ckpt.step, ckpt.epoch, ckpt.position) == (2, 1, 8)
    assert ckpt.metrics == {"miou": 0.5} and ckpt.state["best"] == 0.5

    fresh = build_model(config.model)
    fresh.load_state_dict(ckpt.weights)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    restore_training(ckpt, opt2)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"] and len(s1["state"]) > 10
    for i, values in s1["state"].items():
        for key, value in values.items():
            assert torch.equal(value, s2["state"][i][key]), (i, key)
    # the generators continue exactly where the saved run's did
    assert torch.equal(torch.rand(3), after[0])
    assert np.array_equal(np.random.rand(3), after[1]) and random.random() == after[2]


def test_weights_file_is_a_plain_state_dict_and_load_model_predicts_the_same(tmp_path):
    config = load_config(None, TINY)
    model, _ = _trained(config)
    path = save_checkpoint(tmp_path / "best.safetensors", model, config, step=3)
    weights = load_file(str(path))
    assert weights.keys() == model.state_dict().keys()  # no training state in a "best"
    loaded, ckpt = load_model(path)
    assert not ckpt.resumable
    x = torch.rand(1, 3, 70, 90)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    with pytest.raises(InputError, match="weights only"):
        restore_training(ckpt, torch.optim.AdamW(loaded.parameters()))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # would create the marker when unpickled


def test_loading_never_unpickles(tmp_path):
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(InputError, match="not a readable safetensors checkpoint"):
        read_checkpoint(evil)
    assert not marker.exists()
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(InputError, match="without xtimage metadata"):
        read_checkpoint(plain)
    with pytest.raises(InputError, match="no checkpoints/last.safetensors"):
        read_checkpoint(tmp_path)


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    config = load_config(None, TINY)
    model, opt = _trained(config)
    path = save_checkpoint(tmp_path / "last.safetensors", model, config, step=1, optimizer=opt)
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module, "_save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, config, step=2, optimizer=opt)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]
    assert read_checkpoint(path).step == 1
