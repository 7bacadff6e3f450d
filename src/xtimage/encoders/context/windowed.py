"""Windowed (Longformer-style) context encoder (Beltagy et al., 2020), one of the
long-sequence context encoders xT names as a fit (Gupta et al., ICML 2024).

Sliding-window attention over the *sequence* (region-major order, `xtimage.tiling`):
token i attends to every real token j with ``|i - j| <= window // 2`` (``j <= i`` as well
when ``causal``). With region-major order a window of a few regions' tokens covers the
neighbouring regions in the same region row; 2-D layout enters through the learned
relative bias over (row, col) offsets (`layers.RelativePositionBias2d`). Queries are
computed in blocks that attend to the block and ``window // 2`` tokens on each side, so
time and memory are O(N * window), never O(N^2).

``num_global`` learned global tokens (a CLS-like relay) attend to every token and are
attended by every token, giving each token a two-hop path to the whole image. They are
internal: the output has one row per input token, as the interface requires.

Streaming. ``streamable`` is True only when ``causal`` and ``num_global == 0``; then the
state (per layer, the last ``window // 2`` input hidden states with their positions and
mask) makes pieces of any lengths equal the whole sequence, outputs and gradients. A
bidirectional window needs ``depth * (window // 2)`` tokens of look-ahead, and global
tokens need the whole sequence, so neither can carry a state; passing one is a
`ConfigError` (run them on the whole token sequence).

Dimensions: B batch, N tokens, D width, H heads, r = window // 2, b tokens a query block,
S blocks, K = b + 2r (b + r when causal) keys a block, G global tokens.
"""

from __future__ import annotations

import math

import torch
from timm.layers import trunc_normal_
from torch import nn

from xtimage.encoders.context.base import CONTEXT_ENCODERS, ContextEncoder, State
from xtimage.encoders.context.layers import (
    Block,
    RelativePositionBias2d,
    check_inputs,
    check_width,
    init_weights,
    masked_bias,
    pad_tokens,
    unfold_windows,
)
from xtimage.errors import ConfigError, InputError

MIN_BLOCK = 16  # query block floor: tiny blocks waste time on per-block overhead


@CONTEXT_ENCODERS.register("windowed")
class WindowedContext(ContextEncoder):
    """Sliding-window attention over the token sequence, with optional global tokens.

    Args:
        dim: token width D.
        depth: number of blocks.
        heads: attention heads; must divide ``dim``.
        window: a token attends to tokens at most ``window // 2`` places away.
        num_global: learned global tokens (0: none; then causal windows stream).
        causal: token i sees only tokens j <= i of its window; excludes global tokens.
        mlp_ratio: MLP hidden width over ``dim``.
        drop: dropout after attention and in the MLP.
        attn_drop: dropout on attention weights.
        drop_path: stochastic-depth rate, increasing linearly to this over the blocks.
        rel_buckets: relative-position buckets per axis and sign.
        rel_max_distance: token offset beyond which buckets are shared.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 4,
        heads: int = 8,
        window: int = 256,
        num_global: int = 0,
        causal: bool = False,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        rel_buckets: int = 16,
        rel_max_distance: int = 256,
    ) -> None:
        super().__init__()
        check_width(dim, heads)
        if depth < 1 or window < 1 or num_global < 0:
            raise ConfigError(
                f"windowed attention needs depth >= 1, window >= 1 and num_global >= 0; "
                f"got depth={depth}, window={window}, num_global={num_global}"
            )
        if causal and num_global:
            raise ConfigError(
                f"num_global={num_global} with causal=True: global tokens see the whole "
                f"sequence, so every token would see the future through them; use one or the other"
            )
        self.dim = dim
        self.radius = window // 2
        self.causal = causal
        self.streamable = causal and num_global == 0
        self.block_len = max(self.radius, MIN_BLOCK)
        self.rel_pos = RelativePositionBias2d(heads, rel_buckets, rel_max_distance)
        self.global_tokens = nn.Parameter(torch.zeros(1, num_global, dim)) if num_global else None
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()  # meta-safe
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, drop=drop, attn_drop=attn_drop, drop_path=rate)
            for rate in rates
        )
        self.norm = nn.LayerNorm(dim)
        self.apply(init_weights)
        if self.global_tokens is not None:
            trunc_normal_(self.global_tokens, std=0.02)

    def _cache(self, tokens: torch.Tensor, positions: torch.Tensor, state: State) -> State:
        """The carried left context (causal streaming); empty at the start of an image."""
        B, _, D = tokens.shape
        if state is None:
            return {
                "hidden": [tokens.new_zeros(B, 0, D) for _ in self.blocks],
                "positions": positions.new_zeros(B, 0, 2),
                "mask": torch.zeros(B, 0, dtype=torch.bool, device=tokens.device),
            }
        if not self.streamable:
            raise ConfigError(
                f"windowed encoder (causal={self.causal}, num_global="
                f"{0 if self.global_tokens is None else self.global_tokens.shape[1]}) cannot "
                f"stream: bidirectional windows need look-ahead and global tokens the whole "
                f"sequence; call it once on the whole sequence with state=None"
            )
        if state["mask"].shape[0] != B:
            raise InputError(
                f"state is for a batch of {state['mask'].shape[0]} images, tokens for {B}; "
                f"start every image with state=None"
            )
        return state

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None = None,
        state: State = None,
    ) -> tuple[torch.Tensor, State]:
        """(B, N, D) tokens -> (B, N, D), and the state after them (None unless streamable)."""
        mask = check_inputs(self.dim, tokens, positions, mask)
        cache = self._cache(tokens, positions, state)
        B, n, D = tokens.shape
        r, b = self.radius, self.block_len
        ahead = 0 if self.causal else r
        K = b + r + ahead
        S = max(1, math.ceil(n / b))
        cached = cache["mask"].shape[1]

        # Context slot 0 is r tokens before the first query; block s sees slots
        # [s * b, s * b + K), and its query i sits at slot r + i of that window.
        left, right = r - cached, S * b + ahead - n
        all_pos = torch.cat([cache["positions"], positions], dim=1)  # (B, cached + n, 2)
        all_mask = torch.cat([cache["mask"], mask], dim=1)  # (B, cached + n)
        ctx_pos = pad_tokens(all_pos, left, right)  # (B, T, 2)
        ctx_valid = pad_tokens(all_mask, left, right, False)  # (B, T)

        q_slot = r + torch.arange(b, device=tokens.device)[:, None]  # (b, 1)
        k_slot = torch.arange(K, device=tokens.device)  # (K,)
        band = (k_slot - q_slot).abs() <= r
        if self.causal:
            band = band & (k_slot <= q_slot)
        allowed = (unfold_windows(ctx_valid, K, b)[:, :, None] & band) | (k_slot == q_slot)
        q_pos = ctx_pos[:, r : r + S * b].reshape(B, S, b, 2)
        bias = self.rel_pos(q_pos, unfold_windows(ctx_pos, K, b))  # (B, S, H, b, K)
        attn_mask = masked_bias(bias, allowed[:, :, None])  # (B, S, H, b, K)

        g = None
        if self.global_tokens is not None:
            G = self.global_tokens.shape[1]
            g = self.global_tokens.expand(B, G, D)  # (B, G, D)
            # Globals carry no position: zero bias to and from them; they see real tokens.
            zeros = attn_mask.new_zeros(B, S, 1, b, G).expand(-1, -1, attn_mask.shape[2], -1, -1)
            attn_mask = torch.cat([attn_mask, zeros], dim=-1)  # (B, S, H, b, K + G)
            g_allowed = torch.cat([mask.new_ones(B, G), mask], dim=1)  # (B, G + n)
            g_mask = masked_bias(
                attn_mask.new_zeros(B, 1, 1, 1, G + n), g_allowed[:, None, None, None]
            )

        keep = all_mask.shape[1] - min(r, all_mask.shape[1])  # the next call needs the last r
        h = tokens
        kept = []
        for block, carried in zip(self.blocks, cache["hidden"], strict=True):
            layer_in = torch.cat([carried, h], dim=1)  # (B, cached + n, D)
            if self.streamable:
                kept.append(layer_in[:, keep:].clone())
            ctx = pad_tokens(layer_in, left, right)  # (B, T, D)
            x = ctx[:, r : r + S * b].reshape(B, S, b, D)  # (B, S, b, D)
            h = block(x, ctx, attn_mask, extra=g).reshape(B, S * b, D)[:, :n]  # (B, n, D)
            if g is not None:
                g = block(g[:, None], torch.cat([g, layer_in], dim=1), g_mask)[:, 0]  # (B, G, D)

        new_state = None
        if self.streamable:
            new_state = {
                "hidden": kept,
                "positions": all_pos[:, keep:].clone(),
                "mask": all_mask[:, keep:].clone(),
            }
        return self.norm(h), new_state
