"""Shared pieces of the attention context encoders: a pre-norm block whose queries, cut
into blocks, attend to overlapping windows of a context sequence, and a 2-D relative
position bias.

One mechanism serves every local-attention pattern: query block ``s`` (``b`` tokens)
attends to the ``K`` context tokens ``context[s*b : s*b + K]``, an unfold of stride ``b``
and size ``K``, plus optional ``extra`` tokens seen by every block. Transformer-XL
(Dai et al., ACL 2019) is ``b = segment``, ``K = memory + segment``; a Longformer sliding
window (Beltagy et al., 2020) is ``K = b + 2 * radius``; one block with ``K`` = the whole
context is ordinary attention. Cost and memory are O(N * K), never O(N^2), and the
attention runs through `scaled_dot_product_attention`, which picks a fused kernel where
one exists. The mask is a float tensor: the relative bias where attention is allowed,
``-inf`` elsewhere; callers always allow a token to see itself, so no row is empty.

Dimensions: B batch, S query blocks, b tokens a block, K keys a window, G extra (global)
tokens, T context length = (S - 1) * b + K, D width, H heads, d = D / H.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn

from xtimage.errors import ConfigError, InputError


def check_width(dim: int, heads: int) -> None:
    """Raise `ConfigError` unless ``heads`` divides ``dim``."""
    if dim <= 0 or heads <= 0 or dim % heads:
        raise ConfigError(
            f"context width dim={dim} must be a positive multiple of heads={heads}; "
            f"pick heads that divide dim (e.g. heads={math.gcd(max(dim, 1), 8)})"
        )


def check_inputs(
    dim: int, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Validate a token batch against the contract; return the mask (all True if None)."""
    if tokens.ndim != 3 or tokens.shape[-1] != dim:
        raise InputError(
            f"context encoder of width {dim} got tokens of shape {tuple(tokens.shape)}; "
            f"expected (B, N, {dim}): project the region features to the context width"
        )
    B, N = tokens.shape[:2]
    if positions.shape != (B, N, 2):
        raise InputError(f"positions {tuple(positions.shape)} must be (B, N, 2) = ({B}, {N}, 2)")
    if mask is None:
        return torch.ones(B, N, dtype=torch.bool, device=tokens.device)
    if mask.shape != (B, N) or mask.dtype != torch.bool:
        raise InputError(
            f"mask must be bool (B, N) = ({B}, {N}), got {mask.dtype} {tuple(mask.shape)}"
        )
    return mask


def pad_tokens(x: torch.Tensor, left: int, right: int, value: float | bool = 0) -> torch.Tensor:
    """Pad dimension 1 of ``x`` (B, T, ...) with ``value``: ``left`` before, ``right`` after."""
    assert left >= 0 and right >= 0
    B, _, *rest = x.shape
    return torch.cat(
        [x.new_full((B, left, *rest), value), x, x.new_full((B, right, *rest), value)], dim=1
    )


def unfold_windows(x: torch.Tensor, size: int, step: int) -> torch.Tensor:
    """Windows ``x[:, s*step : s*step + size]`` of a sequence: (B, T, ...) -> (B, S, size, ...)."""
    return x.unfold(1, size, step).movedim(-1, 2)


def masked_bias(bias: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Float attention mask: ``bias`` where ``allowed``, ``-inf`` elsewhere (broadcasting).

    Fills ``bias`` in place and returns it: it holds N * K * H floats, too many to copy.
    """
    return bias.masked_fill_(~allowed, float("-inf"))


def relative_bucket(offset: torch.Tensor, buckets: int, max_distance: int) -> torch.Tensor:
    """Signed bucket of integer offsets, in ``[-(buckets - 1), buckets - 1]``.

    T5-style (Raffel et al., 2020) on one axis: offsets below ``buckets // 2`` get a bucket
    each; larger ones share log-spaced buckets up to ``max_distance``, clipped beyond.
    """
    exact = buckets // 2
    dist = offset.abs()
    scale = (buckets - exact) / math.log(max_distance / exact)
    far = exact + (torch.log(dist.clamp(min=1).float() / exact) * scale).long()
    bucket = torch.where(dist < exact, dist, far.clamp(max=buckets - 1))
    return torch.sign(offset) * bucket


class RelativePositionBias2d(nn.Module):
    """Learned per-head bias of the 2-D offset (row, col) between query and key tokens.

    Each axis is bucketed by `relative_bucket`; the bias table has one entry per pair of
    buckets and head. Tokens carry global grid positions, so the bias knows the image
    layout whatever the sequence order.
    """

    def __init__(self, heads: int, buckets: int = 16, max_distance: int = 256) -> None:
        super().__init__()
        if buckets < 2 or max_distance < buckets:
            raise ConfigError(
                f"relative position buckets={buckets}, max_distance={max_distance}: "
                f"need buckets >= 2 and max_distance >= buckets"
            )
        self.buckets = buckets
        self.max_distance = max_distance
        self.table = nn.Parameter(torch.zeros(heads, (2 * buckets - 1) ** 2))
        trunc_normal_(self.table, std=0.02)
        # Buckets are constant from max_distance on, so one look-up table of the offsets
        # in [-max_distance, max_distance] replaces the logs on every query-key pair.
        offsets = torch.arange(-max_distance, max_distance + 1)
        lut = relative_bucket(offsets, buckets, max_distance) + buckets - 1
        self.register_buffer("lut", lut, persistent=False)

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """(..., Lq, 2), (..., Lk, 2) int positions -> bias (..., H, Lq, Lk)."""
        side, far = 2 * self.buckets - 1, self.max_distance
        q_pos, k_pos = q_pos.int(), k_pos.int()  # int32 offsets: half the memory of int64
        index = None
        for axis in (0, 1):
            offset = q_pos[..., :, None, axis] - k_pos[..., None, :, axis]  # (..., Lq, Lk)
            bucket = self.lut[offset.clamp_(-far, far) + far]  # (..., Lq, Lk)
            index = bucket if index is None else index.mul_(side).add_(bucket)
        return self.table[:, index].movedim(0, -3)  # (..., H, Lq, Lk), keys contiguous


class BandedAttention(nn.Module):
    """Multi-head attention of query blocks to overlapping windows of a context."""

    def __init__(
        self,
        dim: int,
        heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        check_width(dim, heads)
        self.heads = heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        attn_mask: torch.Tensor,
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend query blocks to their windows (and to ``extra``).

        Args:
            x: queries (B, S, b, D).
            context: (B, T, D); block s sees ``context[:, s*b : s*b + K]``.
            attn_mask: float (B, S, H or 1, b, K + G): bias, ``-inf`` where not allowed;
                the first K columns are the window, the last G the extra tokens.
            extra: (B, G, D) tokens every block attends to, or None.

        Returns:
            (B, S, b, D).
        """
        B, S, b, D = x.shape
        G = 0 if extra is None else extra.shape[1]
        K = attn_mask.shape[-1] - G
        assert context.shape[1] == (S - 1) * b + K, (context.shape, S, b, K)
        q = rearrange(self.q(x), "B S b (h d) -> (B S) h b d", h=self.heads)
        kv = unfold_windows(self.kv(context), K, b)  # (B, S, K, 2D)
        if extra is not None:
            kv_extra = self.kv(extra)[:, None].expand(B, S, G, 2 * D)  # (B, S, G, 2D)
            kv = torch.cat([kv, kv_extra], dim=2)  # (B, S, K + G, 2D)
        k, v = rearrange(kv, "B S k (two h d) -> two (B S) h k d", two=2, h=self.heads)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask.flatten(0, 1).to(q.dtype),  # (B S, H, b, K + G)
            dropout_p=self.attn_drop if self.training else 0.0,
        )  # (B S, h, b, d)
        out = rearrange(out, "(B S) h b d -> B S b (h d)", B=B)
        return self.proj_drop(self.proj(out))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm, banded attention, GELU MLP), drop-path."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = BandedAttention(dim, heads, qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        attn_mask: torch.Tensor,
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, S, b, D) query blocks -> (B, S, b, D); see `BandedAttention.forward`."""
        extra = None if extra is None else self.norm1(extra)
        x = x + self.drop_path1(self.attn(self.norm1(x), self.norm1(context), attn_mask, extra))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def init_weights(module: nn.Module) -> None:
    """timm's transformer init: truncated normal (std 0.02) linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
