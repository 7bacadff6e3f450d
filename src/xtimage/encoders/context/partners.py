"""Symmetric partners: each token also reads the tokens at its mirror images in the grid.

A context encoder mixes every token with many others; a task whose answer compares two
places related by a fixed geometry (a left and a right lung, a scene and its point
mirror) needs one particular partner, and gradient descent rarely finds it when the
answer depends on the pair only (an exclusive or gives no first-order signal for either
place alone; docs/context_pays.md, "pairs"). `SymmetricPartners` hands the partner over:

    out = inner(tokens) + sum over relations r of  W_r tokens[partner_r(position)]

``W_r`` is a learned linear map (``proj="linear"``, D x D) or a learned per-channel gate
after a fixed random rotation (``proj="gate"``, ``g_r * (R_r x) + b_r``, 2 D numbers).
Both start at zero. Under Adam a projection that the task does not use still drifts by
about the learning rate each step; a drifting D x D map adds noise of norm about
sqrt(D) times its entries' size to every token, a gate of its entries' size only. The
rotation, drawn once per relation, puts the partner's code in directions apart from the
token's own, so that what follows can tell the two apart (a gate without it adds the
partner onto the token's own channels, and `pairs` was not learnt so).

Relations map cells of the bounding box of the image's real tokens (any height and width;
a set of kept regions maps within its own box): ``hflip`` (left-right mirror), ``vflip``
(top-bottom), ``rot180`` (point mirror); ``transpose``, ``antitranspose``, ``rot90`` and
``rot270`` (exact on square grids, the nearest cell otherwise); ``hshift`` and ``vshift``
(half the box across or down, wrapping: two images side by side or stacked). A token
whose partner is not among the real tokens (a skipped region) gets nothing from it.

It needs the whole image's tokens in one call, so it is not streamable: direct and exact
training and all-at-once inference, not streaming mode. Train on whole images: a random
window's mirror is not the image's (the config refuses ``data.window`` with partners).
Augmenting with quarter turns swaps ``hflip`` and ``vflip`` (and the shifts): name both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from xtimage.encoders.context.base import ContextEncoder, State
from xtimage.errors import ConfigError

Offsets = tuple[torch.Tensor, torch.Tensor]


def _rescale(d: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Offset ``d`` on an axis of ``src`` cells -> the nearest on one of ``dst`` cells."""
    return torch.round(d.double() * (dst - 1) / (src - 1).clamp_min(1)).long()


# (row, col) offsets in a box of R x C cells (B, N), (B, N), (B, 1), (B, 1) -> the partner's
Relation = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], Offsets]
RELATIONS: dict[str, Relation] = {
    "hflip": lambda r, c, R, C: (r, C - 1 - c),
    "vflip": lambda r, c, R, C: (R - 1 - r, c),
    "rot180": lambda r, c, R, C: (R - 1 - r, C - 1 - c),
    "transpose": lambda r, c, R, C: (_rescale(c, C, R), _rescale(r, R, C)),
    "antitranspose": lambda r, c, R, C: (_rescale(C - 1 - c, C, R), _rescale(R - 1 - r, R, C)),
    "rot90": lambda r, c, R, C: (_rescale(c, C, R), _rescale(R - 1 - r, R, C)),
    "rot270": lambda r, c, R, C: (_rescale(C - 1 - c, C, R), _rescale(r, R, C)),
    "hshift": lambda r, c, R, C: (r, (c + C // 2) % C),
    "vshift": lambda r, c, R, C: ((r + R // 2) % R, c),
}


def check_relations(relations: Sequence[str], where: str = "model.partners") -> None:
    """Refuse unknown relation names, naming the valid ones."""
    unknown = [r for r in relations if r not in RELATIONS]
    if unknown:
        raise ConfigError(f"{where}: unknown relation {unknown}; choose from {list(RELATIONS)}")
    if len(set(relations)) != len(relations):
        raise ConfigError(f"{where}: {list(relations)} names a relation twice")


def partner_index(
    positions: torch.Tensor, mask: torch.Tensor | None, relation: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each token's partner sits in the sequence.

    Args:
        positions: (B, N, 2) int64 (row, col) on the token grid.
        mask: (B, N) bool, True for real tokens, or None (all real).
        relation: a name in `RELATIONS`.

    Returns:
        index (B, N) int64 into N (0 where there is no partner) and found (B, N) bool.
    """
    B, N, _ = positions.shape
    device = positions.device
    valid = torch.ones(B, N, dtype=torch.bool, device=device) if mask is None else mask
    if not valid.any():
        return torch.zeros(B, N, dtype=torch.long, device=device), valid
    rows, cols = positions.unbind(-1)  # (B, N) each
    far = torch.iinfo(torch.long).max

    def box(coord: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = coord.masked_fill(~valid, far).amin(1, keepdim=True)  # (B, 1)
        low = low.masked_fill(~valid.any(1, keepdim=True), 0)  # an image without tokens
        cells = (coord.masked_fill(~valid, -1).amax(1, keepdim=True) - low + 1).clamp_min(1)
        return low, cells

    (r0, R), (c0, C) = box(rows), box(cols)  # (B, 1) each: first cell, cells
    dr, dc = RELATIONS[relation](rows - r0, cols - c0, R, C)  # (B, N) each
    prow, pcol = r0 + dr, c0 + dc
    # a dense (B, H, W) grid of sequence indices, -1 where no real token sits
    height, width = int((r0 + R).max()), int((c0 + C).max())
    grid = torch.full((B, height, width), -1, dtype=torch.long, device=device)
    batch = torch.arange(B, device=device)[:, None].expand(B, N)
    order = torch.arange(N, device=device)[None].expand(B, N)
    grid[batch[valid], rows[valid], cols[valid]] = order[valid]
    # a real token's partner lies in its box by construction; padding's may lie anywhere
    index = grid[batch, prow.clamp(0, height - 1), pcol.clamp(0, width - 1)]
    found = valid & (index >= 0)
    return index.clamp_min(0), found


class RotationGate(nn.Module):
    """``(x @ rotation.T) * weight + bias``: a fixed orthogonal map, then a learned gate
    and shift per channel, both zero at first; (..., D) -> (..., D).

    The rotation is drawn from its own generator seeded by ``seed`` (not the global
    one) and saved with the weights.
    """

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        self.register_buffer("rotation", q * torch.sign(torch.diagonal(r)))  # Haar
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.rotation.T) * self.weight + self.bias


PROJECTIONS = ("linear", "gate")


class SymmetricPartners(ContextEncoder):
    """A context encoder plus, per relation, a projection of each token's partner.

    The partners are read from the tokens the context encoder receives (region tokens
    with their 2-D position code), not from its output: its mixing cannot bury them.
    The projections start at zero, so a fresh wrapper computes what ``inner`` computes.
    ``proj``: "linear" (D x D) or "gate" (a fixed rotation, then a gate per channel).
    """

    streamable = False

    def __init__(
        self, inner: ContextEncoder, relations: Sequence[str], proj: str = "linear"
    ) -> None:
        super().__init__()
        check_relations(relations)
        if not relations:
            raise ConfigError("model.partners is empty; leave it out for no partners")
        if proj not in PROJECTIONS:
            raise ConfigError(f"model.partner_proj '{proj}': use one of {list(PROJECTIONS)}")
        self.inner = inner
        self.dim = inner.dim
        self.relations = list(relations)
        self.proj = nn.ModuleList(self._zero_projection(proj, i) for i in range(len(relations)))

    def _zero_projection(self, proj: str, index: int) -> nn.Module:
        """A projection that starts at zero and draws nothing from the global generator,
        so a seed gives the other weights what it gives the unwrapped model."""
        if proj == "gate":
            return RotationGate(self.dim, seed=index)
        linear = nn.utils.skip_init(nn.Linear, self.dim, self.dim)
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)
        return linear

    @property
    def recomputable(self) -> bool:  # type: ignore[override]
        return self.inner.recomputable

    @property
    def checkpoint(self) -> bool:  # type: ignore[override]
        return self.inner.checkpoint

    @checkpoint.setter
    def checkpoint(self, value: bool) -> None:
        self.inner.checkpoint = value

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None = None,
        state: State = None,
    ) -> tuple[torch.Tensor, State]:
        out, _ = self.inner(tokens, positions, mask, state)  # (B, N, D)
        rows = torch.arange(tokens.shape[0], device=tokens.device)[:, None]  # (B, 1)
        for relation, proj in zip(self.relations, self.proj, strict=True):
            index, found = partner_index(positions, mask, relation)  # (B, N) each
            partner = proj(tokens[rows, index])  # (B, N, D)
            out = out + partner * found[..., None].to(partner.dtype)
        return out, None
