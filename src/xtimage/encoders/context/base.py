"""The context-encoder interface, the registry, and `none` (identity).

Every context encoder maps region tokens to contextualised tokens of the same shape:

    out, state = encoder(tokens, positions, mask=None, state=None)

    tokens:    (B, N, D) float, region-major order (see `xtimage.tiling`).
    positions: (B, N, 2) int64, global (row, col) on the image's token grid.
    mask:      (B, N) bool, True where a token is real; False for padding and skipped
               regions. Masked tokens are never attended to and never update a state;
               their outputs are unspecified (callers ignore them).
    state:     None for the first segment of an image, else what the previous call on
               the preceding segment returned. A pytree (tensor, or tuple/list/dict of
               them); `detach_state` cuts it from the graph for streaming training.

``encoder.streamable`` tells whether running consecutive segments while carrying the state
equals one call on the whole sequence; the engine streams only those. Segment and memory
lengths are model hyper-parameters, saved with the model; never a memory knob.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from xtimage.registry import Registry

State = Any

CONTEXT_ENCODERS: Registry[nn.Module] = Registry("context encoder")


class ContextEncoder(nn.Module):
    """Base class: subclasses set ``dim`` and ``streamable`` and implement `forward`.

    Attributes:
        dim: token width D.
        streamable: segments with the carried state equal one call on the whole sequence.
        chunk_multiple: token count every streamed segment but the last must be a
            multiple of (e.g. Transformer-XL's ``segment_len``); the engine rounds its
            chunks of regions to it.
        checkpoint: recompute activations in the backward instead of keeping them (an
            encoder that supports it sets ``recomputable``; the memory planner may
            switch it on for exact-mode training).
    """

    dim: int
    streamable: bool = False
    chunk_multiple: int = 1
    recomputable: bool = False
    checkpoint: bool = False

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None = None,
        state: State = None,
    ) -> tuple[torch.Tensor, State]:
        raise NotImplementedError


def detach_state(state: State) -> State:
    """The same state with every tensor detached (memory not back-propagated)."""
    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, state)


def create_context_encoder(name: str, **kwargs: Any) -> ContextEncoder:
    """Build a registered context encoder; unknown names or arguments list the valid ones."""
    return CONTEXT_ENCODERS.create(name, **kwargs)


@CONTEXT_ENCODERS.register("none")
class IdentityContext(ContextEncoder):
    """No context: each region sees only itself (the crop-only baseline)."""

    streamable = True

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, tokens, positions, mask=None, state=None):
        return tokens, None
