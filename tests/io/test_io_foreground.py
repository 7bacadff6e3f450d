import numpy as np
import pytest
from io_fixtures import smooth_image, write_svs

from xtimage.io import (
    ArrayReader,
    foreground,
    open_reader,
    region_has_foreground,
    tissue_mask,
    valid_mask,
)
from xtimage.io.foreground import otsu_threshold, reduce_level
from xtimage.tiling import RegionPlan


def brute_force_otsu_split(values: np.ndarray) -> np.ndarray:
    """The split ``values > t`` over every distinct value t maximising between-class variance."""
    best, best_t = -1.0, None
    for t in np.unique(values)[:-1]:
        low, high = values[values <= t], values[values > t]
        between = low.size * high.size * (low.mean() - high.mean()) ** 2
        if between > best:
            best, best_t = between, t
    return values > best_t


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_otsu_matches_a_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(60, 15, 300), rng.normal(170, 25, 200)])
    values = np.clip(np.rint(values), 0, 255)
    values[:2] = [0, 255]  # histogram range 0..255: one bin per integer
    assert np.array_equal(values > otsu_threshold(values), brute_force_otsu_split(values))


def synthetic_slide(height=400, width=600):
    """White glass with a pink 'tissue' ellipse and a black unscanned corner."""
    yy, xx = np.mgrid[0:height, 0:width]
    tissue = ((yy - 200) / 120) ** 2 + ((xx - 330) / 180) ** 2 < 1
    rgb = np.full((3, height, width), 235, np.uint8)
    rgb[:, tissue] = np.array([200, 120, 170], np.uint8)[:, None]
    rgb[:, :60, :80] = 0
    noise = np.random.default_rng(0).integers(-6, 7, rgb.shape)
    return np.clip(rgb.astype(int) + noise, 0, 255).astype(np.uint8), tissue


def test_tissue_mask_finds_the_stained_area_and_not_glass_or_black(tmp_path):
    rgb, tissue = synthetic_slide()
    mask, downsample = tissue_mask(ArrayReader(rgb), max_side=60)
    assert downsample == 10 and mask.shape == (40, 60)
    cell_tissue = tissue.reshape(40, 10, 60, 10).mean(axis=(1, 3))
    assert mask[cell_tissue == 1].all()  # every fully-tissue cell
    assert not mask[cell_tissue == 0].any()  # no glass-only or black cell


def test_tissue_mask_uses_a_coarse_pyramid_level(tmp_path):
    rgb, tissue = synthetic_slide(512, 640)
    slide = open_reader(write_svs(tmp_path / "t.svs", rgb))
    mask, downsample = tissue_mask(slide, max_side=100)
    assert downsample == 8.0  # level 1 (4x) reduced by 2 -> 80 x 64 cells
    assert mask.shape == (64, 80)
    cell_tissue = tissue.reshape(64, 8, 80, 8).mean(axis=(1, 3))
    assert mask[cell_tissue == 1].all() and not mask[cell_tissue == 0].any()


def test_reduce_level_in_strips_equals_one_block_mean(monkeypatch):
    image = smooth_image(101, 77, 2, "float32")
    reader = ArrayReader(image)
    monkeypatch.setattr(foreground, "_STRIP_PIXELS", 77 * 4 * 4 * 2)  # 2 cell rows a strip
    got = reduce_level(reader, 0, 4)
    padded = np.full((2, 104, 80), np.nan)
    padded[:, :101, :77] = image
    expected = np.nanmean(padded.reshape(2, 26, 4, 20, 4), axis=(2, 4))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_valid_mask_of_a_geotiff_with_nodata(geotiff, sar):
    mask, downsample = valid_mask(open_reader(geotiff), max_side=100)
    assert downsample == 4.0 and mask.shape == (75, 100)
    # the overview is nearest-sampled: cell (i, j) holds level-0 pixel (4i, 4j)
    assert np.array_equal(mask, (sar[:, ::4, ::4] != -32768).any(axis=0))
    assert mask.any() and not mask.all()


def test_region_has_foreground_equals_a_full_resolution_check():
    rng = np.random.default_rng(3)
    full = np.zeros((203, 310), bool)
    for _ in range(4):
        top, left = rng.integers(0, 190), rng.integers(0, 300)
        full[top : top + 9, left : left + 11] = True
    downsample = 8
    mask = np.pad(full, ((0, -203 % 8), (0, -310 % 8))).reshape(26, 8, 39, 8).any(axis=(1, 3))
    plan = RegionPlan(203, 310, region=64, margin=8)
    keep = region_has_foreground(plan, mask, downsample)
    for index in range(plan.num_regions):
        core = plan.core_window(index)
        rows, cols = core.slices()
        # the mask is coarser, so a kept region may only be near foreground; never miss one
        if full[rows, cols].any():
            assert keep[index]
        grown = full[max(0, core.top - 8) : core.bottom + 8, max(0, core.left - 8) : core.right + 8]
        if keep[index]:
            assert grown.any()
    assert 0 < sum(keep) < plan.num_regions


def _foreground_per_region(plan, mask, downsample, min_fraction):
    """The reference: one region at a time, its core mapped onto the mask (outward)."""
    from xtimage.window import Window

    keep = []
    for index in range(plan.num_regions):
        core = plan.core_window(index).intersect(Window(0, 0, plan.height, plan.width))
        cells = mask[core.scale(downsample).slices()]
        keep.append(bool(cells.size) and float(cells.mean()) > min_fraction)
    return keep


@pytest.mark.parametrize("downsample", [1, 3, 4.5, 8, 40])
@pytest.mark.parametrize("min_fraction", [0.0, 0.3])
def test_region_has_foreground_equals_the_per_region_reference(downsample, min_fraction):
    rng = np.random.default_rng(int(downsample * 10))
    plan = RegionPlan(203, 310, region=64, margin=8)
    mask = rng.random((int(np.ceil(203 / downsample)), int(np.ceil(310 / downsample)))) > 0.8
    keep = region_has_foreground(plan, mask, downsample, min_fraction)
    assert keep == _foreground_per_region(plan, mask, downsample, min_fraction)
