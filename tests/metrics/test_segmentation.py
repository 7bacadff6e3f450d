import numpy as np
import pytest
import torch

from xtimage.errors import InputError
from xtimage.metrics import SegmentationMeter


def _pooled_loops(preds, targets, num_classes, ignore):
    """Per-class pooled IoU and Dice by plain loops over every pixel of every image."""
    inter, pred, true = [0] * num_classes, [0] * num_classes, [0] * num_classes
    for p_img, t_img in zip(preds, targets, strict=True):
        for p, t in zip(p_img.ravel().tolist(), t_img.ravel().tolist(), strict=True):
            if t == ignore:
                continue
            pred[p] += 1
            true[t] += 1
            inter[p] += p == t
    iou = [
        i / (a + b - i) if a + b else float("nan")
        for i, a, b in zip(inter, pred, true, strict=True)
    ]
    dice = [
        2 * i / (a + b) if a + b else float("nan")
        for i, a, b in zip(inter, pred, true, strict=True)
    ]
    return iou, dice


@pytest.mark.parametrize("ignore", [None, 255])
def test_pooled_iou_and_dice_match_loops(ignore):
    rng = np.random.default_rng(0)
    c = 4
    preds = [rng.integers(0, c, (2, 9, 11)) for _ in range(3)]
    targets = [rng.integers(0, c - 1, (2, 9, 11)) for _ in range(3)]  # class 3 only predicted
    if ignore is not None:
        for t in targets:
            t[rng.random(t.shape) < 0.2] = ignore
    meter = SegmentationMeter(c, ignore_index=ignore)
    for p, t in zip(preds, targets, strict=True):
        meter.update(torch.from_numpy(p), torch.from_numpy(t))
    iou, dice = _pooled_loops(preds, targets, c, ignore)
    np.testing.assert_allclose(meter.iou().numpy(), iou)
    np.testing.assert_allclose(meter.dice().numpy(), dice)
    assert meter.mean_iou() == pytest.approx(np.mean(iou))
    assert meter.mean_iou(include_background=False) == pytest.approx(np.mean(iou[1:]))


def test_pooling_differs_from_averaging_per_image():
    # image 1: 1 fg pixel, predicted; image 2: 9 fg pixels, none predicted.
    # pooled fg IoU = 1 / 10, while the mean of per-image IoUs would be (1 + 0) / 2.
    meter = SegmentationMeter(2)
    t1, p1 = torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long)
    t1[0, 0, 0] = p1[0, 0, 0] = 1
    t2 = torch.zeros(1, 4, 4, dtype=torch.long)
    t2[0, :3, :3] = 1
    meter.update(p1, t1)
    meter.update(torch.zeros_like(t2), t2)
    assert meter.iou()[1].item() == pytest.approx(0.1)
    assert meter.foreground_iou() == pytest.approx(0.1)
    assert meter.dice()[1].item() == pytest.approx(2 * 1 / (1 + 10))


def test_logits_and_foreground_iou_merges_classes():
    target = torch.tensor([[[0, 1, 2, 2]]])
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, [0, 2, 1, 0], 0, torch.arange(4)] = 1.0  # predicts 0, 2, 1, 0
    meter = SegmentationMeter(3)
    meter.update(logits, target)
    # fg pixels: target {1, 2, 3}, predicted {1, 2}: both fg at 2 of 3 -> 2 / 3
    assert meter.foreground_iou() == pytest.approx(2 / 3)
    assert meter.iou()[1].item() == 0.0
    assert meter.compute()["foreground_iou"] == pytest.approx(2 / 3)


def test_bad_inputs_raise():
    meter = SegmentationMeter(2)
    with pytest.raises(InputError, match="target class 7"):
        meter.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(InputError, match="does not match"):
        meter.update(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2))
