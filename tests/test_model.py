"""`XT.contextualise` against the computation it replaced, in float64."""

import torch

from xtimage.encoders.context import create_context_encoder
from xtimage.encoders.positional import sincos_2d
from xtimage.encoders.region import RegionEncoder
from xtimage.heads import ClassificationHead
from xtimage.model import XT, raster_order


def release_xt() -> XT:
    """The release's conventions: a CLS token read causally, raster token order."""
    encoder = RegionEncoder("convnext_atto", region=64, depths=(1, 1, 1, 1), dims=(8, 8, 16, 16))
    context = create_context_encoder("hyper", dim=16, depth=1, heads=2, causal=True, release=True,
                                     min_seq_len=8, block_size=4, sample_size=2)  # fmt: skip
    head = ClassificationHead(16, 5, pool="cls")
    return XT(encoder, context, head, region=64, release=True).double()


def gathered(model, tokens, positions, mask):
    """The former order: positions added in region-major order, then gathered, then the CLS
    token appended (the gather kept its input, tokens + positions, for the backward)."""
    x = tokens + sincos_2d(positions.flip(-1), model.dim).to(tokens.dtype)
    order = raster_order(positions, mask)
    x = x.gather(1, order[..., None].expand_as(x))
    mask = mask.gather(1, order)
    x = torch.cat([x, model.cls_token.expand(x.shape[0], -1, -1)], 1)
    positions = torch.cat([positions.gather(1, order[..., None].expand_as(positions)),
                           positions[:, -1:]], 1)  # fmt: skip
    mask = torch.cat([mask, mask.new_ones(x.shape[0], 1)], 1)
    out, _ = model.context(x, positions, mask)
    body = torch.empty_like(out[:, :-1]).scatter(1, order[..., None].expand_as(tokens), out[:, :-1])
    return torch.cat([body, out[:, -1:]], 1)


def test_release_order_indexed_before_the_positions_equals_the_gather_after():
    """Tokens are put in raster order first and the positions added after: the same
    numbers and gradients (so that the backward keeps no tokens + positions copy)."""
    torch.manual_seed(0)
    model = release_xt().train()
    layout = model.layout(64 * 3, 64 * 2)  # 3 x 2 regions: raster order differs
    n = layout.num_tokens
    tokens = torch.randn(2, n, 16, dtype=torch.float64, requires_grad=True)
    positions = layout.positions().expand(2, -1, -1)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, n - 5 :] = False
    results = []
    for run in (model.contextualise, lambda *a: (gathered(model, *a), None)):
        torch.manual_seed(1)  # the same hashes and samples
        out, _ = run(tokens, positions, mask)
        weight = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(2))
        grads = torch.autograd.grad((out * weight).sum(), (tokens, *model.context.parameters()))
        results.append((out.detach(), grads))
    (out, grads), (want, want_grads) = results
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
