"""XT: region encoder + context encoder + head, composed (Gupta et al., ICML 2024).

The model only does math on tensors it is given; reading files, chunking regions and
memory management live in `xtimage.engine`. Its pieces in data-flow order:

    regions (k, C, R, R) -> region_encoder -> maps (NCHW, shallow..deep)
    deepest map -> crop margin -> tokenizer -> tokens (k, T, D)        [per region]
    tokens + positional(positions) -> context -> contextualised tokens [whole image]
    contextualised tokens (+ skip maps) -> head -> logits or dense maps

Dimension legend: k regions in a chunk, T tokens per region, N tokens per image, D the
context width, B images.
"""

from __future__ import annotations

import torch
from torch import nn

from xtimage.encoders.context.base import ContextEncoder, State
from xtimage.encoders.positional import sincos_2d
from xtimage.encoders.region import RegionEncoder
from xtimage.encoders.tokens import RegionTokenizer
from xtimage.errors import ConfigError
from xtimage.tiling import RegionPlan, TokenLayout


class XT(nn.Module):
    """The xT model over one region plan recipe (region, margin, pooling).

    Args:
        region_encoder: the per-region backbone.
        context: the context encoder; its ``dim`` is the token width.
        head: a classification or dense head (see `xtimage.heads`).
        region: region side in pixels (the encoder's input size).
        margin: pixels of context each region reads but does not own.
        pool: tokens per region side after pooling (None: the deepest map as is).
    """

    def __init__(
        self,
        region_encoder: RegionEncoder,
        context: ContextEncoder,
        head: nn.Module,
        *,
        region: int,
        margin: int = 0,
        pool: int | None = None,
    ) -> None:
        super().__init__()
        self.region_encoder = region_encoder
        self.tokenizer = RegionTokenizer(region_encoder.channels, context.dim, pool)
        self.context = context
        self.head = head
        self.region = region
        self.margin = margin
        self.pool = pool
        # Validate the recipe once, on a one-region plan.
        self.layout(region - 2 * margin, region - 2 * margin)

    @property
    def dim(self) -> int:
        return self.context.dim

    def plan(self, height: int, width: int) -> RegionPlan:
        return RegionPlan(height, width, self.region, self.margin)

    def layout(self, height: int, width: int) -> TokenLayout:
        """Token layout of an image: the encoder's stride, or ``pool`` tokens a side."""
        plan = self.plan(height, width)
        stride = self.region_encoder.stride
        if self.margin % stride:
            raise ConfigError(
                f"margin {self.margin} must be a multiple of the encoder's stride {stride}"
            )
        return TokenLayout.pooled(plan, self.pool) if self.pool else TokenLayout(plan, stride)

    def encode(self, regions: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Encode regions: their feature maps and their tokens.

        Args:
            regions: (k, C, R, R).

        Returns:
            The maps (NCHW, shallow to deep) and tokens (k, T, D), row-major in each core.
        """
        maps = self.region_encoder(regions)
        return maps, self.tokenizer(self._core(maps[-1]))  # (k, T, D)

    def _core(self, deepest: torch.Tensor) -> torch.Tensor:
        """Crop the deepest map's margin cells: (k, C, r, r) -> (k, C, s, s)."""
        m = self.margin // self.region_encoder.stride
        side = deepest.shape[-1] - 2 * m
        return deepest[..., m : m + side, m : m + side]

    def encode_cells(self, regions: torch.Tensor) -> torch.Tensor:
        """Pooled cells before the token projection, (k, T, C): what a frozen backbone
        contributes, cached on disk by `xtimage.engine.cache.TokenCache`."""
        return self.tokenizer.cells(self._core(self.region_encoder(regions)[-1]))

    def encode_tokens(self, regions: torch.Tensor) -> torch.Tensor:
        """Tokens only, (k, T, D)."""
        return self.encode(regions)[1]

    def contextualise(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None = None,
        state: State = None,
    ) -> tuple[torch.Tensor, State]:
        """Add 2-D positions and run the context encoder: (B, N, D) -> (B, N, D)."""
        pos = sincos_2d(positions, self.dim).to(tokens.dtype)  # (B, N, D)
        return self.context(tokens + pos, positions, mask, state)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """All regions of every image at once, with full autograd (the xT release's way).

        The reference the streaming engine is tested against, and the fastest path when
        a whole batch fits in memory. Images share one size; dense heads return maps of
        the image size, classification heads logits.

        Args:
            images: (B, C, H, W).
        """
        from xtimage.tiling import extract_regions, stitch_regions

        b, _, height, width = images.shape
        layout = self.layout(height, width)
        regions = extract_regions(images, layout.plan).flatten(0, 1)  # (B*n, C, R, R)
        maps, tokens = self.encode(regions)
        tokens = tokens.reshape(b, layout.num_tokens, self.dim)  # (B, N, D)
        positions = layout.positions().expand(b, -1, -1)
        mask = layout.valid().expand(b, -1)
        ctx, _ = self.contextualise(tokens, positions, mask)
        if not getattr(self.head, "dense", False):
            return self.head(ctx, mask)
        n = layout.plan.num_regions
        out = self.decode(maps, ctx.reshape(b * n, layout.tokens_per_region, self.dim))
        return stitch_regions(out.reshape(b, n, *out.shape[1:]), layout.plan)

    def decode(self, maps: list[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        """Dense head on regions: skip maps + contextualised tokens (k, T, D) -> (k, K, R, R)."""
        return self.head(maps[:-1], tokens, self.region, self.margin, self.region_encoder.stride)
