"""Per-channel normalisation by statistics of earlier steps: BatchNorm's rescaling, per pixel.

A batch-norm decoder rescales each channel to unit variance over the batch, so a channel
that carries weak far context early in training is heard at full strength (docs/demo.md);
but its training forward couples every region of a batch, so it trains only all at once.
`RunningNorm2d` normalises each channel with running statistics fixed for the whole
optimizer step, as BatchNorm does in eval mode, and so acts on each pixel alone: a step
taken chunk by chunk (exact, streaming) computes what the step over all regions at once
computes. Training forwards only gather the channel sums; `commit_running_norms`, called
once after each optimizer step, folds them into the running statistics (the first step's
statistics are taken whole, later ones with ``momentum``).

No gradient flows through the statistics (they are constants within a step), unlike
BatchNorm in training; the learned scale and shift are BatchNorm's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class RunningNorm2d(nn.Module):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` per channel, with the running
    ``mean`` and ``var`` of the inputs of training forwards before this step."""

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # commits so far
        # this step's count, sum and sum of squares per channel, (3, C) float64: not a
        # buffer, so neither saved nor cast by ``model.to(dtype)``
        self._sums: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (k, C, h, w) -> (k, C, h, w)
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                flat = x.detach().transpose(0, 1).flatten(1).double()  # (C, k h w)
                sums = torch.stack([torch.full_like(flat[:, 0], flat.shape[1]),
                                    flat.sum(1), flat.square().sum(1)])  # fmt: skip
                self._sums = sums if self._sums is None else self._sums + sums
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)  # (C,)
        shift = self.bias - self.running_mean * scale
        return x * scale[:, None, None].to(x.dtype) + shift[:, None, None].to(x.dtype)

    @torch.no_grad()
    def commit(self) -> None:
        """Fold this step's sums into the running statistics (summed over processes)."""
        sums, self._sums = self._sums, None
        if dist.is_available() and dist.is_initialized():
            if sums is None:  # this process saw nothing; its share of the sums is zero
                sums = torch.zeros(3, self.weight.numel(), dtype=torch.float64,
                                   device=self.weight.device)  # fmt: skip
            dist.all_reduce(sums)
        if sums is None or not bool(sums[0].gt(1).all()):
            return
        n = sums[0]
        mean = sums[1] / n
        var = (sums[2] - n * mean.square()) / (n - 1)  # unbiased, as BatchNorm keeps it
        m = 1.0 if int(self.steps) == 0 else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
        self.running_var.lerp_(var.clamp_min(0).to(self.running_var.dtype), m)
        self.steps += 1


def commit_running_norms(model: nn.Module) -> None:
    """Call after each optimizer step: every `RunningNorm2d` takes in that step's sums."""
    for module in model.modules():
        if isinstance(module, RunningNorm2d):
            module.commit()
