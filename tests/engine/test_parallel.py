"""Context parallelism: 2 and 3 gloo processes on one image equal one process's engine
(outputs and parameter gradients), with uneven splits, skipped regions, a sharded
context (Hyper, exact attention), a gathered one and a relayed one (Transformer-XL's
state passed from process to process in inference; gathered in training),
classification and dense heads."""

import pytest
import torch

from forked import fork_processes
from xtimage.distributed import init_distributed
from xtimage.encoders.context.base import create_context_encoder
from xtimage.encoders.context.hyper import HyperContext
from xtimage.encoders.region import RegionEncoder
from xtimage.engine import Engine
from xtimage.engine.parallel import ContextParallel, SequenceGather, split_regions
from xtimage.errors import ConfigError
from xtimage.heads import ClassificationHead, DenseHead, DenseOutput
from xtimage.model import XT

from .test_runner import GlobalAttention  # without a sharded path: tokens gathered


def tiny_xt(context: str, dense: bool) -> XT:
    margin = 32 if dense else 0
    region = 64 + 2 * margin
    encoder = RegionEncoder("convnext_atto", region=region, depths=(1,) * 4, dims=(8, 8, 16, 16))
    if context == "hyper":
        ctx = HyperContext(16, depth=1, heads=2)
    elif context == "xl":  # streamable: relayed in inference, segments of 2 regions
        ctx = create_context_encoder("xl", dim=16, depth=1, heads=2, segment_len=8, mem_len=8)
    else:
        ctx = GlobalAttention(16)
    if dense:
        head = DenseHead(encoder.feature_info[:-1], 16, [DenseOutput("mask", 3, "ce")], channels=8)
    else:
        head = ClassificationHead(16, 5, pool="attention")
    return XT(encoder, ctx, head, region=region, margin=margin).double()


# 150 x 200 px: 3 x 4 regions of 64 px cores. Two processes: 8 + 4 regions; three: two
# regions skipped, the 10 others split 4 + 3 + 3.
CASES = {2: ([8, 4], None), 3: (None, [r not in (1, 6) for r in range(12)])}
MODELS = [(c, d) for c in ("hyper", "global", "xl") for d in (False, True)]


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _run(model, image, target, sizes, keep, region_batch):
    """Outputs and exact-step gradients through `ContextParallel` (any world size)."""
    parallel = ContextParallel(Engine(model, region_batch=region_batch), sizes=sizes)
    model.eval()
    out = parallel.segment(image, keep) if model.head.dense else parallel.classify(image, keep)
    model.zero_grad()
    loss = parallel.exact_step(image, target, keep)
    return {"out": out, "loss": loss, "grads": _grads(model)}


def _reference(model, image, target, keep):
    engine = Engine(model, region_batch=5)
    model.eval()
    out = engine.segment(image, keep) if model.head.dense else engine.classify([image], [keep])
    model.zero_grad()
    targets = [target] if model.head.dense else target.reshape(1)
    loss = engine.exact_step([image], targets, [keep])
    return {"out": out, "loss": loss, "grads": _grads(model)}


def _worker(rank, out, models, image, targets):
    world = init_distributed("cpu")
    sizes, keep = CASES[world.size]
    results = [
        _run(m, image, t, sizes, keep, region_batch=2)
        for m, t in zip(models, targets, strict=True)
    ]
    torch.save(results, f"{out}/rank{rank}.pt")


@pytest.mark.parametrize("world", [2, 3])
def test_processes_equal_one(tmp_path, world):
    torch.manual_seed(0)
    models = [tiny_xt(c, d) for c, d in MODELS]
    assert [isinstance(m.context, HyperContext) for m in models] == [True] * 2 + [False] * 4
    image = torch.randn(3, 150, 200, dtype=torch.float64)
    targets = [
        {"mask": torch.randint(0, 3, (150, 200))} if dense else torch.tensor(3)
        for _, dense in MODELS
    ]
    _, keep = CASES[world]
    expected = [_reference(m, image, t, keep) for m, t in zip(models, targets, strict=True)]
    fork_processes(_worker, world, str(tmp_path), models, image, targets)  # same weights
    for rank in range(world):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for (context, dense), got, want in zip(MODELS, results, expected, strict=True):
            what = f"{context} {'dense' if dense else 'classification'}, rank {rank}"
            torch.testing.assert_close(got["out"], want["out"], rtol=1e-7, atol=1e-9, msg=what)
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-9), what
            assert got["grads"].keys() == want["grads"].keys(), what
            assert len(want["grads"]) >= 10
            for name, g in want["grads"].items():
                torch.testing.assert_close(
                    got["grads"][name], g, rtol=1e-7, atol=1e-10, msg=f"{what}: {name}"
                )


def test_one_process_equals_the_engine():
    """Without a process group `ContextParallel` is the engine (and the sharded Hyper
    path is its `forward`)."""
    for context, dense in MODELS:
        model = tiny_xt(context, dense)
        image = torch.randn(3, 70, 130, dtype=torch.float64)
        target = {"mask": torch.randint(0, 3, (70, 130))} if dense else torch.tensor(1)
        got = _run(model, image, target, None, None, region_batch=3)
        want = _reference(model, image, target, None)
        torch.testing.assert_close(got["out"], want["out"], rtol=1e-9, atol=1e-10)
        for name, g in want["grads"].items():
            torch.testing.assert_close(got["grads"][name], g, rtol=1e-9, atol=1e-12)


def test_split_regions_contiguous_balanced_or_given():
    assert split_regions(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_regions(list(range(7)), 2, unit=2) == [[0, 1, 2, 3], [4, 5, 6]]
    with pytest.raises(ConfigError, match="multiple of 2"):
        split_regions(list(range(7)), 2, [3, 4], unit=2)
    assert split_regions([0, 2, 5, 9], 2, [1, 3]) == [[0], [2, 5, 9]]
    with pytest.raises(ConfigError, match="add up|give"):
        split_regions(list(range(4)), 2, [1, 2])
    with pytest.raises(ConfigError, match="without a region"):
        split_regions(list(range(2)), 3)
    assert SequenceGather([5], 0)(torch.ones(5, 2)).shape == (5, 2)
