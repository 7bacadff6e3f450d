"""Two processes (gloo, CPU) against one with the same global batch: equal gradients,
weights and evaluation; a checkpoint resumed on another world size; sharding without
duplicates."""

import shutil

import pytest
import torch

from forked import fork_processes
from xtimage import distributed
from xtimage.config import load_config
from xtimage.distributed import World, shard
from xtimage.train import Trainer

# A LayerNorm/GroupNorm model (ConvNeXt, GroupNorm decoder), no dropout, SGD, no clipping.
# Batches of 3 images over 2 processes split 2 + 1, and the last batch (1 image) leaves
# process 1 empty-handed: only normalisers reduced with the gradients make these equal.
OVERRIDES = [
    "model.region=64",
    "model.dim=32",
    "model.backbone_kwargs={depths: [1, 1, 1, 1], dims: [8, 8, 16, 16]}",
    "model.context_kwargs={depth: 1, heads: 2}",
    "model.decoder_channels=8",
    "data.size=128",
    "data.train_samples=7",
    "data.val_samples=3",
    "data.augment=true",
    "train.batch_size=3",
    "train.steps=3",
    "train.optimizer=sgd",
    "train.lr=0.05",
    "train.clip=null",
    "train.progress=false",
]


def _run(out: str) -> dict:
    trainer = Trainer(load_config(None, [*OVERRIDES, f"train.out={out}"]))
    trainer.fit(until_step=1)
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    if trainer.world.main:  # keep the step-1 checkpoint for resuming elsewhere
        shutil.copy(f"{out}/checkpoints/last.safetensors", f"{out}/step1.safetensors")
    result = trainer.fit()
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    return {"grads": grads, "weights": weights, "metrics": result["metrics"]}


def _worker(rank: int, out: str) -> None:
    result = _run(out)  # the Trainer joins the group
    if rank == 0:
        torch.save(result, f"{out}/result.pt")


def test_two_processes_equal_one(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "BUCKET", 5000)  # several buckets (forked children too)
    one = _run(str(tmp_path / "one"))
    (tmp_path / "two").mkdir()
    fork_processes(_worker, 2, str(tmp_path / "two"))
    two = torch.load(tmp_path / "two" / "result.pt", weights_only=True)
    assert one["grads"].keys() == two["grads"].keys() and len(one["grads"]) > 20
    for name, g in one["grads"].items():  # step 1's all-reduced gradients
        atol = 1e-5 * float(g.abs().max()) + 1e-9
        torch.testing.assert_close(two["grads"][name], g, rtol=1e-5, atol=atol)
    for name, w in one["weights"].items():  # after 3 SGD steps
        torch.testing.assert_close(two["weights"][name], w, rtol=1e-5, atol=1e-6, msg=name)
    # every validation image scored once: the pooled confusion is the same
    assert one["metrics"]["iou"] == pytest.approx(two["metrics"]["iou"], abs=1e-6)
    written = sorted(p.name for p in (tmp_path / "two").iterdir())  # by rank 0 alone
    assert written == [
        "checkpoints",
        "config.yaml",
        "metrics.jsonl",
        "result.pt",
        "step1.safetensors",
    ]
    # the 2-process run's step-1 checkpoint resumed by 1 process ends where both ended
    config = load_config(None, [*OVERRIDES, f"train.out={tmp_path / 'resumed'}"])
    resumed = Trainer(config, resume=tmp_path / "two" / "step1.safetensors")
    resumed.fit()
    for name, w in resumed.model.state_dict().items():
        torch.testing.assert_close(w, one["weights"][name], rtol=1e-5, atol=1e-6, msg=name)


def test_shards_cover_everything_once():
    items = list(range(11))
    for size in (1, 2, 3, 4, 16):
        parts = [shard(items, World(rank, size)) for rank in range(size)]
        assert sorted(sum(parts, [])) == items
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
