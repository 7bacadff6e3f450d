"""Positional encodings: formula by hand, determinism, distinct codes, interpolation."""

import math

import pytest
import torch

from xtimage.encoders.positional import LearnedPositional2d, sincos_2d
from xtimage.errors import ConfigError
from xtimage.tiling import RegionPlan, TokenLayout


def grid_positions(rows, cols):
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([r.flatten(), c.flatten()], -1)  # (rows*cols, 2)


@pytest.mark.parametrize("dim", [4, 8, 32])
def test_sincos_matches_the_formula(dim):
    positions = torch.randint(0, 4000, (20, 2))
    codes = sincos_2d(positions, dim)
    assert codes.shape == (20, dim) and codes.dtype == torch.float32
    q = dim // 4
    for (r, c), code in zip(positions.tolist(), codes, strict=True):
        w = [10000.0 ** (-k / q) for k in range(q)]
        expected = (
            [math.sin(r * x) for x in w]
            + [math.cos(r * x) for x in w]
            + [math.sin(c * x) for x in w]
            + [math.cos(c * x) for x in w]
        )
        torch.testing.assert_close(code, torch.tensor(expected, dtype=torch.float32))


def test_sincos_is_deterministic_and_chunk_independent():
    layout = TokenLayout(RegionPlan(700, 900, 256, margin=32), 32)
    positions = layout.positions()[None].expand(2, -1, -1)  # (B, N, 2)
    codes = sincos_2d(positions, 64)
    assert codes.shape == (2, layout.num_tokens, 64)
    assert torch.equal(codes, sincos_2d(positions, 64))
    for regions in layout.plan.chunks(3):
        part = layout.token_slice(regions)
        assert torch.equal(sincos_2d(positions[:, part], 64), codes[:, part])


def test_sincos_codes_of_distinct_positions_are_distinct():
    positions = grid_positions(64, 64)  # includes both (r, c) and (c, r)
    codes = sincos_2d(positions, 32)
    dist = torch.cdist(codes, codes)  # (4096, 4096)
    dist.fill_diagonal_(float("inf"))
    assert dist.min() > 1e-2


def test_sincos_width_must_be_a_multiple_of_four():
    with pytest.raises(ConfigError, match="multiple of 4"):
        sincos_2d(torch.zeros(3, 2, dtype=torch.long), 30)


def bilinear(table, size):
    """Plain loops: bilinear resize with align_corners=False (half-pixel centres)."""
    h, w, d = table.shape
    out = torch.empty(*size, d, dtype=table.dtype)

    def taps(dst, n_in, n_out):
        src = max((dst + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        return [(i0, 1.0 - (src - i0)), (i1, src - i0)]

    for y in range(size[0]):
        for x in range(size[1]):
            acc = torch.zeros(d, dtype=table.dtype)
            for i, a in taps(y, h, size[0]):
                for j, b in taps(x, w, size[1]):
                    acc += a * b * table[i, j]
            out[y, x] = acc
    return out


def test_learned_indexes_the_table_inside_its_grid():
    pe = LearnedPositional2d(8, (5, 7))
    positions = grid_positions(5, 7)
    assert torch.equal(pe(positions), pe.table.reshape(35, 8))
    assert torch.equal(pe(positions[:4], grid=(3, 4)), pe.table[0, :4])  # smaller: no resize


@pytest.mark.parametrize("grid", [(9, 7), (5, 12), (11, 13)])
def test_learned_is_interpolated_when_the_grid_grows(grid):
    pe = LearnedPositional2d(6, (5, 7)).double()
    positions = grid_positions(*grid)
    codes = pe(positions, grid=grid)
    size = (max(5, grid[0]), max(7, grid[1]))
    expected = bilinear(pe.table.detach(), size)
    torch.testing.assert_close(codes.detach(), expected.reshape(-1, 6), rtol=1e-12, atol=1e-12)


def test_learned_is_chunk_independent_given_the_grid_and_trains():
    layout = TokenLayout(RegionPlan(300, 500, 64), 32)  # grid (10, 16) > table (4, 4)
    pe = LearnedPositional2d(8, (4, 4))
    positions = layout.positions()
    whole = pe(positions, grid=layout.grid)
    for regions in layout.plan.chunks(5):
        part = layout.token_slice(regions)
        assert torch.equal(pe(positions[part], grid=layout.grid), whole[part])
    whole.sum().backward()
    assert pe.table.grad.abs().min() > 0  # every table cell feeds some code


@pytest.mark.parametrize("table", [(64, 64), (48, 40)])
def test_learned_codes_are_distinct_and_deterministic(table):
    torch.manual_seed(3)
    pe = LearnedPositional2d(16, table)
    torch.manual_seed(3)
    again = LearnedPositional2d(16, table)
    positions = grid_positions(64, 64)
    codes = pe(positions)
    assert torch.equal(codes, again(positions))
    dist = torch.cdist(codes, codes)
    dist.fill_diagonal_(float("inf"))
    assert dist.min() > 0


def test_learned_positions_outside_the_grid_fail():
    pe = LearnedPositional2d(4, (3, 3))
    with pytest.raises(ConfigError, match="grid=layout.grid"):
        pe(torch.tensor([[2, 5]]), grid=(4, 4))
    with pytest.raises(ConfigError):
        pe(torch.tensor([[-1, 0]]))
