"""Box head: focal loss, targets, decoding on hand-built maps, cross-border NMS, streaming."""

import csv
import json
import math

import pytest
import torch

from xtimage.encoders.context import IdentityContext
from xtimage.encoders.region import FeatureInfo, RegionEncoder
from xtimage.engine import Engine
from xtimage.errors import InputError
from xtimage.heads import DenseHead, DenseOutput
from xtimage.heads.detection import (
    ALPHA,
    Boxes,
    BoxHead,
    box_targets,
    decode_boxes,
)
from xtimage.heads.segmentation import focal_loss
from xtimage.io.vector import write_coco_results, write_csv, write_geojson
from xtimage.model import XT


def reference_focal(logits, target, alpha=2.0, beta=4.0):
    """CornerNet's loss written from probabilities, element by element, in float64."""
    out = torch.empty_like(logits)
    for i, (x, y) in enumerate(
        zip(logits.flatten().tolist(), target.flatten().tolist(), strict=True)
    ):
        p = 1 / (1 + math.exp(-x))
        if y == 1:
            out.view(-1)[i] = -((1 - p) ** alpha) * math.log(p)
        else:
            out.view(-1)[i] = -((1 - y) ** beta) * p**alpha * math.log(1 - p)
    return out


def test_focal_loss_equals_cornernet_reference():
    logits = torch.randn(2, 3, 5, 5, dtype=torch.float64) * 3
    target = torch.rand(2, 3, 5, 5, dtype=torch.float64) * 0.9
    target[0, 1, 2, 2] = target[1, 0, 4, 0] = 1.0
    torch.testing.assert_close(focal_loss(logits, target), reference_focal(logits, target))


def test_dense_head_focal_output_sums_focal_loss_on_valid_pixels():
    head = DenseHead([FeatureInfo(4, 4)], 8, [DenseOutput("heat", 2, "focal")]).double()
    out = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    target = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    target[0, 0, 3, 3] = 1.0
    valid = torch.rand(2, 8, 8) > 0.3
    expected = (reference_focal(out, target).sum(1) * valid).sum()
    torch.testing.assert_close(head.loss_sum(out, {"heat": target}, valid), expected)


# ------------------------------------------------------------------------- targets


def test_box_targets_by_hand():
    # box 20 x 16 with centre (20, 28): the peak is pixel row 28, col 20
    t = box_targets(torch.tensor([[10.0, 20.0, 30.0, 36.0]]), torch.tensor([1]), 2, 64, 48)
    heat, size, offset = t["heatmap"], t["size"], t["offset"]
    assert heat.shape == (2, 64, 48) and heat[0].max() == 0
    assert heat[1, 28, 20] == 1 and (heat[1] < 1).sum() == heat[1].numel() - 1
    sx, sy = ALPHA * 20 / 6, ALPHA * 16 / 6
    assert heat[1, 28, 21].item() == pytest.approx(math.exp(-1 / (2 * sx**2)), rel=1e-6)
    assert heat[1, 30, 20].item() == pytest.approx(math.exp(-4 / (2 * sy**2)), rel=1e-6)
    # the footprint is cut at ceil(3 sigma) pixels from the peak
    rx, ry = math.ceil(3 * sx), math.ceil(3 * sy)
    assert heat[1, 28, 20 + rx] > 0 and heat[1, 28, 20 + rx + 1] == 0
    assert heat[1, 28 + ry, 20] > 0 and heat[1, 28 + ry + 1, 20] == 0
    assert size[:, 28, 20].tolist() == [20, 16] and size[:, 28, 22].tolist() == [20, 16]
    assert offset[:, 28, 20].tolist() == [-0.5, -0.5]  # centre (20, 28) - pixel centre
    assert offset[:, 27, 22].tolist() == [20 - 22.5, 28 - 27.5]
    assert size[:, 0, 0].tolist() == [0, 0]  # outside every footprint
    # regression weight: the gaussian over its sum
    torch.testing.assert_close(t["weight"], heat[1] / heat[1].sum())


def test_box_targets_overlap_keeps_the_max_and_the_owner():
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [14.0, 14.0, 26.0, 26.0], [50, 50, 70, 70]])
    t = box_targets(boxes, torch.tensor([0, 0, 1]), 2, 64, 64)
    # same centre (20, 20): the smaller box owns the shared peak
    assert t["heatmap"][0, 20, 20] == 1 and t["size"][:, 20, 20].tolist() == [12, 12]
    # each box's regression weights sum to 1 over the pixels it owns
    big = t["size"][0] == 40
    small = t["size"][0] == 12
    assert big.any() and small.any()
    for owned in (big, small, t["size"][0] == 20):
        assert t["weight"][owned].sum().item() == pytest.approx(1.0, abs=1e-5)
    # a box whose centre (60, 60) lies outside a 56 x 56 crop draws nothing
    cropped = box_targets(boxes[2:], torch.tensor([1]), 2, 56, 56)
    assert cropped["heatmap"].max() == 0


def test_box_targets_reject_bad_boxes():
    with pytest.raises(InputError, match="empty"):
        box_targets(torch.tensor([[5.0, 5.0, 5.0, 9.0]]), torch.tensor([0]), 1, 16, 16)
    with pytest.raises(InputError, match="label 3"):
        box_targets(torch.tensor([[1.0, 1.0, 5.0, 9.0]]), torch.tensor([3]), 2, 16, 16)


# ------------------------------------------------------------------------- decoding


def test_decode_hand_built_heatmap():
    heat = torch.zeros(2, 10, 12)
    heat[0, 3, 4] = 0.9
    heat[0, 3, 5] = 0.8  # next to a higher pixel: not a peak
    heat[1, 7, 9] = 0.6
    heat[1, 1, 1] = 0.05  # below the threshold
    size = torch.zeros(2, 10, 12)
    size[:, 3, 4] = torch.tensor([4.0, 2.0])
    size[:, 7, 9] = torch.tensor([2.0, 6.0])
    offset = torch.zeros(2, 10, 12)
    offset[:, 3, 4] = torch.tensor([0.25, -0.5])
    found = decode_boxes(heat, size, offset, threshold=0.1, k=10)
    # centre (4 + 0.5 + 0.25, 3 + 0.5 - 0.5) = (4.75, 3.0); (9.5, 7.5)
    expected = torch.tensor([[2.75, 2.0, 6.75, 4.0], [8.5, 4.5, 10.5, 10.5]])
    torch.testing.assert_close(found.boxes, expected)
    assert found.labels.tolist() == [0, 1]
    assert found.scores.tolist() == pytest.approx([0.9, 0.6])
    top1 = decode_boxes(heat, size, offset, threshold=0.1, k=1)
    assert len(top1) == 1 and top1.scores.item() == pytest.approx(0.9)
    assert len(decode_boxes(heat, size, offset, threshold=0.95)) == 0


def test_targets_decode_back_to_their_boxes():
    boxes = torch.tensor([[3.0, 4.0, 17.0, 12.0], [30.5, 6.0, 45.0, 29.0], [8.0, 40.0, 28.0, 61.5]])
    labels = torch.tensor([0, 2, 1])
    t = box_targets(boxes, labels, 3, 64, 64)
    found = decode_boxes(t["heatmap"], t["size"], t["offset"], threshold=0.5)
    order = torch.argsort(found.labels)
    torch.testing.assert_close(found.boxes[order], boxes[torch.argsort(labels)])
    assert found.scores.tolist() == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------------- borders












def test_boxes_as_detections():
    boxes = Boxes(torch.tensor([[1.0, 2.0, 5.0, 10.0]]), torch.tensor([0.5]), torch.tensor([1]))
    (d,) = boxes.detections(["a", "b"])
    assert (d.box, d.row, d.col, d.score, d.label) == ((2.0, 1.0, 10.0, 5.0), 6.0, 3.0, 0.5, "b")


# ------------------------------------------------------------------------- with the model






def tiny_xt(num_classes=2):
    encoder = RegionEncoder(
        "convnext_atto", region=64, depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), out_indices=(0, 1, 2)
    )  # stride 16
    head = BoxHead(encoder.feature_info[:-1], 16, num_classes, channels=8)
    return XT(encoder, IdentityContext(16), head, region=64, margin=16).double()


def test_box_loss_by_hand_and_exact_gradients_equal_all_at_once():
    model = tiny_xt()
    image = torch.randn(3, 90, 110, dtype=torch.float64)
    boxes = torch.tensor([[10.0, 12.0, 40.0, 30.0], [60.0, 50.0, 100.0, 88.0]])
    targets = box_targets(boxes, torch.tensor([0, 1]), 2, 90, 110)
    targets = {k: v.double() for k, v in targets.items()}
    out = model(image[None])  # (1, 6, H, W)
    heat, size, offset = out[:, :2], out[:, 2:4], out[:, 4:]
    weight = targets["weight"]
    ref = (
        reference_focal(heat[0].detach(), targets["heatmap"]).sum()
        + 0.1 * ((size[0] - targets["size"]).abs().sum(0) * weight).sum()
        + ((offset[0] - targets["offset"]).abs().sum(0) * weight).sum()
    )
    valid = torch.ones(1, 90, 110, dtype=torch.bool)
    loss = model.head.loss_sum(out, {k: v[None] for k, v in targets.items()}, valid)
    torch.testing.assert_close(loss.detach(), ref)

    model.zero_grad()
    (loss / (90 * 110)).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    step = Engine(model, region_batch=4).exact_step([image], [targets])
    assert step == pytest.approx(loss.item() / (90 * 110), rel=1e-9)
    for name, grad in expected.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-7, atol=1e-10)


def test_heatmap_starts_at_the_prior():
    model = tiny_xt().eval()
    out = model(torch.zeros(1, 3, 64, 64, dtype=torch.float64))
    assert out[0, :2].sigmoid().mean().item() == pytest.approx(0.1, abs=0.05)




def test_boxes_written_as_csv_geojson_and_coco_read_back(tmp_path):
    boxes = Boxes(
        torch.tensor([[10.5, 20.0, 30.0, 44.25], [100.0, 5.0, 140.0, 15.0]]),
        torch.tensor([0.9, 0.4]),
        torch.tensor([1, 0]),
    )
    names = ["car", "boat"]
    with open(write_csv(tmp_path / "b.csv", boxes.detections(names))) as f:
        rows = list(csv.DictReader(f))
    got = [[float(r[k]) for k in ("left", "top", "right", "bottom")] for r in rows]
    assert got == boxes.boxes.tolist() and [r["label"] for r in rows] == ["boat", "car"]
    features = json.loads(
        write_geojson(tmp_path / "b.geojson", boxes.detections(names)).read_text()
    )
    ring = features["features"][0]["geometry"]["coordinates"][0]  # pixel flavour: x, y
    assert min(p[0] for p in ring) == 10.5 and max(p[1] for p in ring) == 44.25
    results = json.loads(write_coco_results(tmp_path / "r.json", boxes.detections(), 7).read_text())
    assert [r["bbox"] for r in results] == [[10.5, 20.0, 19.5, 24.25], [100.0, 5.0, 40.0, 10.0]]
