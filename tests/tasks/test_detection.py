"""The detection task's streamed collector: objects on core borders are found once, and
windows decoded and merged equal the whole model's outputs cut into cores."""


import numpy as np
import pytest
import torch

from heads.test_detection import tiny_xt
from xtimage.encoders.context import IdentityContext
from xtimage.encoders.region import RegionEncoder
from xtimage.engine import Engine
from xtimage.errors import ConfigError
from xtimage.heads import DenseHead, DenseOutput
from xtimage.model import XT
from xtimage.tasks.detection import BoxCollector, detect
from xtimage.tiling import RegionPlan
from xtimage.window import Window


def symmetric_maps(boxes, height, width, num_classes=1):
    """Raw head outputs whose heatmap is a gaussian symmetric about each continuous
    centre, as a well-trained model gives: a centre on a pixel border ties two pixels, on
    a corner four."""
    heat = torch.zeros(num_classes, height, width, dtype=torch.float64)
    size = torch.zeros(2, height, width, dtype=torch.float64)
    offset = torch.zeros(2, height, width, dtype=torch.float64)
    y, x = torch.meshgrid(
        torch.arange(height, dtype=torch.float64) + 0.5,
        torch.arange(width, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    for x1, y1, x2, y2 in boxes:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        g = torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 2.0**2))
        owned = g > heat.amax(0)
        heat[0] = torch.maximum(heat[0], g)
        size[0][owned], size[1][owned] = x2 - x1, y2 - y1
        offset[0][owned], offset[1][owned] = (cx - x)[owned], (cy - y)[owned]
    logits = torch.logit(heat.clamp(1e-6, 1 - 1e-6))
    return torch.cat([logits, size, offset]).float().numpy()  # (K + 4, H, W)


def feed_cores(collector, maps, plan):
    for region in range(plan.num_regions):
        core = plan.core_window(region).intersect(Window(0, 0, plan.height, plan.width))
        collector.write(core, maps[:, core.top : core.bottom, core.left : core.right])


def assert_same_boxes(found, expected):
    assert found.shape == expected.shape
    order = sorted(range(len(found)), key=lambda i: found[i].tolist())
    torch.testing.assert_close(found[order], expected, atol=1e-4, rtol=0)


def test_objects_on_core_borders_and_corners_are_found_once():
    plan = RegionPlan(200, 190, region=96, margin=16)  # cores of 64: borders at 64, 128
    boxes = [
        (54.0, 20.5, 74.0, 36.5),  # centre (64, 28.5): on a vertical border, 2 ties
        (100.5, 118.0, 116.5, 138.0),  # centre (108.5, 128): on a horizontal border
        (118.0, 54.0, 138.0, 74.0),  # centre (128, 64): on a corner, 4 ties in 4 cores
        (52.0, 90.5, 76.6, 106.5),  # centre x = 64.3: peak at col 64, a lesser one at 63
        (20.5, 150.5, 40.5, 170.5),  # inside one core
        (150.5, 20.5, 180.5, 40.5),  # inside the last, partial core column
    ]
    maps = symmetric_maps(boxes, 200, 190)
    raw = BoxCollector(1, threshold=0.3, iou=1.0)  # no suppression: the duplicates
    feed_cores(raw, maps, plan)
    assert len(raw.finish()) == 2 + 2 + 4 + 2 + 1 + 1
    collector = BoxCollector(1, threshold=0.3)
    feed_cores(collector, maps, plan)
    expected = torch.tensor(sorted(boxes))
    assert_same_boxes(collector.finish().boxes, expected)
    # and the whole image in one window finds the same boxes
    whole = BoxCollector(1, threshold=0.3)
    whole.write(Window(0, 0, 200, 190), maps)
    assert_same_boxes(whole.finish().boxes, expected)


def test_collector_checks_channels_and_abort_drops_boxes():
    collector = BoxCollector(2)
    with pytest.raises(ConfigError, match="expects 6 channels"):
        collector.write(Window(0, 0, 8, 8), np.zeros((5, 8, 8), np.float32))
    maps = symmetric_maps([(2.0, 2.0, 10.0, 10.0)], 16, 16)
    collector = BoxCollector(1)
    collector.write(Window(0, 0, 16, 16), maps)
    collector.abort()
    assert len(collector.finish()) == 0


def test_streamed_detection_equals_the_whole_model_cut_into_cores():
    model = tiny_xt().eval()
    image = torch.randn(3, 90, 110, dtype=torch.float64)
    with torch.no_grad():
        whole = model(image[None])[0]  # (K + 4, H, W)
    assert whole.shape == (6, 90, 110)
    plan = model.plan(90, 110)
    expected = BoxCollector(2, threshold=0.05)
    feed_cores(expected, whole.numpy(), plan)
    expected = expected.finish()
    found = detect(Engine(model, region_batch=3), image, threshold=0.05)
    assert len(found) == len(expected) > 0
    torch.testing.assert_close(found.boxes, expected.boxes, atol=1e-4, rtol=0)
    assert torch.equal(found.labels, expected.labels)


def test_detect_needs_a_box_head():
    encoder = RegionEncoder("convnext_atto", region=64, depths=(1, 1, 1, 1), dims=(8, 8, 16, 16))
    head = DenseHead(encoder.feature_info[:-1], 16, [DenseOutput("mask", 2, "ce")], channels=8)
    model = XT(encoder, IdentityContext(16), head, region=64)
    with pytest.raises(ConfigError, match="BoxHead"):
        detect(Engine(model), torch.zeros(3, 64, 64))
