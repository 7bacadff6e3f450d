"""RegionTokenizer: pooling equals block means by hand, order is row-major per region."""

import pytest
import torch
import torch.nn.functional as F

from xtimage.encoders.context import IdentityContext
from xtimage.encoders.region import RegionEncoder
from xtimage.encoders.tokens import RegionTokenizer
from xtimage.errors import ConfigError
from xtimage.heads import DenseHead, DenseOutput
from xtimage.model import XT
from xtimage.tiling import RegionPlan, TokenLayout


def block_means(maps, g):
    """Plain loops: the mean of each (s/g) x (s/g) block, (N, g*g, C) row-major."""
    n, c, s, _ = maps.shape
    b = s // g
    out = torch.empty(n, g * g, c, dtype=maps.dtype)
    for i in range(g):
        for j in range(g):
            out[:, i * g + j] = maps[:, :, i * b : (i + 1) * b, j * b : (j + 1) * b].mean((-2, -1))
    return out


def identity_tokenizer(channels, pool):
    tok = RegionTokenizer(channels, channels, pool, norm=False)
    with torch.no_grad():
        tok.proj.weight.copy_(torch.eye(channels))
        tok.proj.bias.zero_()
    return tok


@pytest.mark.parametrize(("side", "pool"), [(8, 1), (8, 2), (8, 4), (6, 3), (8, None), (4, 4)])
def test_tokens_are_projected_block_means(side, pool):
    tok = RegionTokenizer(16, 12, pool).double()
    torch.nn.init.normal_(tok.norm.weight)
    torch.nn.init.normal_(tok.norm.bias)
    maps = torch.randn(3, 16, side, side, dtype=torch.float64)
    out = tok(maps)
    g = pool or side
    assert out.shape == (3, g * g, 12)
    pooled = block_means(maps, g)
    expected = F.layer_norm(F.linear(pooled, tok.proj.weight, tok.proj.bias), (12,))
    expected = expected * tok.norm.weight + tok.norm.bias
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_without_norm_is_the_plain_projection_row_major():
    tok = identity_tokenizer(4, None)
    maps = torch.arange(2 * 4 * 3 * 3, dtype=torch.float32).reshape(2, 4, 3, 3)
    out = tok(maps)  # (2, 9, 4)
    for r in range(3):
        for c in range(3):
            assert torch.equal(out[:, r * 3 + c], maps[:, :, r, c])


def test_pooled_tokens_are_means_of_cells_at_the_layout_positions():
    """Each pooled token is the mean of the full tokens whose positions fall in its cell."""
    plan = RegionPlan(200, 260, 128, margin=32)
    pooled, full = TokenLayout.pooled(plan, 2), TokenLayout(plan, 16)
    maps = full.crop(torch.randn(plan.num_regions, 8, 8, 8))  # (R, 8, 4, 4) cores
    small = identity_tokenizer(8, 2)(maps).flatten(0, 1)  # (R*4, 8)
    large = identity_tokenizer(8, None)(maps).flatten(0, 1)  # (R*16, 8)
    factor = full.side // pooled.side
    cell = full.positions() // factor  # (R*16, 2)
    for token, pos in zip(small, pooled.positions(), strict=True):
        inside = (cell == pos).all(-1)
        assert inside.sum() == factor**2
        torch.testing.assert_close(token, large[inside].mean(0))


def test_pools_that_do_not_fit_fail_clearly():
    with pytest.raises(ConfigError, match="does not divide the 8 x 8"):
        RegionTokenizer(4, 4, pool=3)(torch.randn(1, 4, 8, 8))
    with pytest.raises(ConfigError, match="does not divide"):
        RegionTokenizer(4, 4, pool=16)(torch.randn(1, 4, 8, 8))
    with pytest.raises(ConfigError, match="positive"):
        RegionTokenizer(4, 4, pool=0)


def test_regions_are_tokenised_independently_and_gradients_flow():
    tok = RegionTokenizer(6, 5, pool=2)
    maps = torch.randn(4, 6, 4, 4, requires_grad=True)
    out = tok(maps)
    assert torch.equal(out[1:3], tok(maps[1:3]))
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tok.parameters())
    assert maps.grad.abs().sum() > 0


def test_tokens_of_several_maps_concatenate_their_block_means():
    """Shallower maps are pooled to the deepest map's grid and stand before it."""
    tok = identity_tokenizer(6, 2)
    tok.proj = torch.nn.Linear(6, 6, dtype=torch.float64)
    with torch.no_grad():
        tok.proj.weight.copy_(torch.eye(6))
        tok.proj.bias.zero_()
    shallow = torch.randn(3, 2, 16, 16, dtype=torch.float64)
    deep = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    out = tok([shallow, deep])  # (3, 4, 6)
    expected = torch.cat([block_means(shallow, 2), block_means(deep, 2)], -1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert RegionTokenizer([2, 4], 5).proj.in_features == 6


def test_max_reduced_shallow_maps_keep_a_small_detail_at_full_strength():
    """reduce="max": each shallower map's cell maxima, by plain loops; a detail covering
    one cell of a 16 x 16 block keeps its value where the mean divides it by 256."""
    shallow = torch.randn(3, 2, 16, 16, dtype=torch.float64)
    shallow[0, 0, 5, 7] = 50.0  # a small strong response
    deep = torch.randn(3, 4, 1, 1, dtype=torch.float64)
    cells = {
        r: RegionTokenizer([2, 4], 6, reduce=r).cells([shallow, deep]) for r in ("mean", "max")
    }
    expected = shallow.flatten(2).amax(-1)  # (3, 2)
    torch.testing.assert_close(cells["max"][:, 0, :2], expected, rtol=0, atol=0)
    torch.testing.assert_close(cells["max"][:, 0, 2:], deep.flatten(1), rtol=0, atol=0)
    assert cells["max"][0, 0, 0] == 50.0
    assert cells["mean"][0, 0, 0] < 50.0 / 256 + 1
    with pytest.raises(ConfigError, match="'median'"):
        RegionTokenizer([2, 4], 6, reduce="median")


def test_tokens_reading_shallow_maps_crop_each_maps_margin():
    """With a margin, every map a token reads is cropped to the region's core: the
    tokens equal those of the core maps cut by hand."""
    encoder = RegionEncoder("convnext_atto", region=128, depths=(1, 1, 1, 1), dims=(8, 8, 16, 16))
    head = DenseHead(encoder.feature_info[:-1], 16, [DenseOutput("mask", 2)], channels=8)
    model = XT(encoder, IdentityContext(16), head, region=128, margin=32, token_maps=2).double()
    regions = torch.randn(2, 3, 128, 128, dtype=torch.float64)
    maps, tokens = model.encode(regions)
    cut = [m[..., 32 // s : -(32 // s), 32 // s : -(32 // s)] for m, s in
           zip(maps[-2:], (16, 32), strict=True)]  # fmt: skip
    torch.testing.assert_close(tokens, model.tokenizer(cut), rtol=0, atol=0)
    assert tokens.shape == (2, 4, 16)  # a 64 px core at stride 32: 2 x 2 tokens
    with pytest.raises(ConfigError, match="token_maps"):
        XT(encoder, IdentityContext(16), head, region=128, margin=32, token_maps=5)
