"""RegionSource reads the regions `extract_regions` cuts, from tensors, arrays and files."""

import numpy as np
import pytest
import tifffile
import torch

from xtimage.engine.source import RegionSource
from xtimage.io import ArrayReader, Normalize, open_reader
from xtimage.tiling import RegionPlan, extract_regions
from xtimage.window import Window

# margin and padding at both ends; the last with windows wider than the whole image
PLANS = [
    RegionPlan(70, 90, region=32, margin=4),
    RegionPlan(45, 20, region=16, margin=0),
    RegionPlan(5, 7, region=32, margin=8),
]


def image(plan: RegionPlan) -> np.ndarray:
    rng = np.random.default_rng(plan.height)
    return rng.integers(0, 256, (3, plan.height, plan.width), dtype=np.uint8)


def all_regions(source: RegionSource, plan: RegionPlan, read_ahead: bool) -> torch.Tensor:
    chunks = list(plan.chunks(3))
    parts = [x for _, x in source.chunks(plan, chunks, read_ahead=read_ahead)]
    return torch.cat(parts)


@pytest.mark.parametrize("plan", PLANS, ids=str)
@pytest.mark.parametrize("kind", ["tensor", "array", "npy", "tiff"])
@pytest.mark.parametrize("read_ahead", [True, False])
def test_sources_read_the_regions_extract_regions_cuts(plan, kind, read_ahead, tmp_path):
    pixels = image(plan)
    expected = extract_regions(torch.from_numpy(pixels)[None].double(), plan)[0]
    if kind == "tensor":
        data = torch.from_numpy(pixels).double()
    elif kind == "array":
        data = pixels
    elif kind == "npy":
        np.save(tmp_path / "image.npy", pixels)
        data = open_reader(tmp_path / "image.npy")
    else:
        tifffile.imwrite(tmp_path / "image.tif", pixels.transpose(1, 2, 0), photometric="rgb")
        data = open_reader(tmp_path / "image.tif")
    source = RegionSource(data, dtype=torch.float64)
    regions = all_regions(source, plan, read_ahead)
    assert torch.equal(regions, expected)
    assert torch.equal(source.regions(plan, range(plan.num_regions)), expected)


@pytest.mark.parametrize("plan", PLANS, ids=str)
def test_a_per_pixel_transform_commutes_with_the_padding(plan):
    pixels = image(plan)
    normalize = Normalize([100.0, 120.0, 90.0], [50.0, 60.0, 70.0])
    expected = extract_regions(torch.from_numpy(normalize(pixels))[None], plan)[0]
    source = RegionSource(ArrayReader(pixels), transform=normalize)
    assert torch.equal(all_regions(source, plan, read_ahead=True), expected)


def test_padding_repeats_the_border_not_zeros():
    pixels = np.arange(1, 7, dtype=np.float32).reshape(1, 2, 3)  # [[1, 2, 3], [4, 5, 6]]
    for data in (torch.from_numpy(pixels), pixels):
        source = RegionSource(data)
        assert source.read(Window(1, 2, 2, 3))[0].tolist() == [[6, 6, 6], [6, 6, 6]]
        assert source.read(Window(-3, -4, 2, 2))[0].tolist() == [[1, 1], [1, 1]]  # wholly out
        assert source.read(Window(-1, 0, 2, 3))[0].tolist() == [[1, 2, 3], [1, 2, 3]]
