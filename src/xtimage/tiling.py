"""Nested tokenization: the region plan and the token layout, as pure geometry.

An H x W image is cut into square *regions* of ``region`` pixels, the input size of the
region encoder. With a ``margin`` m, each region reads m extra pixels on every side and
owns only its centre, the *core* of ``region - 2m`` pixels; cores tile the image exactly
once, so outputs cropped to their cores stitch without seams.

Edge rule: the grid has ``rows = ceil(H / core)`` and ``cols = ceil(W / core)`` regions;
region (i, j) reads the window starting at ``(i * core - m, j * core - m)`` of size
``region``. Pixels of that window outside the image (the margin at the border and the
padding past the last partial core, ``rows * core - H`` rows at the bottom and
``cols * core - W`` columns at the right) are padding: they repeat the nearest image pixel
(edge, or "replicate", padding) and are marked invalid. Not zeros: a ConvNeXt stem (conv,
bias 0 at init, LayerNorm over channels) turns an all-zero patch into a vector without
variance, and LayerNorm's 1 / sqrt(eps) then blows up the stem's gradients.

Token order is region-major: regions in raster order, and inside a region its tokens
row-major, so a chunk of consecutive regions is one contiguous slice of the sequence.
Every token carries its global (row, col) on the image-wide token grid and a valid flag.
The xT release orders tokens row-major over the stitched image grid instead;
`TokenLayout.raster_order` converts.

The tiler never touches pixels of a file; `extract_regions` and `stitch_regions` work on
tensors already in memory (tests, small images), readers serve files window by window.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xtimage.errors import ConfigError
from xtimage.limits import check_alloc
from xtimage.window import Window

if TYPE_CHECKING:  # torch is imported where tensors are made: plans alone stay light (xt info)
    import torch


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class RegionPlan:
    """How an image of ``height`` x ``width`` pixels is cut into regions.

    Attributes:
        height: image height in pixels.
        width: image width in pixels.
        region: side of the square window the region encoder sees.
        margin: context pixels on each side that a region reads but does not own.
        subregion: side of the sub-regions a region is cut into when the region encoder
            expects a smaller input; must tile the region exactly. None: no sub-regions.
    """

    height: int
    width: int
    region: int
    margin: int = 0
    subregion: int | None = None

    def __post_init__(self) -> None:
        _positive("image height", self.height)
        _positive("image width", self.width)
        _positive("region size", self.region)
        if not isinstance(self.margin, int) or self.margin < 0:
            raise ConfigError(f"margin must be a non-negative integer, got {self.margin!r}")
        if self.region - 2 * self.margin <= 0:
            raise ConfigError(
                f"margin {self.margin} leaves no core in a {self.region} px region "
                f"(needs 2 * margin < region); use a margin below {(self.region + 1) // 2}"
            )
        if self.subregion is not None:
            _positive("sub-region size", self.subregion)
            if self.region % self.subregion:
                raise ConfigError(
                    f"sub-region {self.subregion} does not tile region {self.region} "
                    f"(the region size must be a multiple of the sub-region size)"
                )

    @property
    def core(self) -> int:
        """Side of the part of each region that it owns: ``region - 2 * margin``."""
        return self.region - 2 * self.margin

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.core)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.core)

    @property
    def grid(self) -> tuple[int, int]:
        return self.rows, self.cols

    @property
    def num_regions(self) -> int:
        return self.rows * self.cols

    @property
    def padding(self) -> tuple[int, int]:
        """Pixels added past the image at the bottom and right to complete the last cores."""
        return self.rows * self.core - self.height, self.cols * self.core - self.width

    def position(self, index: int) -> tuple[int, int]:
        """Grid (row, col) of region ``index`` (raster order)."""
        if not 0 <= index < self.num_regions:
            raise IndexError(f"region {index} outside a plan of {self.num_regions} regions")
        return divmod(index, self.cols)

    def window(self, index: int) -> Window:
        """The pixels region ``index`` reads, margin included (may extend outside)."""
        row, col = self.position(index)
        return Window(
            row * self.core - self.margin, col * self.core - self.margin, self.region, self.region
        )

    def core_window(self, index: int) -> Window:
        """The pixels region ``index`` owns (may extend past the bottom/right edge)."""
        row, col = self.position(index)
        return Window(row * self.core, col * self.core, self.core, self.core)

    def subregion_windows(self) -> list[Window]:
        """Sub-region windows relative to the region's top-left, in raster order."""
        side = self.subregion or self.region
        n = self.region // side
        return [Window(i * side, j * side, side, side) for i in range(n) for j in range(n)]

    def chunks(self, size: int) -> Iterator[range]:
        """Consecutive ranges of at most ``size`` region indices; the last may be shorter."""
        _positive("chunk size", size)
        for start in range(0, self.num_regions, size):
            yield range(start, min(start + size, self.num_regions))

    def valid_fraction(self, index: int) -> float:
        """Fraction of region ``index``'s core that lies inside the image."""
        inside = self.core_window(index).intersect(Window(0, 0, self.height, self.width))
        return 0.0 if inside is None else inside.area / self.core**2

    def describe(self) -> dict:
        """The plan as plain numbers (for `xt info` and checkpoints)."""
        return {
            "image": [self.height, self.width],
            "region": self.region,
            "margin": self.margin,
            "core": self.core,
            "subregion": self.subregion,
            "grid": [self.rows, self.cols],
            "regions": self.num_regions,
            "padding": list(self.padding),
        }


def plan_regions(
    height: int, width: int, region: int, margin: int = 0, subregion: int | None = None
) -> RegionPlan:
    """The region plan of an image; see `RegionPlan` and the module docstring."""
    return RegionPlan(height, width, region, margin, subregion)


@dataclass(frozen=True)
class TokenLayout:
    """Where each token of a region plan sits, for tokens of ``stride`` pixels.

    A region's encoder map has ``region // stride`` cells a side; after cropping the
    margin (``margin // stride`` cells a side) each region keeps ``side = core // stride``
    cells a side, ``side**2`` tokens. Token (r, c) of region (i, j) has the global
    coordinate ``(i * side + r, j * side + c)`` and is valid when its pixels start inside
    the image: ``(i * side + r) * stride < H`` and likewise for columns.
    """

    plan: RegionPlan
    stride: int

    def __post_init__(self) -> None:
        _positive("token stride", self.stride)
        p = self.plan
        if p.region % self.stride or p.margin % self.stride:
            raise ConfigError(
                f"region {p.region} and margin {p.margin} must be multiples of the token "
                f"stride {self.stride} so that tokens crop to the core exactly"
            )

    @classmethod
    def pooled(cls, plan: RegionPlan, side: int) -> TokenLayout:
        """Layout with ``side`` x ``side`` tokens per region core (token pooling)."""
        _positive("tokens per region side", side)
        if plan.core % side:
            raise ConfigError(f"core {plan.core} px cannot be pooled to {side} tokens a side")
        return cls(plan, plan.core // side)

    @property
    def side(self) -> int:
        """Tokens per region side after the margin crop."""
        return self.plan.core // self.stride

    @property
    def tokens_per_region(self) -> int:
        return self.side**2

    @property
    def num_tokens(self) -> int:
        return self.plan.num_regions * self.tokens_per_region

    @property
    def grid(self) -> tuple[int, int]:
        """Global token grid (rows, cols), padding included."""
        return self.plan.rows * self.side, self.plan.cols * self.side

    def token_slice(self, regions: range) -> slice:
        """Sequence slice holding the tokens of a contiguous range of regions."""
        assert regions.step == 1
        return slice(regions.start * self.tokens_per_region, regions.stop * self.tokens_per_region)

    def positions(self, regions: Sequence[int] | None = None) -> torch.Tensor:
        """Global (row, col) token coordinates, (n, 2) int64, region-major.

        Memory is proportional to the tokens asked for: pass the regions of a chunk. All
        regions (None) is checked against the allocation cap (`xtimage.limits`).
        """
        import torch

        if regions is None:
            regions = range(self.plan.num_regions)
            check_alloc(
                16 * self.num_tokens, f"the token positions of a {self.plan.height} x "
                f"{self.plan.width} px image ({self.num_tokens} tokens)"
            )  # fmt: skip
        if isinstance(regions, range) and regions.step == 1:
            idx = torch.arange(regions.start, regions.stop, dtype=torch.long)
        else:
            idx = torch.as_tensor(list(regions), dtype=torch.long)
        region_row, region_col = idx // self.plan.cols, idx % self.plan.cols  # (R,)
        r, c = torch.meshgrid(torch.arange(self.side), torch.arange(self.side), indexing="ij")
        rows = region_row[:, None] * self.side + r.reshape(1, -1)  # (R, side*side)
        cols = region_col[:, None] * self.side + c.reshape(1, -1)
        return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1)

    def valid(self, regions: Sequence[int] | None = None) -> torch.Tensor:
        """Whether each token covers image pixels (not only padding), (n,) bool.

        For a count over the whole image use `num_valid`, which allocates nothing.
        """
        pos = self.positions(regions)
        return (pos[:, 0] * self.stride < self.plan.height) & (
            pos[:, 1] * self.stride < self.plan.width
        )

    @property
    def num_valid(self) -> int:
        """How many tokens are valid, ``valid().sum()`` without building the tensor."""
        rows, cols = self.grid
        return min(rows, -(-self.plan.height // self.stride)) * min(
            cols, -(-self.plan.width // self.stride)
        )

    def crop(self, features: torch.Tensor) -> torch.Tensor:
        """Crop region maps at this stride to their cores: (N, C, r, r) -> (N, C, side, side)."""
        m = self.plan.margin // self.stride
        assert features.shape[-1] == features.shape[-2] == self.side + 2 * m, features.shape
        return features[..., m : m + self.side, m : m + self.side]

    def raster_order(self) -> torch.Tensor:
        """Permutation taking region-major tokens to row-major order over the token grid.

        ``tokens[:, layout.raster_order()]`` is the xT release's order.
        """
        import torch

        rows, cols = self.grid
        pos = self.positions()
        return torch.argsort(pos[:, 0] * cols + pos[:, 1])


def crop_padded(images: torch.Tensor, window: Window) -> torch.Tensor:
    """Pixels of ``window`` from (..., H, W) images, edge-padded where it lies outside.

    A pixel (r, c) of the window is the image's ``(clip(r, 0, H - 1), clip(c, 0, W - 1))``,
    also for a window wholly past the border. A window inside the image is a view.

    Returns:
        (..., window.height, window.width).
    """
    import torch

    height, width = images.shape[-2:]
    if window.intersect(Window(0, 0, height, width)) == window:
        rows, cols = window.slices()
        return images[..., rows, cols]
    source, rows, cols = window.edge_index(height, width)
    r, c = source.slices()
    near = images[..., r, c]  # the pixels to repeat
    rows, cols = (torch.from_numpy(i).to(images.device) for i in (rows, cols))
    return near.index_select(-2, rows).index_select(-1, cols)


def extract_regions(
    images: torch.Tensor, plan: RegionPlan, regions: Sequence[int] | None = None
) -> torch.Tensor:
    """Cut images into region windows, edge-padded outside the image (`crop_padded`).

    Args:
        images: (B, C, H, W) with H, W equal to the plan's.
        plan: the region plan.
        regions: region indices to cut (default: all, raster order).

    Returns:
        (B, n, C, region, region).
    """
    if images.shape[-2:] != (plan.height, plan.width):
        raise ConfigError(
            f"image of size {tuple(images.shape[-2:])} does not match the plan's "
            f"{plan.height} x {plan.width}"
        )
    import torch

    regions = range(plan.num_regions) if regions is None else regions
    return torch.stack([crop_padded(images, plan.window(i)) for i in regions], dim=1)


def stitch_regions(outputs: torch.Tensor, plan: RegionPlan) -> torch.Tensor:
    """Put per-region outputs back into an image-shaped map: the inverse of extraction.

    Each region's output (at ``scale`` = region / output side pixels per cell) is cropped
    to its core and placed in the grid; the padding past the image is cut off, leaving
    ``ceil(H / scale) x ceil(W / scale)`` cells.

    Args:
        outputs: (B, num_regions, C, h, h), regions in raster order.
        plan: the region plan.

    Returns:
        (B, C, ceil(H / scale), ceil(W / scale)).
    """
    n, side = outputs.shape[1], outputs.shape[-1]
    assert n == plan.num_regions, (n, plan.num_regions)
    if plan.region % side or plan.margin % (plan.region // side):
        raise ConfigError(
            f"outputs of {side} cells a side cannot be cropped to the core of a "
            f"{plan.region} px region with margin {plan.margin}"
        )
    scale = plan.region // side
    m, core = plan.margin // scale, plan.core // scale
    from einops import rearrange

    cores = outputs[..., m : m + core, m : m + core]
    image = rearrange(cores, "b (gh gw) c h w -> b c (gh h) (gw w)", gh=plan.rows, gw=plan.cols)
    return image[..., : math.ceil(plan.height / scale), : math.ceil(plan.width / scale)]
