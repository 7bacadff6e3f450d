"""Checkpoints: one safetensors file each, carrying the architecture, loaded without pickle.

A checkpoint is a single ``.safetensors`` file, written to a temporary name and renamed
(`xtimage.io.atomic`), so an interrupted save leaves the previous checkpoint intact:

- tensors: the model's weights under their ``state_dict`` names (``safetensors.torch
  .load_file`` gives a ready state dict), and for resuming, ``@optimizer/<param>/<key>``
  (AdamW moments, step counts) and ``@rng/...`` (random generator states);
- metadata ``xtimage``: JSON with the resolved run config (the architecture and the
  region plan recipe are its ``model`` section), the step, epoch and position within the
  epoch, the metrics, and the non-tensor training state (optimizer hyper-parameters,
  gradient scaler, numpy and Python generator states).

Nothing is unpickled on load: safetensors holds raw tensors and JSON holds the rest. The
weights are saved from the unwrapped model, so a checkpoint rebuilds with
`xtimage.build.build_model` on any device and any number of processes (nanoGPT's
``model_args`` habit, and the pitfall of saving a DDP wrapper avoided).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from xtimage.config import RunConfig, config_from_dict
from xtimage.errors import InputError, XTError
from xtimage.integrity import digest_tensors
from xtimage.io.atomic import atomic_path

FORMAT = "xtimage-checkpoint/1"
_OPT, _RNG = "@optimizer/", "@rng/"


@dataclass
class Checkpoint:
    """A checkpoint read back.

    Attributes:
        config: the run's resolved config.
        weights: the model's state dict.
        step: optimizer steps done.
        epoch: the epoch the next step belongs to.
        position: samples of that epoch already used.
        metrics: evaluation metrics at save time (may be empty).
        state: the JSON training state (optimizer groups, scaler, best metric, RNG).
        tensors: the training-state tensors (``@optimizer/...``, ``@rng/...``).
        path: where it was read from.
    """

    config: RunConfig
    weights: dict[str, torch.Tensor]
    step: int = 0
    epoch: int = 0
    position: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None

    @property
    def resumable(self) -> bool:
        """Whether the optimizer and RNG states are inside (a "last", not a "best")."""
        return "optimizer" in self.state


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: RunConfig,
    *,
    step: int = 0,
    epoch: int = 0,
    position: int = 0,
    metrics: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically; with ``optimizer`` it can resume training exactly.

    Args:
        path: the ``.safetensors`` file to write.
        model: the model (unwrapped: the one `build_model` returns).
        config: the run's resolved config.
        step: optimizer steps done.
        epoch: the epoch of the next step.
        position: samples of ``epoch`` already used.
        metrics: evaluation metrics to keep with the weights.
        optimizer: include its state and the random generator states (for resuming).
        scaler: the fp16 gradient scaler, if any.
        extra: further JSON-able training state (e.g. the best metric so far).
    """
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    state: dict[str, Any] = dict(extra or {})
    if optimizer is not None:
        opt_state = optimizer.state_dict()
        plain: dict[str, dict[str, Any]] = {}
        for index, values in opt_state["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{_OPT}{index}/{key}"] = value.detach().cpu().contiguous().clone()
                else:
                    plain.setdefault(str(index), {})[key] = value
        state["optimizer"] = {"param_groups": opt_state["param_groups"], "plain": plain}
        state["rng"] = _rng_state(tensors)
        if scaler is not None and scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
    meta = {
        "format": FORMAT,
        "digest": digest_tensors(tensors),
        "config": config.to_dict(),
        "step": step,
        "epoch": epoch,
        "position": position,
        "metrics": metrics or {},
        "state": state,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        _save_file(tensors, temp, metadata={"xtimage": json.dumps(meta, default=_plain)})
        umask = os.umask(0)
        os.umask(umask)
        temp.chmod(0o666 & ~umask)  # as a plain open() would make it, readable by the group
    return path


def _save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """A safetensors file written at ``path`` itself. (safetensors' ``save_file`` writes a
    hidden ``.tmpXXXXXX`` beside it first, which a kill leaves behind and nothing can tell
    from a live writer's; ``path`` is an `AtomicPath` temporary, which the next run removes.)
    """
    path.write_bytes(save(tensors, metadata=metadata))


def _plain(value: Any) -> Any:
    """JSON for the few non-JSON values in optimizer groups (tuples are lists already)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's JSON")


def read_checkpoint(path: str | Path, best: bool = False) -> Checkpoint:
    """Read a checkpoint (never unpickles anything).

    Args:
        path: a checkpoint file, or a run folder (its ``checkpoints/last.safetensors``, or
            with ``best`` its best checkpoint where it has one).
    """
    path = resolve_checkpoint(path, best)
    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise InputError(
            f"{path}: not a readable safetensors checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); the file is damaged or not a "
            f"checkpoint (xtimage writes .safetensors checkpoints)"
        ) from exc
    if "xtimage" not in header:
        raise InputError(
            f"{path}: a safetensors file without xtimage metadata (plain weights?); "
            f"checkpoints are written by `xt train`"
        )
    try:
        meta = json.loads(header["xtimage"])
    except ValueError as exc:
        raise InputError(f"{path}: the checkpoint's metadata is not JSON ({exc}); the file "
                         f"is damaged") from exc  # fmt: skip
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise InputError(f"{path}: checkpoint format {found!r}, expected {FORMAT}")
    missing = [k for k in ("config", "step", "epoch", "position", "metrics", "state")
               if k not in meta]  # fmt: skip
    if missing:
        raise InputError(
            f"{path}: the checkpoint's metadata lacks {missing}; the file is damaged or was "
            f"not written by `xt train`"
        )
    if "digest" in meta and digest_tensors(tensors) != meta["digest"]:
        raise InputError(
            f"{path}: the tensors do not match the digest stored with them; the file is "
            f"damaged (a bad copy or disk): use another copy or an earlier checkpoint"
        )
    weights = {k: v for k, v in tensors.items() if not k.startswith("@")}
    state_tensors = {k: v for k, v in tensors.items() if k.startswith("@")}
    bad = [k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise InputError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values ({bad[:3]}); "
            f"the training diverged before this checkpoint: use an earlier one or lower "
            f"train.lr"
        )
    try:
        config = config_from_dict(meta["config"])
    except (XTError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: the checkpoint's config is not valid ({exc})") from exc
    return Checkpoint(
        config=config,
        weights=weights,
        step=meta["step"],
        epoch=meta["epoch"],
        position=meta["position"],
        metrics=meta["metrics"],
        state=meta["state"],
        tensors=state_tensors,
        path=path,
    )


def discard_failed_run(run_dir: Path) -> None:
    """Remove what a fresh run wrote before it failed without a checkpoint (its config,
    logs), so that the folder is not mistaken for a run; a folder with a checkpoint or
    anything else in it is left alone."""
    if (run_dir / "checkpoints" / "last.safetensors").exists():
        return
    for name in ("config.yaml", "metrics.jsonl"):
        (run_dir / name).unlink(missing_ok=True)
    for folder in (run_dir / "checkpoints", run_dir):
        with contextlib.suppress(OSError):  # not empty (or gone): left as it is
            folder.rmdir()


def resolve_checkpoint(path: str | Path, best: bool = False) -> Path:
    """A checkpoint file from a file or a run folder (``checkpoints/last`` in it, or with
    ``best`` its best checkpoint where it has one)."""
    path = Path(path)
    if path.is_dir():
        names = ["checkpoints/last.safetensors", "last.safetensors"]
        if best:
            names.insert(0, "checkpoints/best.safetensors")
        for name in names:
            if (path / name).is_file():
                return path / name
        raise InputError(f"{path}: no checkpoints/last.safetensors in this run folder")
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file or run folder")
    return path


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model a checkpoint describes and load its weights (eval mode).

    Returns:
        The model and the checkpoint (its ``config`` says how to use the model).
    """
    from xtimage.build import build_model

    ckpt = read_checkpoint(path)
    model = build_model(ckpt.config.model, load_pretrained=False)
    load_weights(model, ckpt)
    return model.to(device).eval(), ckpt


def load_weights(
    model: nn.Module,
    ckpt: Checkpoint,
    built_by: str = "the model its config builds",
    fix: str = "the config in the file does not describe these weights (edited, or from "
    "another architecture)",
) -> None:
    """Load a checkpoint's weights; a mismatch names the tensors that differ.

    Args:
        built_by: the model the weights must fit, and ``fix`` what to do: for the message.
    """
    own = model.state_dict()
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in ckpt.weights.items()
        if k in own and v.shape != own[k].shape
    ]
    if shapes:
        raise InputError(
            f"{ckpt.path}: {len(shapes)} weight tensor(s) do not fit {built_by} (checkpoint "
            f"vs model: {'; '.join(shapes[:3])}); {fix}"
        )
    result = model.load_state_dict(ckpt.weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(
            f"{ckpt.path}: weights do not fit {built_by} (missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}); {fix}"
        )


def restore_training(
    ckpt: Checkpoint,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Put the optimizer, gradient scaler and random generators back as they were."""
    if not ckpt.resumable:
        raise InputError(
            f"{ckpt.path}: holds weights only (a best checkpoint?); resume from the run's "
            f"checkpoints/last.safetensors"
        )
    saved = ckpt.state["optimizer"]
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in ckpt.tensors.items():
        if key.startswith(_OPT):
            index, name = key[len(_OPT) :].split("/", 1)
            state.setdefault(int(index), {})[name] = tensor
    for index, values in saved["plain"].items():
        state.setdefault(int(index), {}).update(values)
    groups = saved["param_groups"]
    for group, current in zip(groups, optimizer.param_groups, strict=True):
        for key, value in group.items():  # JSON made tuples (AdamW's betas) lists
            if isinstance(current.get(key), tuple):
                group[key] = tuple(value)
        for key, value in current.items():  # keys newer than the checkpoint (lr_scale)
            group.setdefault(key, value)
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    if scaler is not None and "scaler" in ckpt.state:
        scaler.load_state_dict(ckpt.state["scaler"])
    _set_rng_state(ckpt.state["rng"], ckpt.tensors)


def _rng_state(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Generator states: torch's as tensors (added to ``tensors``), numpy's and Python's."""
    tensors[f"{_RNG}torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{_RNG}cuda/{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors[f"{_RNG}numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    return {
        "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }


def _set_rng_state(state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors[f"{_RNG}torch"])
    cuda = sorted(
        (k for k in tensors if k.startswith(f"{_RNG}cuda/")), key=lambda k: int(k.split("/")[-1])
    )
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
    kind, pos, has_gauss, gauss = state["numpy"]
    keys = tensors[f"{_RNG}numpy"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
