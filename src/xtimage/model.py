"""XT: region encoder + context encoder + head, composed (Gupta et al., ICML 2024).

The model only does math on tensors it is given; reading files, chunking regions and
memory management live in `xtimage.engine`. Its pieces in data-flow order:

    regions (k, C, R, R) -> region_encoder -> maps (NCHW, shallow..deep)
    deepest map -> crop margin -> tokenizer -> tokens (k, T, D)        [per region]
    tokens + positional(positions) -> context -> contextualised tokens [whole image]
    contextualised tokens (+ skip maps) -> head -> logits or dense maps

Dimension legend: k regions in a chunk, T tokens per region, N tokens per image, D the
context width, B images.

A CLS token. When the head reads one (``head.pool == "cls"``), `XT` owns a learned token
and appends it after each image's tokens (after the padding of a batch, so it is always
the last position); the context encoder runs over N + 1 tokens and the head reads the
last. Such a model needs the whole sequence at once (a non-streamable context encoder).

``release=True``: the conventions of the authors' release (github.com/bair-climate-
initiative/xT), so that their checkpoints compute what they computed there
(`xtimage.convert`). The sin-cos codes put the column in the first half of the channels
(MAE's ``meshgrid(w, h)`` layout; ours put the row first), and the context encoder sees
the tokens in the image's raster order (the release stitches every region's map into one
image-wide map and flattens it row-major), the CLS token last. Without a CLS head (their
plain classifier) the tokens are the backbone's cells as they are: no projection (``dim``
must equal the backbone's channels) and no positions, as there.

``release_chunk=P``: the release's "in-context patches" path (``in_context_patches`` in
its config; the code behind its Transformer-XL rows): the sequence (CLS token included)
is cut into windows of P tokens, P // 2 apart; each window, with its own copy of the CLS
token appended, runs through the context encoder on its own (the release passes a memory
along but never updates it, so none is carried), and the head reads the mean of the
windows' CLS outputs. Only that mean is returned after the tokens, which come back
uncontextualised (the release discards their outputs too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
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
        token_norm: LayerNorm the projected tokens.
        token_maps: how many of the region encoder's maps, deepest first, each token
            reads (1: the deepest only, as in xT; see `RegionTokenizer`).
        token_reduce: how the shallower maps are reduced to the token grid, "mean" or "max".
        release: the xT release's conventions (see the module docstring).
        release_chunk: the release's window length of its in-context-patches path (with
            a CLS head; see the module docstring), or None.
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
        token_norm: bool = True,
        token_maps: int = 1,
        token_reduce: str = "mean",
        release: bool = False,
        release_chunk: int | None = None,
    ) -> None:
        super().__init__()
        self.region_encoder = region_encoder
        infos = region_encoder.feature_info
        if not 1 <= token_maps <= len(infos):
            raise ConfigError(
                f"model.token_maps must be 1 to {len(infos)} (the region encoder's maps), "
                f"got {token_maps}"
            )
        self.token_strides = [i.stride for i in infos[-token_maps:]]
        channels = [i.channels for i in infos[-token_maps:]]
        self.tokenizer = RegionTokenizer(channels, context.dim, pool, token_norm, token_reduce)
        self.context = context
        self.head = head
        self.region = region
        self.margin = margin
        self.pool = pool
        self.release = release
        self.cls_token = None
        if getattr(head, "pool", None) == "cls":
            if context.streamable:
                raise ConfigError(
                    "a CLS-token head needs the whole sequence at once, but this context "
                    "encoder streams; use pool 'mean' or 'attention', or a global encoder"
                )
            self.cls_token = nn.Parameter(torch.zeros(1, 1, context.dim))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        elif release:  # their plain classifier reads the backbone's channels
            channels = region_encoder.channels
            if context.dim != channels or token_maps != 1:
                raise ConfigError(
                    f"release=True without a CLS head reads the backbone's {channels} channels "
                    f"unprojected; set dim={channels}"
                )
            self.tokenizer.proj = nn.Identity()
        if release_chunk is not None and (
            self.cls_token is None or isinstance(release_chunk, bool) or release_chunk < 2
        ):
            raise ConfigError(
                f"release_chunk={release_chunk!r}: the release's windows need a CLS head "
                f"(class_pool cls) and at least 2 tokens"
            )
        self.release_chunk = release_chunk
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
        return maps, self.tokenizer(self._cores(maps))  # (k, T, D)

    def _cores(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The maps the tokens read, margin cells cropped: (k, C, r, r) -> (k, C, s, s)."""
        out = []
        for stride, m in zip(self.token_strides, maps[-len(self.token_strides) :], strict=True):
            cut = self.margin // stride
            side = m.shape[-1] - 2 * cut
            out.append(m[..., cut : cut + side, cut : cut + side])
        return out

    def encode_cells(self, regions: torch.Tensor) -> torch.Tensor:
        """Pooled cells before the token projection, (k, T, C): what a frozen backbone
        contributes, cached on disk by `xtimage.engine.cache.TokenCache`."""
        return self.tokenizer.cells(self._cores(self.region_encoder(regions)))

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
        """Add 2-D positions and run the context encoder: (B, N, D) -> (B, N, D).

        With a CLS head the result has N + 1 tokens, the CLS token's output last.
        """
        if self.release and self.cls_token is None:
            return self.context(tokens, positions, mask, state)  # their plain classifier
        x, order = tokens, None
        if self.release:  # region-major -> the image's raster order, padding last
            order = raster_order(positions, mask)  # (B, N)
            rows = torch.arange(order.shape[0], device=order.device)[:, None]  # (B, 1)
            # indexing, not gather: its backward keeps the order, gather's its input too
            x, positions = tokens[rows, order], positions[rows, order]  # (B, N, D), (B, N, 2)
            mask = None if mask is None else mask[rows, order]
        codes = positions.flip(-1) if self.release else positions  # release: column first
        x = x + sincos_2d(codes, self.dim).to(tokens.dtype)  # (B, N, D)
        if self.cls_token is not None:
            b = x.shape[0]
            x = torch.cat([x, self.cls_token.to(x.dtype).expand(b, -1, -1)], dim=1)
            positions = torch.cat([positions, positions[:, -1:]], dim=1)  # unused
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
        if self.release_chunk is not None:
            return torch.cat([tokens, self._release_windows(x, positions, mask)], 1), None
        out, state = self.context(x, positions, mask, state)  # (B, N [+1], D)
        if order is not None:  # back to region-major; the CLS output stays last
            n = order.shape[1]
            body = torch.empty_like(out[:, :n]).scatter(
                1, order[..., None].expand(-1, -1, out.shape[-1]), out[:, :n]
            )
            out = torch.cat([body, out[:, n:]], dim=1)
        return out, state

    def _release_windows(
        self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The release's in-context-patches path over (B, N + 1, D): (B, 1, D), the mean
        CLS output of windows of ``release_chunk`` tokens, half a window apart."""
        if mask is not None and not bool(mask.all()):
            raise ConfigError(
                "the release's windowed path (release_chunk) knows no padding: classify "
                "images of one size together"
            )
        b, size, step = x.shape[0], self.release_chunk, self.release_chunk // 2
        cls = self.cls_token.to(x.dtype).expand(b, -1, -1)
        outs = []
        for start in range(0, x.shape[1] - 1, step):  # the CLS token is in the last window
            piece = torch.cat([x[:, start : start + size], cls], 1)  # (B, <= P + 1, D)
            where = torch.cat([positions[:, start : start + size], positions[:, -1:]], 1)
            out, _ = self.context(piece, where, None)
            outs.append(out[:, -1])  # (B, D)
        return torch.stack(outs, 1).mean(1, keepdim=True)

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
        n, regions = layout.plan.num_regions, list(range(layout.plan.num_regions))
        windows = [self.token_windows(ctx[i], layout, regions, regions) for i in range(b)]
        out = self.decode(maps, torch.cat(windows))  # (B*n, K, R, R)
        return stitch_regions(out.reshape(b, n, *out.shape[1:]), layout.plan)

    def token_windows(
        self,
        ctx: torch.Tensor,
        layout: TokenLayout,
        have: Sequence[int],
        want: Sequence[int],
    ) -> torch.Tensor:
        """Contextualised tokens over each wanted region's whole window, as maps.

        A region's core cells hold its own tokens; its margin cells hold its neighbours'
        (zero past the image and for regions not in ``have``), so a dense decoder sees
        the same tokens across a region border as a whole-image decoder would.

        Args:
            ctx: (len(have) * T, D) tokens of the regions ``have`` (sorted), region-major.
            layout: the image's token layout.
            have: the regions whose tokens ``ctx`` holds.
            want: the regions to return windows for.

        Returns:
            (len(want), D, w, w) with ``w = side + 2 * margin / stride`` cells.
        """
        plan, side, d = layout.plan, layout.side, ctx.shape[-1]
        if self.margin % layout.stride:
            raise ConfigError(
                f"margin {self.margin} must be a multiple of the token size {layout.stride} px "
                f"for a dense head (pool fewer tokens or change the margin)"
            )
        m = self.margin // layout.stride
        reach = -(-self.margin // plan.core)  # region rows a margin can reach into
        rows = [r // plan.cols for r in want]
        top, bottom = max(min(rows) - reach, 0), min(max(rows) + reach, plan.rows - 1)
        lo, hi = top * plan.cols, (bottom + 1) * plan.cols
        have_t = torch.as_tensor(list(have), dtype=torch.long)
        a, b = int(torch.searchsorted(have_t, lo)), int(torch.searchsorted(have_t, hi))
        band = ctx.new_zeros(hi - lo, side * side, d)  # (regions in band, T, D)
        band[have_t[a:b] - lo] = ctx.reshape(-1, side * side, d)[a:b]
        grid = rearrange(band, "(gr gc) (h w) d -> d (gr h) (gc w)", gc=plan.cols, h=side)
        grid = F.pad(grid, (m, m, m, m))  # (D, band rows, cols) + margin cells
        out = []
        for r in want:
            i, j = divmod(r, plan.cols)
            y, x = (i - top) * side, j * side
            out.append(grid[:, y : y + side + 2 * m, x : x + side + 2 * m])
        return torch.stack(out)  # (k, D, w, w)

    def decode(self, maps: list[torch.Tensor], windows: torch.Tensor) -> torch.Tensor:
        """Dense head: skip maps + token windows (k, D, w, w) -> (k, K, R, R)."""
        return self.head(maps[:-1], windows, self.region)


def raster_order(positions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The permutation that puts tokens in the image's raster order, padding last.

    Args:
        positions: (B, N, 2) global (row, col).
        mask: (B, N) True for real tokens, or None.

    Returns:
        (B, N) int64 indices: ``tokens.gather(1, order)`` is row-major over the image.
    """
    width = int(positions[..., 1].max()) + 1 if positions.numel() else 1
    key = positions[..., 0] * width + positions[..., 1]  # (B, N)
    if mask is not None:
        key = key.masked_fill(~mask, torch.iinfo(key.dtype).max)
    return torch.argsort(key, dim=1, stable=True)
