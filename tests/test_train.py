"""The training loop: schedule, exact resume, gradient accumulation, run-folder rules."""

import json
import math

import pytest
import torch

from tiny import TINY_MODEL
from xtimage.checkpoint import read_checkpoint
from xtimage.config import load_config
from xtimage.errors import ConfigError, InputError
from xtimage.train import Trainer, lr_at

TINY = [
    *TINY_MODEL,
    "data.size=128",
    "data.val_samples=1",
    "train.progress=false",
    "train.log_every=1",
]


def tiny(tmp_path, *overrides):
    return load_config(None, [*TINY, f"train.out={tmp_path}", *overrides])


def test_learning_rate_warms_up_then_follows_a_cosine():
    kw = dict(lr=1.0, warmup=4, total=14, min_ratio=0.1)
    assert [lr_at(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, **kw) == pytest.approx(1.0)
    assert lr_at(9, **kw) == pytest.approx(0.55)  # halfway: (1 + 0.1) / 2
    assert lr_at(14, **kw) == pytest.approx(0.1) and lr_at(99, **kw) == pytest.approx(0.1)
    for s in range(5, 14):  # cos(pi * progress), independently
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 10))
        assert lr_at(s, **kw) == pytest.approx(expected)


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("mode", ["direct", "exact"])
def test_resume_mid_epoch_equals_an_uninterrupted_run(tmp_path, mode):
    """Stopped after step 4 (mid-epoch: 3 batches an epoch), with two loader workers,
    augmentation and stochastic depth on: the resumed run ends with the same weights."""
    overrides = [
        f"train.mode={mode}",
        "train.steps=6",
        "train.batch_size=2",
        "train.workers=2",
        "train.eval_every=3",
        "data.train_samples=6",
        "data.augment=true",
        "model.backbone_kwargs.drop_path_rate=0.2",
        "train.lr_scale={head: 0.5}",  # a third parameter group resumes too
        "train.join_at={head.out: 5}",  # held at the stop, joins after the resume
    ]
    whole = Trainer(tiny(tmp_path / "whole", *overrides))
    whole.fit()
    first = Trainer(tiny(tmp_path / "split", *overrides))
    first.fit(until_step=4)
    assert (first.step, first.epoch, first.position) == (4, 1, 2)
    resumed = Trainer(tiny(tmp_path / "split", *overrides), resume=tmp_path / "split")
    assert resumed.step == 4
    resumed.fit()
    a, b = _weights(whole), _weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(a["head.out.weight"], first.model.state_dict()["head.out.weight"])


def _step_one_grads(tmp_path, *overrides):
    trainer = Trainer(
        tiny(
            tmp_path,
            "train.optimizer=sgd",
            "train.clip=null",
            "data.augment=false",
            "data.train_samples=4",
            "train.steps=1",
            *overrides,
        )  # fmt: skip
    )
    trainer.fit()
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("head", ["segmentation", "classification"])
def test_accumulated_micro_batches_give_the_whole_batch_gradient(tmp_path, head):
    cls = ["model.num_classes=3", "data.params={textures: 3}"]
    task = [f"model.head={head}"] + (cls if head == "classification" else [])
    whole = _step_one_grads(tmp_path / "a", "train.batch_size=4", *task)
    # micro-batches of 2 and 1 image: unequal normalisers must still weigh right
    parts = _step_one_grads(
        tmp_path / "b", "train.batch_size=2", "train.accumulate=3", "data.train_samples=3", *task
    )
    whole3 = _step_one_grads(tmp_path / "c", "train.batch_size=3", "data.train_samples=3", *task)
    assert len(whole) > 10
    for name, expected in whole3.items():  # float32 sums in another order: scale-aware atol
        atol = 1e-5 * float(expected.abs().max()) + 1e-9
        torch.testing.assert_close(parts[name], expected, rtol=1e-5, atol=atol, msg=name)
    assert any(not torch.allclose(whole[n], whole3[n]) for n in whole)  # other data, other grad


def _after_one_sgd_step(tmp_path, *overrides):
    trainer = Trainer(tiny(tmp_path, "train.optimizer=sgd", "train.clip=null", "train.steps=1",
                           "train.batch_size=2", "data.train_samples=2", *overrides))  # fmt: skip
    before = _weights(trainer)
    trainer.fit()
    return {n: (p.detach() - before[n], before[n]) for n, p in trainer.model.named_parameters()}


def test_lr_scale_multiplies_the_step_of_the_parameters_it_names(tmp_path):
    plain = _after_one_sgd_step(tmp_path / "a")
    scaled = _after_one_sgd_step(tmp_path / "b", "train.lr_scale={head: 0.25, head.out: 3}")
    for name, (delta, weight) in plain.items():  # the longest prefix wins: head.out 3, head 0.25
        scale = 3.0 if name.startswith("head.out.") else 0.25 if name.startswith("head.") else 1
        atol = 1e-6 * float(weight.abs().max()) + 1e-9  # a difference of float32 weights
        torch.testing.assert_close(scaled[name][0], scale * delta, rtol=1e-3, atol=atol, msg=name)
    assert all(plain[n][0].abs().max() > 0 for n in plain if n.startswith("head."))


def test_lr_scale_refuses_a_prefix_that_names_nothing_and_a_bad_value(tmp_path):
    with pytest.raises(ConfigError, match=r"train.lr_scale: \['heads'\] names no trainable"):
        Trainer(tiny(tmp_path / "a", "train.lr_scale={heads: 0.1}"))
    with pytest.raises(ConfigError, match="train.lr_scale.head must be a number > 0"):
        tiny(tmp_path / "b", "train.lr_scale={head: 0}").check()
    with pytest.raises(ConfigError, match=r"train.join_at: \['heads'\] names no trainable"):
        Trainer(tiny(tmp_path / "c", "train.join_at={heads: 3}"))
    with pytest.raises(ConfigError, match="train.join_at.head must be a step >= 0"):
        tiny(tmp_path / "d", "train.join_at={head: -1}").check()


def test_partners_that_join_late_leave_the_run_as_without_them_until_they_join(tmp_path):
    """Zero-initialised partner projections held by ``train.join_at`` for 3 steps: the
    rest of the model takes exactly the steps of a model without partners (their
    gradients are kept out of the clipped norm, and the clip is active), then they train."""
    common = ["model.context_kwargs={depth: 1, heads: 2}", "train.clip=0.01"]
    partners = ["model.partners=[hflip, rot180]", "train.join_at={context.proj: 3}"]
    plain = Trainer(tiny(tmp_path / "plain", *common, "train.steps=5"))
    plain.fit(until_step=3)
    joined = Trainer(tiny(tmp_path / "joined", *common, *partners, "train.steps=5"))
    start = _weights(joined)
    joined.fit(until_step=3)
    rows = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").open()]
    assert min(r["grad_norm"] for r in rows if "grad_norm" in r) > 0.01  # the clip acts
    held = {n: w for n, w in _weights(joined).items() if n.startswith("context.proj.")}
    assert held and all(torch.equal(w, start[n]) and not w.any() for n, w in held.items())
    assert not any(joined.optimizer.state.get(p) for p in joined.joining[0][1])
    mirrored = {n.replace("context.inner.", "context.", 1): w for n, w in _weights(joined).items()}
    for name, weight in _weights(plain).items():
        torch.testing.assert_close(mirrored[name], weight, rtol=0, atol=1e-7, msg=name)
    joined.fit()
    assert all(_weights(joined)[n].any() for n in held)


def test_run_folder_files_and_refusal_to_overwrite(tmp_path):
    config = tiny(tmp_path, "train.steps=2", "train.batch_size=2", "data.train_samples=2")
    result = Trainer(config).fit()
    assert result["step"] == 2 and set(result["metrics"]) >= {"miou", "foreground_iou"}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2] and all(r["loss"] > 0 for r in train_rows)
    assert any("miou" in r for r in rows)
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {
        "best.safetensors",
        "last.safetensors",
    }
    assert load_config(tmp_path / "config.yaml") == config
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(config)
    Trainer(config, overwrite=True)  # allowed when asked; nothing of the old run is left
    assert not list((tmp_path / "checkpoints").iterdir())
    assert not (tmp_path / "metrics.jsonl").exists()


def test_init_starts_a_fresh_run_from_the_best_weights_at_another_size(tmp_path):
    """train.init: the weights of a run's best checkpoint, fine-tuned on larger images
    with a fresh schedule; weights of another width are refused naming the option."""
    small = ["train.steps=2", "train.batch_size=2", "data.train_samples=2"]
    Trainer(tiny(tmp_path / "small", *small, "train.eval_every=1")).fit()
    start = read_checkpoint(tmp_path / "small" / "checkpoints" / "best.safetensors")
    large = Trainer(tiny(tmp_path / "large", *small, "data.size=256", "train.mode=exact",
                         "model.context_kwargs={depth: 1, heads: 2, segment_len: 16}",
                         f"train.init={tmp_path / 'small'}"))  # fmt: skip
    assert large.step == 0 and not large.optimizer.state  # a fresh schedule and optimizer
    for name, value in large.model.state_dict().items():
        assert torch.equal(value, start.weights[name]), name
    large.fit()  # trains at 256 px (4 x 4 regions) in exact mode from there
    assert not torch.equal(large.model.state_dict()["head.out.weight"],
                           start.weights["head.out.weight"])  # fmt: skip
    with pytest.raises(InputError, match="train.init takes weights of the same architecture"):
        Trainer(tiny(tmp_path / "wide", "model.dim=48", f"train.init={tmp_path / 'small'}"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.context=hyper", "train.mode=streaming"], "needs a streamable context"),
        (["train.mode=frozen"], "needs model.frozen=true"),
        (["model.baseline=downsample", "train.mode=exact"], "use train.mode=direct"),
        (["model.num_classes=3"], "set model.num_classes=2"),
    ],
)
def test_inconsistent_runs_fail_before_training(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(tiny(tmp_path, *overrides))


def test_auto_mode_trains_a_batch_norm_decoder_all_at_once_whatever_region_batch(tmp_path):
    """Two 128 px images are 8 regions: over region_batch=4, auto picks exact for a
    layer-norm decoder, but a batch-norm one trains only all at once, so auto picks direct
    (it used to pick exact and fail at the first step)."""
    small = ["train.batch_size=2", "train.region_batch=4", "train.steps=1", "train.eval_every=1"]
    images = [torch.zeros(3, 128, 128)] * 2
    assert Trainer(tiny(tmp_path / "layer", *small))._mode(images) == "exact"
    trainer = Trainer(tiny(tmp_path / "batch", *small, "model.decoder_norm=batch"))
    assert trainer._mode(images) == "direct"
    assert trainer.fit()["step"] == 1


def test_streaming_equals_exact_without_context(tmp_path):
    """With context "none" and no margin, regions never interact: the Transformer-XL-style
    streaming step is exact, so the two modes give the same step-1 gradient."""
    crop = ["model.baseline=crop", "train.region_batch=1"]
    exact = _step_one_grads(tmp_path / "a", "train.mode=exact", *crop)
    streaming = _step_one_grads(tmp_path / "b", "train.mode=streaming", *crop)
    assert exact.keys() == streaming.keys() and len(exact) > 10
    for name, expected in exact.items():
        atol = 1e-5 * float(expected.abs().max()) + 1e-9
        torch.testing.assert_close(streaming[name], expected, rtol=1e-5, atol=atol, msg=name)


def test_frozen_mode_caches_features_and_trains_only_context_and_head(tmp_path):
    config = tiny(tmp_path, "model.frozen=true", "train.mode=frozen", "data.augment=false",
                  "data.train_samples=2", "train.batch_size=2", "train.steps=2")  # fmt: skip
    trainer = Trainer(config)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(not k.startswith("region_encoder.") for k in changed)
    assert any(k.startswith("context.") for k in changed)
    assert len(list((tmp_path / "token_cache").iterdir())) == 2  # one file per image


def test_time_budget_stops_after_a_step_with_a_checkpoint(tmp_path):
    config = tiny(tmp_path, "train.max_minutes=0", "train.steps=50", "data.train_samples=2",
                  "train.batch_size=1")  # fmt: skip
    result = Trainer(config).fit()
    assert result["step"] == 1 and result["stopped"] == "time"
    assert result["metrics"]  # the last model was scored, though no evaluation was due
    assert Trainer(config, resume=tmp_path).step == 1


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FP16_RUNS = [("cpu", "exact")]  # fp16 on CPU is slow: the engine's mode only
if torch.cuda.is_available():
    FP16_RUNS += [("cuda", "exact"), ("cuda", "direct")]


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_exact_step_is_close_to_float32(tmp_path, device):
    gpu = [f"train.device={device}", "train.mode=exact"]
    full = _step_one_grads(tmp_path / "a", *gpu, "train.amp=none")
    mixed = _step_one_grads(tmp_path / "b", *gpu, "train.amp=bf16")
    for name, expected in full.items():
        cos = torch.nn.functional.cosine_similarity(
            mixed[name].flatten().float(), expected.flatten().float(), dim=0
        )
        assert cos > 0.95 or expected.norm() < 1e-6, (name, float(cos))


@pytest.mark.parametrize("mode", ["direct", "exact"])
def test_channels_last_step_gives_the_default_layout_gradients(tmp_path, mode):
    """train.channels_last changes the summation order only: every gradient equals the
    default layout's to float32 rounding (relative 1e-4 of its largest entry)."""
    full = _step_one_grads(tmp_path / "a", f"train.mode={mode}")
    nhwc = _step_one_grads(tmp_path / "b", f"train.mode={mode}", "train.channels_last=true")
    assert full.keys() == nhwc.keys() and len(full) > 10
    assert any(g.ndim == 4 and not g.is_contiguous() for g in nhwc.values())  # NHWC ran
    for name, expected in full.items():
        atol = 1e-4 * float(expected.abs().max()) + 1e-9
        torch.testing.assert_close(nhwc[name], expected, rtol=1e-4, atol=atol, msg=name)


@pytest.mark.parametrize(("device", "mode"), FP16_RUNS)
def test_fp16_with_its_gradient_scaler_trains(tmp_path, device, mode):
    config = tiny(tmp_path, f"train.device={device}", f"train.mode={mode}", "train.amp=fp16",
                  "train.steps=6", "data.train_samples=2", "train.batch_size=2")  # fmt: skip
    trainer = Trainer(config)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.fit()
    after = trainer.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # some steps were taken
    assert math.isfinite(result["loss"]) and trainer.scaler.get_scale() > 0


def test_folder_windows_are_planned_per_epoch_and_read_from_the_image(tmp_path):
    import numpy as np

    from xtimage.data.registry import build_datasets
    from xtimage.window import Window

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i, (h, w) in enumerate([(90, 130), (70, 70)]):
        np.save(tmp_path / "data/images" / f"{i}.npy", rng.random((3, h, w), dtype=np.float32))
        np.save(tmp_path / "data/masks" / f"{i}.npy", rng.integers(0, 2, (h, w)))
    config = tiny(tmp_path / "run", "data.kind=folder", f"data.root={tmp_path / 'data'}",
                  "data.window=64", "data.train_samples=5", "data.val_fraction=0")  # fmt: skip
    data = build_datasets(config)
    plans = [data.train.plan(e) for e in (0, 0, 1)]
    assert len(plans[0]) == 5 and plans[0] == plans[1] != plans[2]
    (index, window), full = plans[0][0], data.train.source
    sample = data.train[(index, window)]
    whole = full[index]
    inside = window.intersect(Window(0, 0, *whole["image"].shape[-2:]))
    rows, cols = inside.shift(-window.top, -window.left).slices()
    assert sample["image"].shape == (3, 64, 64)
    assert torch.equal(sample["image"][:, rows, cols], whole["image"][:, *inside.slices()])
    assert torch.equal(sample["mask"][rows, cols], whole["mask"][inside.slices()])
    assert Trainer(config).fit()["step"] == 2  # 5 windows in batches of 4, one epoch


def test_auto_class_weights_are_measured_on_the_training_set_and_saved(tmp_path):
    import numpy as np

    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(3):
        mask = np.zeros((64, 64), np.int64)
        mask[:8, :8] = 1  # 64 of 4,096 pixels: 1/63 as often as the background
        np.save(tmp_path / "data/images" / f"{i}.npy", np.zeros((3, 64, 64), np.float32))
        np.save(tmp_path / "data/masks" / f"{i}.npy", mask)
    auto = "model.outputs=[{name: mask, channels: 2, loss: ce, class_weights: auto}]"
    config = tiny(tmp_path / "run", "data.kind=folder", f"data.root={tmp_path / 'data'}",
                  "data.val_fraction=0", auto, "train.steps=1")  # fmt: skip
    trainer = Trainer(config)
    weights = trainer.config.model.outputs[0]["class_weights"]
    assert weights == [1.0, pytest.approx((4032 / 64) ** 0.5, abs=1e-3)]
    assert list(trainer.xt.head.outputs[0].class_weights) == weights
    trainer.fit()
    saved = Trainer(config, resume=tmp_path / "run")  # the run's config holds the numbers
    assert saved.config.model.outputs[0]["class_weights"] == weights


def test_validation_scores_the_views_the_model_names(tmp_path):
    """model.tta reaches the training loop's evaluation: its scores are the mean over the
    views' probabilities, as a Predictor with those views gives, not the plain ones."""
    from xtimage.predict import Predictor

    config = tiny(tmp_path, "model.tta=d4", "data.val_samples=3")
    trainer = Trainer(config)
    viewed = trainer.evaluate()
    model = trainer.model.eval()
    for tta in ("d4", "none"):
        expected = Predictor(model, config.model, tta=tta).evaluate(trainer.data.val)
        same = viewed["foreground_iou"] == pytest.approx(expected["foreground_iou"], abs=1e-9)
        assert same == (tta == "d4"), (tta, viewed, expected)
