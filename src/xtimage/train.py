"""The training loop: `Trainer(config).fit()`, on one CPU or many GPUs, resumable exactly.

xT's recipe (Gupta et al., "xT: Nested Tokenization for Larger Context in Large Images",
ICML 2024): AdamW, a cosine learning rate per step after a linear warm-up, gradient
clipping (5.0 in the release), on whole images cut into regions. One optimizer step:

1. every process takes its share of the global batch (every W-th image) and runs
   ``accumulate`` micro-batches in the chosen mode: *direct* (all regions at once, full
   autograd; the release's way), *exact* (the engine streams regions, exact gradients),
   *streaming* (Transformer-XL style, detached memory) or *frozen* (cached features of a
   frozen backbone);
2. gradients are summed weighted by each micro-batch's loss normaliser (images, or valid
   pixels) and reduced over processes (`xtimage.distributed.reduce_gradients`), so the
   result is the mean gradient of the global batch whatever the split;
3. unscale (fp16), clip, set the learning rate, step.

Resuming is exact: the order of an epoch depends on (seed, epoch) only, the augmentation
of a sample on (seed, epoch, position) only (never on the worker or the process that
loads it), and a checkpoint stores the model, optimizer, scaler, step, epoch, position in
the epoch and the random generators. Checkpoints resume on any number of processes.

Over 500 lines because the loop, its four step modes and its checkpointing are one
concept, read top to bottom (nanoGPT's ``train.py`` habit).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xtimage.allocator import lean_host_memory
from xtimage.build import build_model, unwrap
from xtimage.checkpoint import (
    discard_failed_run,
    load_weights,
    read_checkpoint,
    restore_training,
    save_checkpoint,
)
from xtimage.config import RunConfig, save_config
from xtimage.data.registry import Datasets, build_datasets
from xtimage.data.sampling import seeded_global_rng
from xtimage.distributed import World, all_reduce_sum, init_distributed, reduce_gradients
from xtimage.errors import ConfigError
from xtimage.io.atomic import output_dir, remove_stale_in
from xtimage.model import XT
from xtimage.runtime import autocast, resolve_amp, resolve_device, to_channels_last
from xtimage.tasks import get_task

log = logging.getLogger(__name__)


def lr_at(step: int, *, lr: float, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up to ``lr`` over
    ``warmup`` steps, then a cosine down to ``lr * min_ratio`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _by_prefix(
    model: torch.nn.Module, prefixes: Iterable[str], key: str
) -> dict[str, list[torch.nn.Parameter]]:
    """Trainable parameters under each name prefix (a module path), each parameter under
    the longest prefix that begins its name; a prefix that names none is refused, in the
    words of config key ``key``."""
    ordered = sorted(prefixes, key=len, reverse=True)
    found: dict[str, list[torch.nn.Parameter]] = {q: [] for q in ordered}
    for name, p in model.named_parameters():
        prefix = next((q for q in ordered if name == q or name.startswith(q + ".")), None)
        if p.requires_grad and prefix is not None:
            found[prefix].append(p)
    unused = sorted(q for q, params in found.items() if not params)
    if unused:
        raise ConfigError(
            f"{key}: {unused} names no trainable parameter; name a module path "
            f"such as {next(n for n, _ in model.named_modules() if n)!r}"
        )
    return found


def param_groups(
    model: torch.nn.Module, weight_decay: float, lr_scale: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Trainable parameters, with weight decay on matrices and kernels only (not on
    norms, biases, embeddings of one dimension), and each group's learning-rate
    multiplier ``lr_scale``: the longest prefix of ``lr_scale`` that begins a
    parameter's name (a module path, e.g. ``context.proj``) gives it, else 1."""
    lr_scale = lr_scale or {}
    scale_of = {
        id(p): float(lr_scale[prefix])
        for prefix, params in _by_prefix(model, lr_scale, "train.lr_scale").items()
        for p in params
    }
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((scale_of.get(id(p), 1.0), p.ndim >= 2), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
        for (scale, decay), params in groups.items()
        if params or scale == 1.0
    ]


def joining(
    model: torch.nn.Module, join_at: dict[str, int]
) -> list[tuple[int, list[torch.nn.Parameter]]]:
    """``train.join_at`` as (step, parameters) pairs: the parameters under each prefix
    that stay as they are before that optimizer step."""
    found = _by_prefix(model, join_at, "train.join_at")
    return [(join_at[prefix], params) for prefix, params in found.items()]


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy's and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class _Samples(torch.utils.data.Dataset):
    """Training samples by key ``(epoch, position, item)``, augmented reproducibly.

    The augmentation of a sample draws from a generator seeded by (seed, epoch,
    position), and so do the global generators while the data set makes the sample
    (`seeded_global_rng`, for transforms inside it such as iNaturalist's RandAugment):
    the same in any worker, any process and after a resume.
    """

    def __init__(self, dataset: Any, augment: Any, seed: int) -> None:
        self.dataset, self.augment, self.seed = dataset, augment, seed

    def __getitem__(self, key: tuple[int, int, Any]) -> tuple[tuple[int, int, Any], dict]:
        epoch, position, item = key
        with seeded_global_rng([self.seed, epoch, position, 1]):  # transforms inside the set
            sample = self.dataset[item]
        if self.augment is not None:
            sample = self.augment(sample, rng=np.random.default_rng([self.seed, epoch, position]))
        return key, sample


def _as_list(batch: list) -> list:
    return batch


class _Log:
    """Metrics rows to ``metrics.jsonl`` and, when installed, TensorBoard (rank 0)."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.board = None
        if enabled:
            import importlib.util

            if importlib.util.find_spec("tensorboard") is not None:
                from torch.utils.tensorboard import SummaryWriter

                self.board = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, row: dict[str, Any], prefix: str) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.board is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and key not in ("step", "epoch"):
                    self.board.add_scalar(f"{prefix}/{key}", value, row["step"])

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


class Trainer:
    """Trains the model a `RunConfig` describes; see the module docstring.

    Args:
        config: the run (resolved; `xtimage.config.load_config`).
        resume: a checkpoint file or run folder to continue from, or None. Its model
            section must equal ``config.model``; the rest of ``config`` may change (more
            steps, another number of processes...).
        overwrite: allow a fresh run in a folder that already holds checkpoints.

    Example:
        >>> metrics = Trainer(load_config("synthetic_seg", ["train.steps=50"])).fit()
    """

    def __init__(
        self, config: RunConfig, *, resume: str | Path | None = None, overwrite: bool = False
    ) -> None:
        self.config = config.check()
        t = config.train
        self.device = resolve_device(t.device)
        self.world: World = init_distributed(self.device.type)
        self.autocast, fp16 = resolve_amp(t.amp, self.device)
        self.run_dir = Path(t.out)
        ckpt = read_checkpoint(resume) if resume is not None else None
        if ckpt is not None and config.model.classes is None:
            config.model.classes = ckpt.config.model.classes  # filled in from the data
        if ckpt is not None and ckpt.config.model != config.model:
            raise ConfigError(
                f"{ckpt.path}: the checkpoint's model section differs from the config's; "
                f"resume with the run's own config (xt train --resume RUN_DIR)"
            )
        last = self.run_dir / "checkpoints" / "last.safetensors"
        if ckpt is None and last.exists() and not overwrite:
            raise ConfigError(
                f"{self.run_dir} already holds a run ({last}); pass --resume {self.run_dir} "
                f"to continue it, --overwrite to start again, or choose train.out=<new folder>"
            )

        seed_everything(t.seed)
        self.task = get_task(config.model)
        self.data: Datasets = build_datasets(config)
        if self.data.classes is not None and config.model.classes is None:
            config.model.classes = list(self.data.classes)
        if ckpt is None:
            self.task.fit_to_data(self.data.train)  # e.g. class weights measured on it
        seed_everything(t.seed)
        self.model = build_model(config.model).to(self.device)
        if t.channels_last:
            to_channels_last(self.model)
        if t.lean_memory:
            lean_host_memory()
        self.xt: XT = unwrap(self.model)
        self.mode = self._check_mode(t.mode)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.engine = None
        if isinstance(self.model, XT):
            from xtimage.engine import Engine

            self.engine = Engine(self.model, t.region_batch, self.device,
                                 autocast=self.autocast, scaler=self.scaler)  # fmt: skip
        self.cache = None
        if self.mode == "frozen":
            from xtimage.engine.cache import TokenCache

            self.cache = TokenCache(self.run_dir / "token_cache", self.xt)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        groups = param_groups(self.model, t.weight_decay, t.lr_scale)
        self.joining = joining(self.model, t.join_at)
        if t.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=t.lr)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)

        self.step, self.epoch, self.position = 0, 0, 0
        self.best: float | None = None
        self.metrics: dict[str, Any] = {}
        self.metric_name = t.metric or self.task.best_metric
        if ckpt is not None:
            load_weights(self.model, ckpt)
            restore_training(ckpt, self.optimizer, self.scaler)
            self.step, self.epoch, self.position = ckpt.step, ckpt.epoch, ckpt.position
            self.best, self.metrics = ckpt.state.get("best"), ckpt.metrics
            log.info("resumed %s at step %d (epoch %d)", ckpt.path, self.step, self.epoch)
        elif t.init is not None:
            start = read_checkpoint(t.init, best=True)
            load_weights(self.model, start, "the model of this run's config",
                         "train.init takes weights of the same architecture (the same "
                         "backbone, widths, depths and heads)")  # fmt: skip
            log.info("started from the weights of %s (step %d)", start.path, start.step)
        self.total_steps = t.steps or t.epochs * self.steps_per_epoch
        self.fresh = ckpt is None
        if self.world.main:
            output_dir(self.run_dir, "run folder (train.out)")
            for folder in (self.run_dir, self.run_dir / "checkpoints"):  # a killed run's
                remove_stale_in(folder)  # temporaries, also of a "best" not written again
            save_config(config, self.run_dir / "config.yaml")
            if ckpt is None:  # a fresh run: nothing of an earlier one may look like ours
                best = self.run_dir / "checkpoints" / "best.safetensors"
                for old in (self.run_dir / "metrics.jsonl", best, last):
                    old.unlink(missing_ok=True)

    def _check_mode(self, mode: str) -> str:
        model = self.config.model
        if model.baseline == "downsample" and mode not in ("auto", "direct"):
            raise ConfigError(
                f"train.mode={mode}: the downsample baseline runs one region per image; use "
                f"train.mode=direct"
            )
        if mode == "frozen":
            if not model.frozen:
                raise ConfigError("train.mode=frozen needs model.frozen=true")
            if self.config.data.augment:
                raise ConfigError(
                    "train.mode=frozen caches each sample's features; augmentation makes "
                    "every epoch new: set data.augment=false"
                )
        if mode == "streaming" and not self.xt.context.streamable:
            raise ConfigError(
                f"train.mode=streaming needs a streamable context encoder; "
                f"'{model.context}' is global: use train.mode=exact"
            )
        return mode

    @property
    def steps_per_epoch(self) -> int:
        t = self.config.train
        return math.ceil(math.ceil(len(self.data.train) / t.batch_size) / t.accumulate)

    # ------------------------------------------------------------------ data

    def plan(self, epoch: int) -> list[Any]:
        """The keys of an epoch's training samples, in order (a function of seed, epoch)."""
        train = self.data.train
        if hasattr(train, "plan"):
            return list(train.plan(epoch))
        seed = self.config.train.seed
        return np.random.default_rng([seed, epoch]).permutation(len(train)).tolist()

    def _loader(self, batches: list[list[Any]], first: int) -> torch.utils.data.DataLoader:
        """This process's share of batches ``first...`` of the epoch: every W-th image."""
        t, d, w = self.config.train, self.config.data, self.world
        b = t.batch_size
        shares = [
            [(self.epoch, k * b + j, batch[j]) for j in range(w.rank, len(batch), w.size)]
            for k, batch in enumerate(batches)
            if k >= first
        ]
        augment = None
        if d.augment:
            from xtimage.data.sampling import Augment

            turns = d.turns and self.data.turns_keep_labels
            augment = Augment(flip=turns, rot90=turns, jitter=d.jitter)
        return torch.utils.data.DataLoader(
            _Samples(self.data.train, augment, t.seed),
            batch_sampler=shares,
            collate_fn=_as_list,
            num_workers=t.workers,
            generator=torch.Generator().manual_seed(t.seed),  # not the global generator
            pin_memory=self.device.type == "cuda",
        )

    # ------------------------------------------------------------------ one step

    def _micro_step(self, keyed: list[tuple[tuple, dict]]) -> tuple[float, float]:
        """Forward and backward one micro-batch; returns (loss * n, n), ``n`` its loss
        normaliser. Leaves ``sum_i n_i * grad_i`` in ``.grad`` (see `reduce_gradients`)."""
        if not keyed:
            return 0.0, 0.0
        images = [s["image"] for _, s in keyed]
        targets = [self.task.targets(s) for _, s in keyed]
        n = sum(self.task.loss_weight(im) for im in images)
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1 / n)
        mode = self._mode(images)
        if mode == "direct":
            loss = self._direct_step(images, targets)
        else:
            batch = self.task.collate(targets)
            if mode == "exact":
                loss = self.engine.exact_step(images, batch)
            elif mode == "streaming":
                loss = self.engine.streaming_step(images, batch)
            else:
                d = self.config.data
                keys = [f"{d.kind}:{d.seed}:{key[2]}" for key, _ in keyed]
                loss = self.engine.frozen_step(images, batch, keys, self.cache)
        grads = [p.grad for p in self.params if p.grad is not None]
        torch._foreach_mul_(grads, n)
        return float(loss) * n, n

    def _mode(self, images: list[torch.Tensor]) -> str:
        """The mode of a micro-batch: "auto" is direct when its regions fit in
        ``region_batch`` (and images share a size), else exact; always direct for a head
        that trains only all at once (a batch-norm decoder, a Dice loss)."""
        if self.mode != "auto":
            return self.mode
        if self.engine is None:
            return "direct"
        same = all(im.shape == images[0].shape for im in images)
        regions = sum(self.xt.plan(*im.shape[-2:]).num_regions for im in images)
        whole_only = self.xt.head.dense and not self.xt.head.decomposable
        fits = regions <= self.config.train.region_batch or whole_only
        return "direct" if same and fits else "exact"

    def _direct_step(self, images: list[torch.Tensor], targets: list[Any]) -> float:
        """All regions of the micro-batch at once with full autograd; returns the loss."""
        if any(im.shape != images[0].shape for im in images):
            raise ConfigError(
                "train.mode=direct stacks a batch, but its images differ in size; use "
                "train.mode=exact, or train on windows of one size (data.window)"
            )
        x = torch.stack(images).to(self.device, non_blocking=True)  # (B, C, H, W)
        head = self.xt.head
        with autocast(self.device, self.autocast):
            out = self.model(x)
        if not head.dense:
            loss = head.loss(out.float(), torch.stack(targets).to(self.device))
        else:
            stacked = {k: torch.stack([t[k] for t in targets]).to(self.device) for k in targets[0]}
            valid = torch.ones(x.shape[0], *x.shape[-2:], dtype=torch.bool, device=self.device)
            loss = head.batch_loss(out.float(), stacked, valid)
        self.scaler.scale(loss).backward()
        return loss.item()

    def _optimizer_step(self, weighted_loss: float, normaliser: float) -> tuple[float, float]:
        """Reduce, unscale, clip, step; returns the global loss and gradient norm."""
        t = self.config.train
        for at, params in self.joining:
            if self.step < at:  # not yet joined: no update, no state, no share of the clip
                for p in params:
                    p.grad = None  # on every process: the reduction skips them too
        loss, _ = reduce_gradients(self.params, weighted_loss, normaliser)
        self.scaler.unscale_(self.optimizer)
        max_norm = t.clip if t.clip is not None else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        lr = lr_at(
            self.step, lr=t.lr, warmup=t.warmup, total=self.total_steps, min_ratio=t.min_lr_ratio
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return loss, norm

    # ------------------------------------------------------------------ the loop

    def fit(self, until_step: int | None = None) -> dict[str, Any]:
        """Train to ``train.steps`` (or ``train.epochs``), evaluating and checkpointing.

        Args:
            until_step: pause after this optimizer step (a checkpoint is written; a new
                `Trainer` with ``resume`` continues exactly).

        Returns:
            ``step``, ``epoch``, ``loss`` (mean of the last logged steps), ``metrics``
            (the last evaluation), ``best`` (the best value of ``metric``), ``run_dir``,
            ``stopped``: why it ended, "steps" (all done), "time" (``train.max_minutes``:
            the last model is evaluated too) or "paused" (``until_step``).
        """
        t = self.config.train
        main = self.world.main
        logger = _Log(self.run_dir, main)
        start = time.monotonic()
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not (t.progress and main),
            dynamic_ncols=True,
        )
        recent: list[float] = []
        last_loss: float | None = None
        seen, tick = 0, time.monotonic()
        evaluated_at = checkpointed_at = -1
        stop = self.step >= self.total_steps
        stopped = "steps" if stop else "running"
        try:
            while not stop:
                items = self.plan(self.epoch)
                batches = [items[i : i + t.batch_size] for i in range(0, len(items), t.batch_size)]
                first = self.position // t.batch_size
                micro, weighted, normaliser = 0, 0.0, 0.0
                self.model.train()
                for k, keyed in enumerate(self._loader(batches, first), start=first):
                    if micro == 0:
                        self.optimizer.zero_grad(set_to_none=True)
                    w, n = self._micro_step(keyed)
                    weighted, normaliser, micro = weighted + w, normaliser + n, micro + 1
                    seen += len(batches[k])
                    last_batch = k == len(batches) - 1
                    if micro < t.accumulate and not last_batch:
                        continue
                    loss, norm = self._optimizer_step(weighted, normaliser)
                    micro, weighted, normaliser = 0, 0.0, 0.0
                    self.position = (k + 1) * t.batch_size
                    if last_batch:
                        self.epoch, self.position = self.epoch + 1, 0
                    recent.append(loss)
                    bar.set_postfix(loss=f"{loss:.4f}", epoch=self.epoch, refresh=False)
                    bar.update(1)
                    if self.step % t.log_every == 0 or self.step == self.total_steps:
                        last_loss = sum(recent) / len(recent)
                        row = {
                            "step": self.step,
                            "epoch": self.epoch,
                            "loss": last_loss,
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "grad_norm": norm,
                            "images_per_s": seen / max(time.monotonic() - tick, 1e-9),
                            "time_s": time.monotonic() - start,
                        }
                        logger.write(row, "train")
                        recent, seen, tick = [], 0, time.monotonic()
                    due_eval = (t.eval_every and self.step % t.eval_every == 0) or (
                        not t.eval_every and last_batch
                    )
                    if due_eval:
                        self._evaluate(logger)
                        evaluated_at = self.step
                    if (t.checkpoint_every and self.step % t.checkpoint_every == 0) or (
                        not t.checkpoint_every and due_eval
                    ):
                        self.save()
                        checkpointed_at = self.step
                    if self.step >= self.total_steps:
                        stopped = "steps"
                    elif until_step is not None and self.step >= until_step:
                        stopped = "paused"
                    elif self._out_of_time(start):
                        stopped = "time"
                    stop = stopped != "running"
                    if stop:
                        break
            if stopped in ("steps", "time") and evaluated_at != self.step:
                self._evaluate(logger)  # the last model is scored (and kept if best)
            if checkpointed_at != self.step:
                self.save()
        except BaseException:
            if main and self.fresh:  # a run that failed before its first checkpoint
                logger.close()
                discard_failed_run(self.run_dir)
            raise
        finally:
            bar.close()
            logger.close()
        if recent:
            last_loss = sum(recent) / len(recent)
        return {
            "step": self.step,
            "epoch": self.epoch,
            "loss": last_loss,
            "metrics": self.metrics,
            "best": self.best,
            "run_dir": str(self.run_dir),
            "stopped": stopped,
        }

    def _out_of_time(self, start: float) -> bool:
        """Whether ``max_minutes`` has passed, agreed by every process."""
        limit = self.config.train.max_minutes
        if limit is None:
            return False
        late = torch.tensor([float(time.monotonic() - start > 60 * limit)])
        return bool(all_reduce_sum(late) > 0)

    # ------------------------------------------------------------------ eval, save

    def evaluate(self) -> dict[str, Any]:
        """The task's metrics on the validation set (every process scores its share)."""
        from xtimage.predict import Predictor

        if not len(self.data.val):
            return {}
        t = self.config.train
        predictor = Predictor(
            self.model,
            self.config.model,
            device=self.device,
            region_batch=t.region_batch,
            autocast=self.autocast,
        )
        try:
            return predictor.evaluate(self.data.val, world=self.world)
        finally:
            self.model.train()

    def _evaluate(self, logger: _Log) -> None:
        metrics = self.evaluate()
        if not metrics:
            return
        self.metrics = metrics
        logger.write({"step": self.step, "epoch": self.epoch, **_scalars(metrics)}, "val")
        value = metrics.get(self.metric_name)
        if value is None:
            raise ConfigError(
                f"train.metric={self.metric_name!r} is not among the evaluation's metrics: "
                f"{', '.join(sorted(_scalars(metrics)))}"
            )
        if self.best is None or value > self.best:
            self.best = value
            if self.world.main:
                save_checkpoint(
                    self.run_dir / "checkpoints" / "best.safetensors",
                    self.model,
                    self.config,
                    step=self.step,
                    epoch=self.epoch,
                    position=self.position,
                    metrics=metrics,
                )

    def save(self) -> Path:
        """Write ``checkpoints/last.safetensors`` (rank 0), enough to resume exactly."""
        path = self.run_dir / "checkpoints" / "last.safetensors"
        if self.world.main:
            save_checkpoint(
                path,
                self.model,
                self.config,
                step=self.step,
                epoch=self.epoch,
                position=self.position,
                metrics=self.metrics,
                optimizer=self.optimizer,
                scaler=self.scaler,
                extra={"best": self.best, "metric": self.metric_name},
            )
        return path


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The single-number metrics (lists and the thresholds left out)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}
