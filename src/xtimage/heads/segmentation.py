"""Dense prediction: a U-Net-style decoder over one region's multi-scale maps.

The deepest map of the region encoder is replaced by the contextualised tokens (the xT
dense design); shallower maps enter as skip connections. The decoder runs region by
region, so the engine can stream it chunk by chunk. Its normalisation is per pixel by
default (LayerNorm over channels). BatchNorm is an option for models trained all at
once (it helps a narrow model hear weak far context, docs/demo.md); in eval mode it is
per pixel too. Instance norm (each region over its own pixels) couples only the pixels
of a region, which the decoder sees together anyway. Several outputs at once (masks,
heatmaps, regression maps), each with its own loss.

Dimension legend: k regions, D token width, w token cells a window side, c decoder
width, R region side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from xtimage.encoders.region import FeatureInfo
from xtimage.errors import ConfigError
from xtimage.heads.base import Head

LOSSES = ("ce", "bce", "focal", "l1", "mse")


@dataclass(frozen=True)
class DenseOutput:
    """One dense output: ``channels`` maps trained with ``loss``.

    ``ce``: class logits against an int64 (k, H, W) target, each pixel weighted by its
    class's ``class_weights`` entry (for rare foreground classes); ``bce``: logits
    against a float (k, channels, H, W) target in [0, 1]; ``focal``: the same, with
    `focal_loss` (heatmaps whose peaks are 1); ``l1``/``mse``: regression.

    ``dice`` > 0 adds that weight times a soft Dice loss on the foreground (classes >= 1
    for "ce", the sigmoid for "bce"/"focal") over the whole batch. Dice is a ratio of
    batch sums, not a sum of per-pixel terms, so it only trains in the all-at-once
    (direct) mode; the streaming engine refuses it (see `DenseHead.decomposable`).
    """

    name: str
    channels: int
    loss: str = "ce"
    weight: float = 1.0
    class_weights: tuple[float, ...] | None = None
    dice: float = 0.0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"output '{self.name}': unknown loss '{self.loss}'; use {LOSSES}")
        if self.class_weights is not None and (
            self.loss != "ce" or len(self.class_weights) != self.channels
        ):
            raise ConfigError(
                f"output '{self.name}': class_weights needs loss 'ce' and one weight per "
                f"channel ({self.channels}), got {self.class_weights!r} with '{self.loss}'"
            )


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0
) -> torch.Tensor:
    """Penalty-reduced focal loss of a heatmap, per element (CornerNet, Law & Deng 2018).

    Where the target is 1 (a peak): ``-(1 - p)^alpha log p``; elsewhere
    ``-(1 - y)^beta p^alpha log(1 - p)``, so pixels near a peak (y close to 1) are
    hardly penalised. Computed from logits with log-sigmoids, without clamping.
    """
    p = torch.sigmoid(logits)
    positive = -((1 - p) ** alpha) * F.logsigmoid(logits)
    negative = -((1 - target) ** beta) * p**alpha * F.logsigmoid(-logits)
    return torch.where(target >= 1, positive, negative)


NORMS = ("layer", "batch", "instance", "none")
FUSIONS = ("concat", "film")


def _conv_block(cin: int, cout: int, norm: str) -> nn.Sequential:
    norms = {
        "layer": LayerNorm2d,
        "batch": nn.BatchNorm2d,
        "instance": lambda c: nn.GroupNorm(c, c),  # per channel over each region's pixels
        "none": lambda c: nn.Identity(),
    }
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"), norms[norm](cout), nn.GELU()
    )


class DenseHead(Head):
    """U-Net decoder from contextualised tokens and skip maps to per-pixel outputs.

    Args:
        skips: channels and strides of the skip maps, shallow to deep (every encoder
            map except the deepest).
        dim: token width.
        outputs: the outputs to predict.
        channels: decoder width.
        norm: "layer" (per pixel over channels: chunk by chunk training gives the
            whole-image gradients), "batch" (per channel over the batch in training,
            U-Net's choice: its gradient through the batch statistics is what lets the
            demo recipe hear far context early (docs/context_pays.md, session 20), but it
            couples the regions of a batch, so it trains only all at once; in eval mode
            it is per pixel and streams exactly) or "instance" (per channel over each
            region's own pixels, statistics' gradient included: exact chunk by chunk, as
            the decoder runs region by region; it lifts the noise of a flat region to
            unit variance).
        depth: use only the ``depth`` shallowest skip maps (None: all). The tokens then
            meet fine detail after fewer blocks.
        project_tokens: project the tokens to ``channels`` before the first block; off,
            they enter it at their full width ``dim``.
        fusion: how the tokens meet the skip maps. "concat": only through the deepest
            block's input. "film": also, in every block, the tokens (resampled to its
            resolution) scale and shift its normalised features, ``x * (1 + g) + b``
            (FiLM, Perez et al. 2018): a product of a pixel's own features with its
            region's context, so comparing a pixel with something far away is one
            layer, not a learned XOR.
    """

    dense = True

    def __init__(
        self,
        skips: Sequence[FeatureInfo],
        dim: int,
        outputs: Sequence[DenseOutput],
        channels: int = 32,
        norm: str = "layer",
        depth: int | None = None,
        project_tokens: bool = True,
        fusion: str = "concat",
    ) -> None:
        super().__init__()
        if not outputs:
            raise ConfigError("a dense head needs at least one output")
        if depth is not None and not 1 <= depth <= len(skips):
            raise ConfigError(
                f"decoder depth (model.decoder_depth) must be 1 to {len(skips)} skip maps, "
                f"got {depth}"
            )
        if norm not in NORMS:
            raise ConfigError(
                f"unknown decoder norm '{norm}' (model.decoder_norm); use one of {NORMS}"
            )
        if fusion not in FUSIONS:
            raise ConfigError(
                f"unknown decoder fusion '{fusion}' (model.decoder_fusion); use one of {FUSIONS}"
            )
        self.norm = norm
        self.fusion = fusion
        self.outputs = list(outputs)
        skips = list(skips)[: depth or len(skips)]
        self.skip_strides = [s.stride for s in skips]
        self.proj = nn.Conv2d(dim, channels, 1) if project_tokens else nn.Identity()
        self.lateral = nn.ModuleList(nn.Conv2d(s.channels, channels, 1) for s in skips)
        first = channels if project_tokens else dim  # token width into the deepest block
        self.fuse = nn.ModuleList(
            _conv_block((first if i == len(skips) - 1 else channels) + channels, channels, norm)
            for i in range(len(skips))
        )
        self.film = None
        if fusion == "film":  # per block: tokens -> (scale, shift) of its features
            self.film = nn.ModuleList(nn.Conv2d(dim, 2 * channels, 1) for _ in skips)
        self.out = nn.Conv2d(channels, sum(o.channels for o in outputs), 1)

    @property
    def out_channels(self) -> int:
        return self.out.out_channels

    def forward(
        self, skips: Sequence[torch.Tensor], tokens: torch.Tensor, region: int
    ) -> torch.Tensor:
        """Decode one chunk of regions.

        Args:
            skips: skip maps (k, C_i, R / s_i, R / s_i), shallow to deep.
            tokens: contextualised tokens over each region's whole window, margin cells
                included, as a map (k, D, w, w) (see `XT.token_windows`).
            region: region side R in pixels.

        Returns:
            (k, sum of output channels, R, R) raw outputs (logits / regression).
        """
        x = self.proj(tokens)  # (k, c or D, w, w)
        skips = skips[: len(self.lateral)]
        for i in reversed(range(len(skips))):
            size = skips[i].shape[-2:]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            x = torch.cat([x, self.lateral[i](skips[i])], dim=1)
            conv, norm, act = self.fuse[i]
            x = norm(conv(x))  # (k, c, h_i, w_i)
            if self.film is not None:
                context = F.interpolate(tokens, size=size, mode="bilinear", align_corners=False)
                scale, shift = self.film[i](context).chunk(2, dim=1)  # (k, c, h_i, w_i) each
                x = x * (1 + scale) + shift
            x = act(x)
        out = self.out(x)
        return F.interpolate(out, size=(region, region), mode="bilinear", align_corners=False)

    def split(self, out: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs by name: (k, sum C, H, W) -> {name: (k, C_o, H, W)}."""
        parts = torch.split(out, [o.channels for o in self.outputs], dim=1)
        return {o.name: p for o, p in zip(self.outputs, parts, strict=True)}

    @property
    def decomposable(self) -> bool:
        """Whether the loss is a sum of per-pixel terms and the decoder treats regions
        independently in training (what chunked training needs)."""
        return self.norm != "batch" and all(o.dice == 0 for o in self.outputs)

    def batch_loss(
        self, out: torch.Tensor, targets: dict[str, torch.Tensor], valid: torch.Tensor
    ) -> torch.Tensor:
        """Mean per-pixel loss over the valid pixels plus the outputs' Dice terms.

        Args: as in `loss_sum`, for a whole batch of images at once.
        """
        v = valid.to(out.dtype)
        total = self.loss_sum(out, targets, valid) / v.sum().clamp_min(1)
        parts = torch.split(out, [o.channels for o in self.outputs], dim=1)
        for o, pred in zip(self.outputs, parts, strict=True):
            if o.dice == 0:
                continue
            target = targets[o.name]
            if o.loss == "ce":
                p, t = 1 - pred.softmax(1)[:, 0], (target > 0).to(out.dtype)
            else:
                p, t = pred.sigmoid().sum(1).clamp_max(1), target.sum(1).clamp_max(1)
            inter = (p * t * v).sum()
            dice = (2 * inter + 1) / ((p * v).sum() + (t * v).sum() + 1)
            total = total + o.dice * (1 - dice)
        return total

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
                weights = None
                if spec.class_weights is not None:
                    weights = pred.new_tensor(spec.class_weights)
                per_pixel = F.cross_entropy(
                    pred, target.clamp_min(0), weight=weights, reduction="none"
                )
            elif spec.loss == "bce":
                per_pixel = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
                per_pixel = per_pixel.sum(1)
            elif spec.loss == "focal":
                per_pixel = focal_loss(pred, target).sum(1)
            elif spec.loss == "l1":
                per_pixel = (pred - target).abs().sum(1)
            else:
                per_pixel = ((pred - target) ** 2).sum(1)
            total = total + spec.weight * (per_pixel * v).sum()
        return total
