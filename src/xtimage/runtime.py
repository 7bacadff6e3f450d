"""Where and in which precision a model runs: device choice and mixed precision.

One module for the helpers that training, the engine and prediction share, so that
"auto" means the same everywhere: CUDA when present (this process's local GPU under
torchrun), bf16 autocast on a GPU that supports it, float32 on CPU.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from xtimage.errors import ConfigError

AMP = ("auto", "none", "bf16", "fp16")


def resolve_device(name: str) -> torch.device:
    """ "auto" -> CUDA when present (this process's local GPU under torchrun), else CPU."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but CUDA is not available; use cpu")
    return device


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """The autocast dtype (None: float32) and whether fp16 (with a gradient scaler) is on.

    "auto" is bf16 on a GPU that supports it and float32 elsewhere: on CPU bf16 changes
    numerics and pays only for matrix-product-heavy backbones on CPUs with AMX (Swin-V2-T
    1.45x inference, 1.64x training here; mobilenet 1.12x / 0.82x: docs/performance.md,
    "CPU speed"), so it is asked for by name. "bf16" and "fp16" are honoured on any device
    when asked for by name, on CPU through ``torch.autocast("cpu")``; "fp16" comes with a
    gradient scaler on CPU too.
    """
    if amp not in AMP:
        raise ConfigError(f"amp={amp!r} is not one of {', '.join(AMP)}")
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None, False
    if amp == "auto":
        return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (None, False)
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("amp=bf16: this GPU has no bfloat16; use amp=fp16 (or none)")
    return (torch.bfloat16, False) if amp == "bf16" else (torch.float16, True)


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model``, in place, with its 4-D weights in channels-last (NHWC) order.

    Convolutions then run on NHWC maps (oneDNN on CPU) instead of reordering them at every
    call: the speed option for convolutional region encoders on CPU (docs/performance.md,
    "CPU speed"). Inputs may stay NCHW: the first convolution hands on NHWC maps. Outputs
    equal the default layout's to float32 rounding (another summation order).
    """
    return model.to(memory_format=torch.channels_last)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a no-op for None (float32)
    and on the meta device (the planner's dry run: shapes only, no kernels)."""
    if dtype is None or device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device``'s type, for numerically delicate code (a
    scan, a log-sum-exp); a no-op on the meta device."""
    if device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


def seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator seeded with ``seed`` for random ops on ``device`` (a CPU generator for
    the meta device, which random ops there take)."""
    kind = "cpu" if device.type == "meta" else device
    return torch.Generator(device=kind).manual_seed(seed)


def recompute(function, *args):
    """``function(*args)`` with activation checkpointing: its activations are dropped
    after the forward and recomputed in the backward (non-reentrant `checkpoint`, RNG
    state restored, so the recomputation draws what the forward drew).

    The recomputation runs under the torch function modes active at the forward, which
    autograd does not carry into the backward: the planner's dry run redirects attention
    on meta tensors by such a mode (`xtimage.engine.planner`), and a recomputation
    outside it would take another path than its forward.
    """
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils.checkpoint import checkpoint

    modes = _get_current_function_mode_stack()
    return checkpoint(
        function,
        *args,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _FunctionModes(modes)),
    )


class _FunctionModes:
    """Pushes torch function modes on entry and pops them on exit (entering a mode object
    a second time through ``with`` is not supported by torch, pushing it is)."""

    def __init__(self, modes) -> None:
        self.modes = modes

    def __enter__(self) -> None:
        from torch.overrides import _push_mode

        for mode in self.modes:
            _push_mode(mode)

    def __exit__(self, *exc) -> None:
        from torch.overrides import _pop_mode

        for _ in self.modes:
            _pop_mode()
