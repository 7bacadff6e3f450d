"""Convert the xT release's checkpoints into xtimage checkpoints.

The authors' release (github.com/bair-climate-initiative/xT; weights on the Hugging Face
hub as ``swin-t-hyper-512-256-top1.ckpt`` and the like) saves ``torch.save({"epoch",
"state_dict", "optimizer_state_dict", "metrics"})`` of its ``xT`` module: ``encoder.*``
(their wrapper around a timm Swin-V2 ``features_only`` model, or a ``hiera-transformer``
Hiera) and ``decoder.*`` (their classifier), keys prefixed ``module.`` when saved from
DistributedDataParallel. `convert_checkpoint` reads such a file without running pickle
code (``torch.load(weights_only=True)``), recognises the family from the tensor names and
shapes, builds the matching xtimage model (a preset's backbone and region, with
``model.release=True`` and the context read off the checkpoint), fills it and writes an
xtimage checkpoint (`xtimage.checkpoint.save_checkpoint`) that carries the architecture.

Their decoder families and where they go:

- "naive" classifier (``decoder.layers.{0,2,3}``: Linear, GELU, LayerNorm, Linear on the
  mean of the last map): context ``none``, the classifier MLP (``class_mlp_ratio``), no
  token projection (their head sees the backbone's channels).
- "xl" classifier with Hyper attention (``decoder.layers.N.attn``: LLaMA-style blocks):
  ``input_proj`` -> the token projection, ``cls_token`` -> `XT.cls_token`, blocks -> the
  hyper encoder's (gate and up projections fused into ``fc_in``), ``cls`` -> the head's
  LayerNorm and linear layer.
- "xl" classifier with Mamba (``decoder.layers.N.mixer``): the mamba encoder's blocks
  (the mixer's tensors have the same names in both).

What is not converted: their Transformer-XL module (present in the release, never built
by its configs) and the chunked "in-context patches" path, which carries no memory; no
weights or configs of theirs use either.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xtimage.config import ModelConfig, RunConfig
from xtimage.errors import ConfigError, InputError

# Globals a release checkpoint may hold besides tensors (numpy scalars in ``metrics``).
_NUMPY_GLOBALS: list[Any] = []


def _safe_globals() -> list[Any]:
    if not _NUMPY_GLOBALS:
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        _NUMPY_GLOBALS.extend([core.multiarray.scalar, np.dtype])
        _NUMPY_GLOBALS.extend(
            getattr(np.dtypes, name)
            for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType")
            if hasattr(np, "dtypes") and hasattr(np.dtypes, name)
        )
    return _NUMPY_GLOBALS


@dataclass
class ReleaseCheckpoint:
    """A release checkpoint read back.

    Attributes:
        state: its weights, ``module.`` prefix removed.
        epoch: the epoch it was saved at, if it says.
        family: ``{"backbone": "swin" | "hiera", "head": "naive" | "hyper" | "mamba"}``.
    """

    state: dict[str, torch.Tensor]
    epoch: int | None = None
    family: dict[str, str] = field(default_factory=dict)


def read_release_checkpoint(path: str | Path) -> ReleaseCheckpoint:
    """Read an xT release checkpoint without executing pickle code.

    Raises:
        InputError: not a file, not a weights-only ``torch.save`` file (a pickle that
            would run code is refused here, before anything of it runs), or not the
            release's ``encoder.``/``decoder.`` state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError...: all one answer
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{path}: not a weights-only torch checkpoint, refused without running it "
            f"({first[:160]})"
        ) from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise InputError(
            f"{path}: not an xT release checkpoint (expected a dict with a 'state_dict' of "
            f"tensors named encoder.* and decoder.*)"
        )
    state = {re.sub(r"^module\.", "", k): v for k, v in state.items()}
    if not any(k.startswith("encoder.") for k in state) or not any(
        k.startswith("decoder.") for k in state
    ):
        raise InputError(
            f"{path}: not an xT release checkpoint (no encoder.* and decoder.* tensors; "
            f"found {', '.join(sorted(state)[:3])}...)"
        )
    epoch = payload.get("epoch") if isinstance(payload, dict) else None
    ckpt = ReleaseCheckpoint(state, epoch if isinstance(epoch, int) else None)
    ckpt.family = detect_family(ckpt.state, path)
    return ckpt


def detect_family(state: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> dict:
    """The backbone and decoder family of a release state dict, from its tensor names."""
    if "encoder.model.layers_0.blocks.0.norm1.weight" in state:
        backbone = "swin"
    elif "encoder.model.blocks.0.norm1.weight" in state:
        backbone = "hiera"
    else:
        raise InputError(f"{path}: an encoder that is neither the release's Swin-V2 nor Hiera")
    if "decoder.layers.0.mixer.A_log" in state:
        head = "mamba"
    elif "decoder.layers.0.attn.qkv.weight" in state:
        head = "hyper"
    elif "decoder.layers.3.weight" in state and "decoder.cls_token" not in state:
        head = "naive"
    else:
        raise InputError(
            f"{path}: a decoder that is none of the release's naive, Hyper or Mamba classifiers"
        )
    return {"backbone": backbone, "head": head}


def _depth(state: dict[str, torch.Tensor], prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def guess_preset(ckpt: ReleaseCheckpoint, filename: str = "") -> str:
    """The shipped preset of the release row a checkpoint belongs to: by its widths, and
    for Hyper at 256/256 by the release's file name (``swin-t-hyper-256-256-top1.ckpt``);
    the weights of 256/256 and 512/256 have the same shapes."""
    s, fam = ckpt.state, ckpt.family
    width = s["encoder.model.patch_embed.proj.weight"].shape[0]
    if fam["backbone"] == "swin":
        deep = _depth(s, "encoder.model.layers_2.blocks.")
        size = {96: "t" if deep <= 6 else "s", 128: "b", 192: "l"}.get(width)
        name = f"swin_{size}" if size else None
    else:
        name = {96: "hiera_b"}.get(width)
    if name is None:
        raise ConfigError(
            f"a {fam['backbone']} of width {width} matches no release preset; name the preset "
            f"(or a YAML file) with the backbone: xt convert SRC OUT PRESET"
        )
    preset = f"inat_reptilia_{name}" + ("" if fam["head"] == "naive" else f"_{fam['head']}")
    if fam["head"] == "hyper" and "256-256" in filename and name.startswith("swin"):
        preset += "_256"
    return preset


def release_model_config(base: ModelConfig, ckpt: ReleaseCheckpoint) -> ModelConfig:
    """``base`` (its backbone, region, channels) with the release's decoder as read off
    the checkpoint: context family, depth, widths and classes; ``release=True``."""
    s, head = ckpt.state, ckpt.family["head"]
    cfg = copy.deepcopy(base)
    cfg.pretrained = None
    cfg.release = True
    cfg.token_norm = False
    cfg.head = "classification"
    cfg.pool = None
    cfg.margin = 0
    cfg.baseline = "xt"
    if head == "naive":
        hidden, width = s["decoder.layers.0.weight"].shape
        cfg.context, cfg.context_kwargs, cfg.dim = "none", {}, width
        cfg.class_pool, cfg.class_mlp_ratio = "mean", hidden // width
        cfg.num_classes = s["decoder.layers.3.weight"].shape[0]
        return _checked(cfg)
    dim = s["decoder.input_proj.weight"].shape[0]
    cfg.dim, cfg.class_pool, cfg.class_mlp_ratio = dim, "cls", None
    cfg.num_classes = s["decoder.cls.1.weight"].shape[0]
    depth = _depth(s, "decoder.layers.")
    kept = dict(base.context_kwargs) if base.context == head else {}
    if head == "hyper":
        hidden = s["decoder.layers.0.mlp.gate_proj.weight"].shape[0]
        keys = ("lsh_num_projs", "block_size", "sample_size", "min_seq_len", "seed")
        cfg.context_kwargs = {k: kept[k] for k in keys if k in kept}
        cfg.context_kwargs.update(
            depth=depth, heads=max(dim // 128, 1), mlp_ratio=hidden / dim, causal=True
        )
    else:
        mixer = "decoder.layers.0.mixer."
        inner, d_state = s[mixer + "A_log"].shape
        cfg.context_kwargs = {k: kept[k] for k in ("chunk_size", "use_kernel") if k in kept}
        cfg.context_kwargs.update(
            depth=depth,
            d_state=d_state,
            d_conv=s[mixer + "conv1d.weight"].shape[-1],
            expand=inner // dim,
            dt_rank=s[mixer + "dt_proj.weight"].shape[1],
            bidirectional=True,
        )
    cfg.context = head
    return _checked(cfg)


def _checked(cfg: ModelConfig) -> ModelConfig:
    if cfg.classes is not None and len(cfg.classes) != cfg.num_classes:
        cfg.classes = None  # the preset's names are for another class count
    cfg.check()
    return cfg


def map_release_state(ckpt: ReleaseCheckpoint) -> tuple[dict, list[str]]:
    """The release's tensors under xtimage's names, and the source names left unused."""
    out: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    fam = ckpt.family
    for key, value in ckpt.state.items():
        new = _map_key(key, fam)
        if new is None:
            unused.append(key)
        elif isinstance(new, tuple):  # gate / up halves of the fused MLP input
            name, half = new
            out.setdefault(name, [None, None])[half] = value
        else:
            out[new] = value
    for name, parts in list(out.items()):
        if isinstance(parts, list):
            if any(p is None for p in parts):
                unused.extend(f"{name} (half)" for p in parts if p is not None)
                del out[name]
            else:
                out[name] = torch.cat(parts, dim=0)
    return out, unused


_HYPER = {
    "input_layernorm.weight": "norm1.weight",
    "post_attention_layernorm.weight": "norm2.weight",
    "attn.qkv.weight": "attn.qkv.weight",
    "attn.qkv.bias": "attn.qkv.bias",
    "attn.proj.weight": "attn.proj.weight",
    "attn.proj.bias": "attn.proj.bias",
    "mlp.down_proj.weight": "mlp.fc_out.weight",
}
_NAIVE = ("0", "2", "3")  # Linear, (GELU), LayerNorm, Linear: the same indices in ours


def _map_key(key: str, fam: dict[str, str]) -> str | tuple[str, int] | None:
    """One release tensor name -> xtimage's (a (name, half) pair for the fused MLP)."""
    if key.startswith("encoder.model."):
        rest = key[len("encoder.model.") :]
        if fam["backbone"] == "swin":
            rest = re.sub(r"^layers_(\d+)\.", r"layers.\1.", rest)
        elif rest == "pos_embed_abs":  # hiera-transformer's name for timm's pos_embed
            rest = "pos_embed"
        return f"region_encoder.backbone.{rest}"
    simple = {
        "decoder.input_proj.weight": "tokenizer.proj.weight",
        "decoder.input_proj.bias": "tokenizer.proj.bias",
        "decoder.cls_token": "cls_token",
        "decoder.cls.0.weight": "head.norm.weight",
        "decoder.cls.0.bias": "head.norm.bias",
        "decoder.cls.1.weight": "head.fc.weight",
        "decoder.cls.1.bias": "head.fc.bias",
    }
    if key in simple:
        return simple[key]
    m = re.match(r"decoder\.layers\.(\d+)\.(.+)$", key)
    if m is None:
        return None
    i, rest = m.groups()
    if fam["head"] == "naive":
        return f"head.fc.{i}.{rest}" if i in _NAIVE and "." not in rest else None
    if fam["head"] == "mamba":
        return f"context.layers.{i}.{rest}" if rest.startswith(("mixer.", "norm.")) else None
    if rest in _HYPER:
        return f"context.blocks.{i}.{_HYPER[rest]}"
    if rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
        return (f"context.blocks.{i}.mlp.fc_in.weight", 0 if "gate" in rest else 1)
    return None


@dataclass
class ConvertReport:
    """What `convert_checkpoint` did.

    Attributes:
        out: the xtimage checkpoint written (None when nothing was written).
        preset: the preset (or file) the backbone came from.
        family: the release family recognised.
        config: the model's architecture.
        used: release tensors loaded into the model.
        unused: release tensors the model has no place for.
        unfilled: model tensors the checkpoint did not provide (left at their init).
    """

    out: Path | None
    preset: str
    family: dict[str, str]
    config: ModelConfig
    used: int
    unused: list[str]
    unfilled: list[str]


def convert_checkpoint(
    src: str | Path,
    out: str | Path,
    config: RunConfig | str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    partial: bool = False,
) -> ConvertReport:
    """Convert an xT release checkpoint into an xtimage checkpoint.

    Args:
        src: the release's ``.ckpt`` file.
        out: the ``.safetensors`` checkpoint to write.
        config: the run config whose backbone and region to use: a `RunConfig`, a preset
            name or a YAML file; None: the release preset the checkpoint's widths match.
        overrides: ``key=value`` overrides of that config.
        partial: write even when some model tensors are not in the checkpoint.

    Raises:
        InputError: the source is not a release checkpoint, or its tensors do not fit
            the model (names the tensor and both shapes), or some model tensors stay
            unfilled without ``partial``.
    """
    from xtimage.build import build_model
    from xtimage.checkpoint import save_checkpoint
    from xtimage.config import load_config

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"{out}: the xtimage checkpoint is a .safetensors file; name it so")
    ckpt = read_release_checkpoint(src)
    if isinstance(config, RunConfig):
        run, preset = copy.deepcopy(config), "(given config)"
    else:
        preset = str(config) if config is not None else guess_preset(ckpt, Path(src).name)
        run = load_config(preset, list(overrides or []))
    run.model = release_model_config(run.model, ckpt)
    model = build_model(run.model, load_pretrained=False)
    mapped, unused = map_release_state(ckpt)
    target = model.state_dict()
    for name, value in mapped.items():
        if name in target and tuple(target[name].shape) != tuple(value.shape):
            raise InputError(
                f"{src}: tensor {name} has shape {tuple(value.shape)} in the checkpoint but "
                f"{tuple(target[name].shape)} in the {preset} model; give the preset whose "
                f"backbone the checkpoint was trained with"
            )
    unused += [k for k in mapped if k not in target]
    loadable = {k: v for k, v in mapped.items() if k in target}
    result = model.load_state_dict(loadable, strict=False)
    unfilled = sorted(result.missing_keys)
    report = ConvertReport(
        None, preset, ckpt.family, run.model, len(loadable), sorted(unused), unfilled
    )
    if unfilled and not partial:
        raise InputError(
            f"{src}: {len(unfilled)} model tensors are not in the checkpoint "
            f"({', '.join(unfilled[:4])}{'...' if len(unfilled) > 4 else ''}); is {preset} "
            f"the right preset? (--partial writes it anyway)"
        )
    extra = {"converted_from": str(src), "release_family": ckpt.family}
    if ckpt.epoch is not None:
        extra["release_epoch"] = ckpt.epoch
    report.out = save_checkpoint(out, model, run, extra=extra)
    return report


def report_dict(report: ConvertReport) -> dict[str, Any]:
    """A report as plain values (JSON ready)."""
    values = dataclasses.asdict(report)
    values["out"] = str(report.out) if report.out else None
    return values
