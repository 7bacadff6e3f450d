"""2-D positional encodings of tokens from their global (row, col) on the image's token grid.

xT (Gupta et al., ICML 2024, arXiv 2403.01915) adds a fixed 2-D sin-cos embedding over the
image-wide grid of region tokens before the context encoder, so that a token knows where
its region lies in the image and where it lies inside the region. Positions are global
token coordinates (`TokenLayout.positions`: region offset + position inside the region),
so a code never depends on which chunk of regions the token arrived with.

`sincos_2d` is the fixed encoding (the MAE / xT layout: half the channels for the row,
half for the column, each half sines then cosines of geometric frequencies).
`LearnedPositional2d` is a learned (H, W, dim) table; on a larger image the table is
stretched bilinearly to the larger grid, as ViT position tables are when the input grows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from xtimage.errors import ConfigError


def sincos_2d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos codes of integer (row, col) positions.

    Channel layout: ``[sin(r w), cos(r w), sin(c w), cos(c w)]`` with ``dim / 4``
    frequencies ``w_k = temperature ** (-k / (dim / 4))``. Computed in float64 so that
    far positions (100k px images) keep their precision, returned in the default dtype.

    Args:
        positions: (..., 2) int64 global (row, col).
        dim: code width, a multiple of 4.
        temperature: the longest wavelength's scale.

    Returns:
        (..., dim).
    """
    if dim <= 0 or dim % 4:
        raise ConfigError(f"sin-cos positional width {dim} must be a positive multiple of 4")
    quarter = dim // 4
    k = torch.arange(quarter, dtype=torch.float64, device=positions.device)
    omega = temperature ** (-k / quarter)  # (dim/4,)
    angles = positions.to(torch.float64)[..., None] * omega  # (..., 2, dim/4)
    rows, cols = angles.unbind(-2)  # (..., dim/4) each
    codes = torch.cat([rows.sin(), rows.cos(), cols.sin(), cols.cos()], dim=-1)  # (..., dim)
    return codes.to(torch.get_default_dtype())


class LearnedPositional2d(nn.Module):
    """A learned code per token-grid cell, stretched bilinearly when the grid grows.

    Args:
        dim: code width.
        grid: (rows, cols) of the table, the token grid of the training images.
    """

    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        if dim <= 0 or len(grid) != 2 or min(grid) <= 0:
            raise ConfigError(
                f"learned positions need dim > 0 and a (rows, cols) grid, got "
                f"dim={dim}, grid={grid!r}"
            )
        self.table = nn.Parameter(torch.empty(*grid, dim))  # (H, W, D)
        nn.init.trunc_normal_(self.table, std=0.02)

    @property
    def grid(self) -> tuple[int, int]:
        return self.table.shape[0], self.table.shape[1]

    def resized(self, grid: tuple[int, int]) -> torch.Tensor:
        """The table for an image's token grid: each side stretched where the grid is larger.

        A side no larger than the table's is indexed as is (absolute positions); a larger
        side is bilinearly interpolated (``align_corners=False``) to the grid's size. With
        half-pixel centres the outer cells copy the edge: stretched by a factor f, about
        f / 2 cells at each border share one code.
        """
        size = (max(self.grid[0], grid[0]), max(self.grid[1], grid[1]))
        if size == self.grid:
            return self.table
        table = rearrange(self.table, "h w d -> 1 d h w")
        table = F.interpolate(table, size=size, mode="bilinear", align_corners=False)
        return rearrange(table, "1 d h w -> h w d")  # (H', W', D)

    def forward(self, positions: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Codes of (row, col) positions.

        Args:
            positions: (..., 2) int64 global (row, col).
            grid: the image's whole token grid (`TokenLayout.grid`). Pass it whenever
                tokens come in chunks: without it the grid is taken as the smallest that
                holds these positions, so a chunk's codes would depend on the chunk.

        Returns:
            (..., dim).
        """
        if positions.numel() == 0:
            return self.table.new_empty(*positions.shape[:-1], self.table.shape[-1])
        top = positions.amax(dim=tuple(range(positions.ndim - 1)))  # (2,)
        if grid is None:
            grid = (int(top[0]) + 1, int(top[1]) + 1)
        if int(positions.min()) < 0 or int(top[0]) >= grid[0] or int(top[1]) >= grid[1]:
            raise ConfigError(
                f"token positions span rows 0..{int(top[0])}, cols 0..{int(top[1])}, outside "
                f"the grid {tuple(grid)}; pass grid=layout.grid of the image"
            )
        table = self.resized(grid)  # (H', W', D)
        return table[positions[..., 0], positions[..., 1]]  # (..., D)
