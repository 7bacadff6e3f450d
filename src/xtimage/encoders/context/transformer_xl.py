"""Transformer-XL context encoder (Dai et al., ACL 2019), as used by xT (Gupta et al.,
ICML 2024) over region tokens.

The token sequence is cut into segments of ``segment_len`` tokens, counted from the first
token of the image. At every layer a segment attends to itself and to a memory: the
``mem_len`` hidden states of the layer below that precede the segment. Bidirectional
inside a segment by default; ``causal=True`` lets token i see only tokens j <= i.
Position enters as a learned 2-D relative bias over bucketed (row, col) offsets
(`layers.RelativePositionBias2d`), shared by the layers, in place of XL's 1-D sinusoidal
relative encoding: tokens are image cells and their sequence order jumps at region
borders, so the 2-D offset is the meaningful one.

Exactness. One call on a whole sequence computes, layer by layer, every segment at once
(O(N * (segment_len + mem_len)) time and memory). That equals attention over the whole
sequence under the banded block mask

    token i (segment s = i // segment_len) sees token j  iff  j is real and
    s * segment_len - mem_len <= j < (s + 1) * segment_len   (and j <= i if causal),

and it equals the segment-by-segment recurrence of Transformer-XL, whose memories are
exactly those hidden states. Running consecutive pieces of the sequence while carrying
``state`` gives the same outputs and, with the state left attached, the same gradients:

- ``causal=True``: for pieces of any lengths.
- ``causal=False``: when every piece but the last ends on a segment boundary (its length,
  counted from the image start, a multiple of ``segment_len``), because a token sees the
  rest of its segment. ``chunk_multiple`` says so (``segment_len``, or 1 when causal);
  a piece that breaks the rule is refused with a `ConfigError`, never silently wrong.

Memory is back-propagated inside a call and through an attached state (exact training);
streaming training cuts it with `base.detach_state`, as XL does. The state is a dict:
``offset`` (tokens seen), ``hidden`` (per layer, the input hidden states of the tokens
from ``max(0, segment start - mem_len)`` on), their ``positions`` and ``mask``; it holds
at most ``mem_len + segment_len`` tokens a layer.

Dimensions: B batch, N tokens, D width, H heads, L segment_len, M mem_len, S segments of
a call, K = M + L keys a segment.
"""

from __future__ import annotations

import math

import torch
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


@CONTEXT_ENCODERS.register("transformer_xl")
@CONTEXT_ENCODERS.register("xl")
class TransformerXL(ContextEncoder):
    """Segment-recurrent transformer with a memory of earlier hidden states.

    Args:
        dim: token width D.
        depth: number of blocks.
        heads: attention heads; must divide ``dim``.
        segment_len: tokens a segment (a model hyper-parameter, not a memory knob).
        mem_len: hidden states of the layer below each segment also attends to.
        causal: token i sees only tokens j <= i (else bidirectional inside a segment).
        mlp_ratio: MLP hidden width over ``dim``.
        drop: dropout after attention and in the MLP.
        attn_drop: dropout on attention weights.
        drop_path: stochastic-depth rate, increasing linearly to this over the blocks.
        rel_buckets: relative-position buckets per axis and sign.
        rel_max_distance: token offset beyond which buckets are shared.
        init: linear-layer init: "timm" (truncated normal, std 0.02, zero biases: the
            ViT recipe, tuned for width 768) or "torch" (PyTorch's default, uniform
            within 1 / sqrt(fan_in): at narrow widths it mixes tokens from the start).
        final_norm: LayerNorm the output.
    """

    streamable = True

    def __init__(
        self,
        dim: int,
        depth: int = 4,
        heads: int = 8,
        segment_len: int = 256,
        mem_len: int = 256,
        causal: bool = False,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        rel_buckets: int = 16,
        rel_max_distance: int = 256,
        init: str = "timm",
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        check_width(dim, heads)
        if init not in ("timm", "torch"):
            raise ConfigError(f"Transformer-XL init must be 'timm' or 'torch', got {init!r}")
        if depth < 1 or segment_len < 1 or mem_len < 0:
            raise ConfigError(
                f"Transformer-XL needs depth >= 1, segment_len >= 1 and mem_len >= 0; "
                f"got depth={depth}, segment_len={segment_len}, mem_len={mem_len}"
            )
        self.dim = dim
        self.segment_len = segment_len
        self.mem_len = mem_len
        self.causal = causal
        self.chunk_multiple = 1 if causal else segment_len
        self.rel_pos = RelativePositionBias2d(heads, rel_buckets, rel_max_distance)
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()  # meta-safe
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, drop=drop, attn_drop=attn_drop, drop_path=rate)
            for rate in rates
        )
        self.norm = nn.LayerNorm(dim) if final_norm else nn.Identity()
        if init == "timm":
            self.apply(init_weights)

    def _empty_state(self, tokens: torch.Tensor, positions: torch.Tensor) -> State:
        B, _, D = tokens.shape
        return {
            "offset": 0,
            "hidden": [tokens.new_zeros(B, 0, D) for _ in self.blocks],
            "positions": positions.new_zeros(B, 0, 2),
            "mask": torch.zeros(B, 0, dtype=torch.bool, device=tokens.device),
        }

    def _check_state(self, state: State, batch: int) -> None:
        offset = state["offset"]
        if not self.causal and offset % self.segment_len:
            raise ConfigError(
                f"bidirectional Transformer-XL got a piece starting at token {offset}, "
                f"inside a segment of {self.segment_len} tokens; feed pieces whose lengths "
                f"are multiples of segment_len (encoder.chunk_multiple), or use causal=True"
            )
        if state["mask"].shape[0] != batch:
            raise InputError(
                f"state is for a batch of {state['mask'].shape[0]} images, tokens for {batch}; "
                f"start every image with state=None"
            )

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None = None,
        state: State = None,
    ) -> tuple[torch.Tensor, State]:
        """(B, N, D) tokens of a piece of the sequence -> (B, N, D), the state after it."""
        mask = check_inputs(self.dim, tokens, positions, mask)
        if state is None:
            state = self._empty_state(tokens, positions)
        self._check_state(state, tokens.shape[0])
        B, n, D = tokens.shape
        if n == 0:
            return self.norm(tokens), state
        L, M = self.segment_len, self.mem_len
        offset, cached = state["offset"], state["mask"].shape[1]

        # Context slots cover absolute tokens [s0 * L - M, (s0 + S) * L): the memory of the
        # first segment, then S whole segments; slot M + t is the t-th query slot.
        s0, phase = divmod(offset, L)
        S = math.ceil((phase + n) / L)
        left = (offset - cached) - (s0 * L - M)  # zero slots before the cache (image start)
        right = (s0 + S) * L - (offset + n)  # zero slots after the last token
        all_pos = torch.cat([state["positions"], positions], dim=1)  # (B, cached + n, 2)
        all_mask = torch.cat([state["mask"], mask], dim=1)  # (B, cached + n)
        ctx_pos = pad_tokens(all_pos, left, right)  # (B, T, 2)
        ctx_valid = pad_tokens(all_mask, left, right, False)  # (B, T)

        # Inside a window, query i of the segment sits at key slot M + i.
        q_slot = M + torch.arange(L, device=tokens.device)[:, None]  # (L, 1)
        k_slot = torch.arange(M + L, device=tokens.device)  # (K,)
        allowed = unfold_windows(ctx_valid, M + L, L)[:, :, None]  # (B, S, 1, K)
        if self.causal:
            allowed = allowed & (k_slot <= q_slot)  # (B, S, L, K)
        allowed = allowed | (k_slot == q_slot)  # a token always sees itself: no empty row
        q_pos = ctx_pos[:, M:].reshape(B, S, L, 2)
        bias = self.rel_pos(q_pos, unfold_windows(ctx_pos, M + L, L))  # (B, S, H, L, K)
        attn_mask = masked_bias(bias, allowed[:, :, None])  # (B, S, H, L, K)

        end = offset + n
        keep = max(0, (end // L) * L - M) - (offset - cached)  # first slot the next call needs
        h = tokens
        kept = []
        for block, cache in zip(self.blocks, state["hidden"], strict=True):
            layer_in = torch.cat([cache, h], dim=1)  # (B, cached + n, D)
            kept.append(layer_in[:, keep:].clone())
            ctx = pad_tokens(layer_in, left, right)  # (B, S * L + M, D)
            h = block(ctx[:, M:].reshape(B, S, L, D), ctx, attn_mask)  # (B, S, L, D)
            h = h.reshape(B, S * L, D)[:, phase : phase + n]  # (B, n, D)

        new_state = {
            "offset": end,
            "hidden": kept,
            "positions": all_pos[:, keep:].clone(),
            "mask": all_mask[:, keep:].clone(),
        }
        return self.norm(h), new_state
