"""Region tokens: a region's last-stage map, optionally pooled, projected to the context width.

In xT (Gupta et al., ICML 2024, arXiv 2403.01915) every cell of a region's last-stage map
is a token (8 x 8 for a 256 px region at stride 32) and a linear layer projects it to the
context encoder's width. Pooling each region to g x g cells divides the sequence length
by (s / g)^2: a 100,000 px square in 256 px regions (391 x 391 = 152,881 regions) gives
9.8 million tokens unpooled and 153 thousand with one token per region, which is what
lets a global context encoder see the whole image.

A token can also read the shallower maps (``maps`` > 1): each is reduced to the token
grid, by its mean or its maximum over each cell, and its channels are concatenated with
the deepest map's before the projection, so fine detail that a small backbone loses on
the way down (a 1-px texture, a thin line) reaches the context encoder as local
statistics. The mean dilutes a detail by the share of the cell it covers (a 10 px object
in a 32 px region: a tenth); the maximum keeps its strongest response whatever its size.

Tokens are region-major (see `xtimage.tiling.TokenLayout`): a region's tokens together,
row-major inside the region.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from xtimage.errors import ConfigError

_REDUCE = {"mean": F.adaptive_avg_pool2d, "max": F.adaptive_max_pool2d}


class RegionTokenizer(nn.Module):
    """Cropped region maps to region-major tokens: pool, flatten, project, normalise.

    Args:
        in_channels: channels of the region encoder's last map, or of each map the
            tokens read (shallow to deep; their sum is the projection's input).
        dim: token width of the context encoder.
        pool: tokens per region side after average pooling; must divide the map side.
            None keeps every cell.
        norm: apply a LayerNorm after the projection.
        reduce: how the shallower maps are reduced to the deepest map's grid, "mean" or
            "max".
    """

    def __init__(
        self,
        in_channels: int | list[int],
        dim: int,
        pool: int | None = None,
        norm: bool = True,
        reduce: str = "mean",
    ):
        super().__init__()
        if isinstance(in_channels, int):
            in_channels = [in_channels]
        if pool is not None and (not isinstance(pool, int) or pool <= 0):
            raise ConfigError(f"pool must be a positive number of tokens a side, got {pool!r}")
        if reduce not in _REDUCE:
            raise ConfigError(f"unknown token reduction '{reduce}'; use 'mean' or 'max'")
        self.pool = pool
        self.reduce = _REDUCE[reduce]
        self.proj = nn.Linear(sum(in_channels), dim)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, maps: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Tokens of each region.

        Args:
            maps: (N, C, s, s), already cropped to the regions' cores (`TokenLayout.crop`),
                or a list of such maps, shallow to deep, the deepest last.

        Returns:
            (N, g * g, dim), row-major inside each region; g = pool, or s without pooling.
        """
        return self.project(self.cells(maps))

    def cells(self, maps: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Pooled, flattened cells before the projection: (N, C, s, s) -> (N, g * g, C).

        Several maps (shallow to deep): each reduced to the deepest map's grid (mean or
        max), then concatenated along channels. Parameter-free, so a frozen backbone's
        cells can be cached on disk.
        """
        if isinstance(maps, torch.Tensor):
            maps = [maps]
        side = maps[-1].shape[-1]
        maps = torch.cat([self.reduce(m, side) for m in maps[:-1]] + [maps[-1]], 1)
        if self.pool is not None and self.pool != side:
            if side % self.pool:
                raise ConfigError(
                    f"pool={self.pool} does not divide the {side} x {side} region map; use a "
                    f"divisor of {side} (e.g. 1) or pool=None"
                )
            maps = F.adaptive_avg_pool2d(maps, self.pool)  # (N, C, g, g): means of blocks
        return rearrange(maps, "n c h w -> n (h w) c")  # (N, g*g, C)

    def project(self, cells: torch.Tensor) -> torch.Tensor:
        """(N, T, C) cells -> (N, T, dim) tokens."""
        return self.norm(self.proj(cells))
