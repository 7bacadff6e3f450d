"""Dense prediction: a U-Net-style decoder over one region's multi-scale maps.

The deepest map of the region encoder is replaced by the contextualised tokens (the xT
dense design); shallower maps enter as skip connections. The decoder runs region by
region, so the engine can stream it chunk by chunk; GroupNorm keeps each region's output
independent of which other regions share its chunk. Several outputs at once (masks,
heatmaps, regression maps), each with its own loss.

Dimension legend: k regions, T tokens per region (g x g), D token width, c decoder
width, R region side, m margin cells at the deepest stride.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xtimage.encoders.region import FeatureInfo
from xtimage.errors import ConfigError

LOSSES = ("ce", "bce", "l1", "mse")


@dataclass(frozen=True)
class DenseOutput:
    """One dense output: ``channels`` maps trained with ``loss``.

    ``ce``: class logits against an int64 (k, H, W) target; ``bce``: logits against a
    float (k, channels, H, W) target in [0, 1]; ``l1``/``mse``: regression.
    """

    name: str
    channels: int
    loss: str = "ce"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"output '{self.name}': unknown loss '{self.loss}'; use {LOSSES}")


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.GroupNorm(math.gcd(8, cout), cout),
        nn.GELU(),
    )


class DenseHead(nn.Module):
    """U-Net decoder from contextualised tokens and skip maps to per-pixel outputs.

    Args:
        skips: channels and strides of the skip maps, shallow to deep (every encoder
            map except the deepest).
        dim: token width.
        outputs: the outputs to predict.
        channels: decoder width.
    """

    dense = True

    def __init__(
        self,
        skips: Sequence[FeatureInfo],
        dim: int,
        outputs: Sequence[DenseOutput],
        channels: int = 32,
    ) -> None:
        super().__init__()
        if not outputs:
            raise ConfigError("a dense head needs at least one output")
        self.outputs = list(outputs)
        self.skip_strides = [s.stride for s in skips]
        self.proj = nn.Conv2d(dim, channels, 1)
        self.lateral = nn.ModuleList(nn.Conv2d(s.channels, channels, 1) for s in skips)
        self.fuse = nn.ModuleList(_conv_block(2 * channels, channels) for _ in skips)
        self.out = nn.Conv2d(channels, sum(o.channels for o in outputs), 1)

    @property
    def out_channels(self) -> int:
        return self.out.out_channels

    def forward(
        self,
        skips: Sequence[torch.Tensor],
        tokens: torch.Tensor,
        region: int,
        margin: int = 0,
        stride: int = 32,
    ) -> torch.Tensor:
        """Decode one chunk of regions.

        Args:
            skips: skip maps (k, C_i, R / s_i, R / s_i), shallow to deep.
            tokens: contextualised tokens (k, T, D) of the regions' cores.
            region: region side R in pixels.
            margin: margin in pixels; the token map is placed in the core and the
                margin cells are zero (they carry no context).
            stride: pixels per cell of the deepest encoder map.

        Returns:
            (k, sum of output channels, R, R) raw outputs (logits / regression).
        """
        k, t, d = tokens.shape
        g = math.isqrt(t)
        x = self.proj(tokens.transpose(1, 2).reshape(k, d, g, g))  # (k, c, g, g)
        core, m = (region - 2 * margin) // stride, margin // stride
        if g != core:
            x = F.interpolate(x, size=(core, core), mode="nearest")  # pooled tokens
        x = F.pad(x, (m, m, m, m))  # (k, c, R/stride, R/stride)
        for skip, lateral, fuse in zip(
            reversed(skips), reversed(self.lateral), reversed(self.fuse), strict=True
        ):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(torch.cat([x, lateral(skip)], dim=1))  # (k, c, h_i, w_i)
        out = self.out(x)
        return F.interpolate(out, size=(region, region), mode="bilinear", align_corners=False)

    def split(self, out: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs by name: (k, sum C, H, W) -> {name: (k, C_o, H, W)}."""
        parts = torch.split(out, [o.channels for o in self.outputs], dim=1)
        return {o.name: p for o, p in zip(self.outputs, parts, strict=True)}

    def loss_sum(
        self, out: torch.Tensor, targets: dict[str, torch.Tensor], valid: torch.Tensor
    ) -> torch.Tensor:
        """Weighted per-pixel losses summed over the valid pixels.

        Summed, not averaged, so that chunks add up to the whole image's loss; divide by
        the batch's valid pixel count (the engine does).

        Args:
            out: (k, sum C, H, W) raw outputs.
            targets: per output, int64 (k, H, W) for "ce", float (k, C_o, H, W) otherwise.
            valid: (k, H, W) bool, pixels that count.
        """
        total = out.new_zeros(())
        v = valid.to(out.dtype)
        for spec, pred in zip(
            self.outputs, torch.split(out, [o.channels for o in self.outputs], 1), strict=True
        ):
            target = targets[spec.name]
            if spec.loss == "ce":
                per_pixel = F.cross_entropy(pred, target.clamp_min(0), reduction="none")
            elif spec.loss == "bce":
                per_pixel = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
                per_pixel = per_pixel.sum(1)
            elif spec.loss == "l1":
                per_pixel = (pred - target).abs().sum(1)
            else:
                per_pixel = ((pred - target) ** 2).sum(1)
            total = total + spec.weight * (per_pixel * v).sum()
        return total
