import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from xtimage.errors import ConfigError
from xtimage.tiling import (
    RegionPlan,
    TokenLayout,
    crop_padded,
    extract_regions,
    stitch_regions,
)
from xtimage.window import Window


@st.composite
def plans(draw):
    region = draw(st.integers(1, 24))
    margin = draw(st.integers(0, (region - 1) // 2))
    height = draw(st.integers(1, 70))
    width = draw(st.integers(1, 70))
    divisors = [d for d in range(1, region + 1) if region % d == 0]
    sub = draw(st.one_of(st.none(), st.sampled_from(divisors)))
    return RegionPlan(height, width, region, margin, sub)


@given(plans())
def test_cores_tile_the_image_exactly_once(plan):
    cover = torch.zeros(plan.rows * plan.core, plan.cols * plan.core, dtype=torch.int32)
    for i in range(plan.num_regions):
        w = plan.core_window(i)
        rows, cols = w.slices()
        cover[rows, cols] += 1
        # the read window is the core grown by the margin
        assert plan.window(i) == Window(
            w.top - plan.margin, w.left - plan.margin, plan.region, plan.region
        )
    assert (cover == 1).all()
    assert plan.rows == math.ceil(plan.height / plan.core)
    assert plan.padding[0] < plan.core and plan.padding[1] < plan.core


@given(plans(), st.integers(1, 4), st.integers(1, 3), st.integers(1, 2))
def test_extract_then_stitch_is_identity(plan, channels, batch, chunk):
    image = torch.randn(batch, channels, plan.height, plan.width)
    parts = [extract_regions(image, plan, c) for c in plan.chunks(chunk)]
    regions = torch.cat(parts, dim=1)
    assert regions.shape == (batch, plan.num_regions, channels, plan.region, plan.region)
    assert torch.equal(stitch_regions(regions, plan), image)


@given(plans())
def test_extracted_regions_are_the_windows_edge_padded(plan):
    image = torch.randn(1, 2, plan.height, plan.width)
    regions = extract_regions(image, plan)
    for i in range(plan.num_regions):
        w = plan.window(i)
        rows = torch.arange(w.top, w.bottom).clamp(0, plan.height - 1)
        cols = torch.arange(w.left, w.right).clamp(0, plan.width - 1)
        assert torch.equal(regions[0, i], image[0][:, rows[:, None], cols[None, :]])


def test_padding_repeats_the_nearest_pixel_by_hand():
    image = torch.tensor([[1.0, 2, 3], [4, 5, 6]])[None, None]  # (1, 1, 2, 3)
    plan = RegionPlan(2, 3, region=4, margin=1)  # core 2: windows at (-1, -1) and (-1, 1)
    regions = extract_regions(image, plan)[0, :, 0]
    left = [[1, 1, 2, 3], [1, 1, 2, 3], [4, 4, 5, 6], [4, 4, 5, 6]]
    right = [[2, 3, 3, 3], [2, 3, 3, 3], [5, 6, 6, 6], [5, 6, 6, 6]]
    assert regions.tolist() == [left, right]
    # a window wholly past a corner repeats the corner pixel; one past the bottom, the row
    assert crop_padded(image, Window(5, 7, 2, 2)).flatten().tolist() == [6] * 4
    assert crop_padded(image, Window(-4, -1, 2, 5))[0, 0].tolist() == [[1, 1, 2, 3, 3]] * 2


def test_edge_padding_passes_gradients_to_the_border_pixels():
    image = torch.zeros(1, 1, 2, 3, requires_grad=True)
    extract_regions(image, RegionPlan(2, 3, region=4, margin=1)).sum().backward()
    # each pixel counted once per window position that repeats it
    assert image.grad[0, 0].tolist() == [[4, 4, 8], [4, 4, 8]]


@given(plans(), st.integers(1, 7))
def test_chunks_are_contiguous_and_cover_all_regions(plan, size):
    chunks = list(plan.chunks(size))
    assert [i for c in chunks for i in c] == list(range(plan.num_regions))
    assert all(len(c) == size for c in chunks[:-1]) and 1 <= len(chunks[-1]) <= size


@st.composite
def layouts(draw):
    stride = draw(st.integers(1, 4))
    core_tokens = draw(st.integers(1, 4))
    margin_tokens = draw(st.integers(0, 2))
    region = stride * (core_tokens + 2 * margin_tokens)
    plan = RegionPlan(
        draw(st.integers(1, 60)), draw(st.integers(1, 60)), region, margin_tokens * stride
    )
    return TokenLayout(plan, stride)


@given(layouts(), st.integers(1, 5))
def test_token_chunks_are_contiguous_slices(layout, size):
    pos = layout.positions()
    assert pos.shape == (layout.num_tokens, 2)
    for chunk in layout.plan.chunks(size):
        assert torch.equal(pos[layout.token_slice(chunk)], layout.positions(chunk))
    # every grid cell appears exactly once
    rows, cols = layout.grid
    flat = pos[:, 0] * cols + pos[:, 1]
    assert torch.equal(flat.sort().values, torch.arange(rows * cols))


@given(layouts())
def test_token_layout_matches_stitched_feature_maps(layout):
    """Tokens from cropped region maps, reordered to raster, equal the stitched map."""
    plan, stride = layout.plan, layout.stride
    side = plan.region // stride
    maps = torch.randn(1, plan.num_regions, 3, side, side)
    stitched = stitch_regions(maps, plan)  # (1, 3, ceil(H/s), ceil(W/s))
    tokens = layout.crop(maps[0]).flatten(2).transpose(1, 2).reshape(-1, 3)  # region-major
    raster = tokens[layout.raster_order()]
    rows, cols = layout.grid
    grid = raster.reshape(rows, cols, 3)
    h, w = stitched.shape[-2:]
    assert torch.equal(grid[:h, :w].permute(2, 0, 1), stitched[0])
    valid = layout.valid()[layout.raster_order()].reshape(rows, cols)
    assert valid[:h, :w].all() and not valid[h:].any() and not valid[:, w:].any()


def test_release_order_differs_from_region_major_on_multi_region_grids():
    layout = TokenLayout(RegionPlan(64, 64, 32), 8)  # 2 x 2 regions of 4 x 4 tokens
    order = layout.raster_order()
    assert not torch.equal(order, torch.arange(layout.num_tokens))
    assert order[:4].tolist() == [0, 1, 2, 3] and order[4].item() == 16


def test_pooled_layout_counts_tokens_like_the_issue_says():
    plan = RegionPlan(100_000, 100_000, 256)
    assert TokenLayout(plan, 32).num_tokens == 391**2 * 64  # ~9.8 million
    assert TokenLayout.pooled(plan, 1).num_tokens == 391**2  # ~153 thousand


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height": 0, "width": 5, "region": 4}, "image height"),
        ({"height": 5, "width": -1, "region": 4}, "image width"),
        ({"height": 5, "width": 5, "region": 0}, "region size"),
        ({"height": 5, "width": 5, "region": 8, "margin": 4}, "leaves no core"),
        ({"height": 5, "width": 5, "region": 8, "margin": -1}, "non-negative"),
        ({"height": 5, "width": 5, "region": 8, "subregion": 3}, "does not tile"),
    ],
)
def test_bad_plans_name_the_value_and_the_rule(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RegionPlan(**kwargs)


def test_token_stride_must_divide_region_and_margin():
    with pytest.raises(ConfigError, match="multiples of the token stride"):
        TokenLayout(RegionPlan(64, 64, 32, margin=4), 8)
    with pytest.raises(ConfigError, match="cannot be pooled"):
        TokenLayout.pooled(RegionPlan(64, 64, 30), 4)


@pytest.mark.parametrize("size", [(1000, 1500), (64, 64), (1, 300), (257, 513)])
def test_num_valid_counts_valid_tokens(size):
    layout = TokenLayout(RegionPlan(*size, 128, 32), 32)
    assert layout.num_valid == int(layout.valid().sum())
