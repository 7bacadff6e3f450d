import pytest
import torch

from xtimage.encoders.region import RegionEncoder
from xtimage.engine import Engine
from xtimage.engine.cache import TokenCache
from xtimage.errors import ConfigError
from xtimage.heads import ClassificationHead, DenseHead, DenseOutput
from xtimage.model import XT

from .test_runner import GlobalAttention, _assert_same_grads, _dense_reference_loss, _grads


def frozen_xt(dense: bool) -> XT:
    encoder = RegionEncoder(
        "convnext_atto", region=64, depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), frozen=True
    )
    if dense:
        head = DenseHead(encoder.feature_info[:-1], 16, [DenseOutput("mask", 3)], channels=8)
    else:
        head = ClassificationHead(16, 4)
    return XT(encoder, GlobalAttention(16), head, region=64).double()


def test_frozen_classification_step_equals_all_at_once_and_reuses_the_cache(tmp_path):
    model = frozen_xt(dense=False)
    batch = [torch.randn(3, 150, 200, dtype=torch.float64), torch.randn(3, 64, 90).double()]
    labels = torch.tensor([0, 3])
    model.zero_grad()
    ref = sum(model.head.loss(model(x[None]), labels[i : i + 1]) for i, x in enumerate(batch)) / 2
    ref.backward()
    expected = _grads(model)
    assert not any(n.startswith("region_encoder") for n in expected)

    cache = TokenCache(tmp_path, model)
    engine = Engine(model, region_batch=5)
    model.zero_grad()
    loss = engine.frozen_step(batch, labels, ["a", "b"], cache)
    assert abs(loss - ref.item()) < 1e-9
    _assert_same_grads(_grads(model), expected)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2

    engine.encode_cells = lambda image: pytest.fail("cached features were recomputed")
    model.zero_grad()
    assert abs(engine.frozen_step(batch, labels, ["a", "b"], cache) - loss) < 1e-12


def test_frozen_dense_step_equals_all_at_once(tmp_path):
    model = frozen_xt(dense=True)
    batch = [torch.randn(3, 130, 100, dtype=torch.float64)]
    targets = [{"mask": torch.randint(0, 3, (130, 100))}]
    model.zero_grad()
    _dense_reference_loss(model, batch, targets).backward()
    expected = _grads(model)
    model.zero_grad()
    Engine(model, region_batch=2).frozen_step(batch, targets, ["x"], TokenCache(tmp_path, model))
    _assert_same_grads(_grads(model), expected)


def test_cache_key_follows_weights_and_plan_and_needs_a_frozen_encoder(tmp_path):
    model = frozen_xt(dense=False)
    key = TokenCache(tmp_path, model).path("img", 100, 100)
    assert TokenCache(tmp_path, model).path("img", 100, 100) == key
    assert TokenCache(tmp_path, model).path("img", 100, 101) != key
    with torch.no_grad():
        next(model.region_encoder.parameters()).add_(1.0)
    assert TokenCache(tmp_path, model).path("img", 100, 100) != key
    encoder = RegionEncoder("convnext_atto", region=64, depths=(1, 1, 1, 1), dims=(8, 8, 16, 16))
    trainable = XT(encoder, GlobalAttention(16), ClassificationHead(16, 2), region=64)
    with pytest.raises(ConfigError, match="frozen region encoder"):
        TokenCache(tmp_path, trainable)


def test_damaged_or_hostile_cache_entries_are_recomputed_never_unpickled(tmp_path):
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'PWNED'}",)

    model = frozen_xt(dense=False)
    cache, engine = TokenCache(tmp_path / "cache", model), Engine(model)
    image = torch.randn(3, 100, 70, dtype=torch.float64)
    cells = cache.cells(engine, image, "a")
    path = cache.path("a", 100, 70)
    for damage in (pickle.dumps(Payload()), path.read_bytes()[:-7], path.read_bytes()[:-8]):
        path.write_bytes(damage)
        assert torch.equal(cache.cells(engine, image, "a"), cells)  # recomputed
        assert path.exists()  # and stored again
    assert not (tmp_path / "PWNED").exists()
