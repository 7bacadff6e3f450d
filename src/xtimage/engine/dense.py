"""Dense inference with a streamable context: both passes advance together.

`Engine.segment` needs, for each chunk it decodes, the chunk's skip maps (re-encoded) and
the contextualised tokens of every region its windows reach: its own and, through the
margin, its neighbours' up to ``reach = ceil(margin / core)`` region rows below and above.
With a streamable context encoder (Transformer-XL, forward Mamba, ...) the context runs
chunk by chunk with the carried state, as in streamed classification, and runs only as far
ahead as the next chunk to decode needs; contextualised tokens are dropped once no later
chunk's windows reach them. So what is kept is a band of region rows (the chunk's rows
plus ``reach`` on each side, plus at most one chunk read ahead), set by the image's width,
never by its height, and no token sequence of the whole image is ever held.

Two readers walk the image: the context pass (encode tokens, contextualise) leads, the
decoding pass (re-encode skip maps, decode) follows; each region is encoded twice, as in
the two-pass path.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from xtimage.runtime import autocast
from xtimage.tiling import TokenLayout

if TYPE_CHECKING:
    from xtimage.engine.runner import Engine
    from xtimage.engine.source import RegionSource


def contextualised_parts(
    engine: Engine, source: RegionSource, layout: TokenLayout, regions: Sequence[int]
) -> Iterator[torch.Tensor]:
    """Contextualised tokens of ``regions`` in order, part by part, state carried.

    Each chunk's tokens are fed to the context encoder in whole segments of its
    ``chunk_multiple`` (the rest waits for the next chunk; the last part takes all).

    Yields:
        (n, D) tokens in the engine's dtype; together, ``len(regions) * T`` of them.
    """
    model = engine.model
    multiple = model.context.chunk_multiple
    state, pending = None, None  # pending: [tokens, positions, valid], each (1, n, ...)
    chunks = engine._chunks(source, layout, list(regions))
    while True:
        step = next(chunks, None)
        if step is None and pending is None:  # no regions
            return
        with autocast(engine.device, engine.autocast):
            if step is not None:
                _, chunk, pixels = step
                new = [
                    model.encode_tokens(pixels).flatten(0, 1)[None],  # (1, k*T, D)
                    layout.positions(chunk)[None].to(engine.device),
                    layout.valid(chunk)[None].to(engine.device),
                ]
                if pending is not None:
                    new = [torch.cat(pair, 1) for pair in zip(pending, new, strict=True)]
                pending = new
            n = pending[0].shape[1]
            n = n if step is None else n // multiple * multiple
            ctx = None
            if n:
                ctx, state = model.contextualise(*(x[:, :n] for x in pending), state)
                pending = [x[:, n:] for x in pending]
        if ctx is not None:  # yielded outside autocast: it must not leak into the caller
            yield ctx[0].to(engine.dtype)
        if step is None:
            return


def streamed_windows(
    engine: Engine, source: RegionSource, layout: TokenLayout, regions: Sequence[int]
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Per chunk of ``regions``: (chunk, pixels, token windows), the context streamed.

    The token windows are `XT.token_windows` of the chunk, computed from a band of
    contextualised tokens that is advanced and trimmed as the chunks go by.
    """
    model, plan = engine.model, layout.plan
    t = layout.tokens_per_region
    reach = -(-model.margin // plan.core)  # region rows a window reaches into
    regions = list(regions)
    parts = contextualised_parts(engine, source, layout, regions)
    band: list[torch.Tensor] = []  # contextualised tokens from region index ``first`` on
    first, done = 0, 0  # done: tokens contextualised so far
    for _, chunk, pixels in engine._chunks(source, layout, regions):
        rows = chunk[0] // plan.cols, chunk[-1] // plan.cols
        # every kept region in the rows the chunk's windows reach must be contextualised
        need = bisect.bisect_left(regions, (rows[1] + reach + 1) * plan.cols)
        while done < need * t:
            band.append(next(parts))
            done += band[-1].shape[0]
        # regions above the band are reached by no later chunk: drop them
        low = bisect.bisect_left(regions, max(rows[0] - reach, 0) * plan.cols)
        tokens = torch.cat(band)[(low - first) * t :]
        band, first = [tokens], low
        have = regions[low : done // t]
        yield chunk, pixels, model.token_windows(tokens[: len(have) * t], layout, have, chunk)
