"""xView3 head: targets, loss against a plain reference, peaks across core borders, a
perfect prediction of the fixture scoring 1.0 officially, threshold choice."""

import math

import numpy as np
import pytest
import torch

from xtimage.encoders.region import FeatureInfo
from xtimage.errors import ConfigError, InputError
from xtimage.heads.xview3 import LENGTH_SCALE, XView3Head, xview3_targets

NAN = float("nan")


def perfect_outputs(targets: dict[str, torch.Tensor]) -> np.ndarray:
    """Raw outputs (4, H, W) whose decoding is the targets: logits of the centre map,
    +-20 logits of the labels, the length map as it is."""
    center = targets["center"][0].double().clamp(1e-6, 1 - 1e-6)
    logit = torch.log(center / (1 - center))
    flags = [20 * (2 * targets[k][0] - 1) for k in ("vessel", "fishing")]
    return torch.stack([logit.float(), *flags, targets["length"][0]]).numpy()




def test_targets_peak_disk_and_unknown_labels():
    t = xview3_targets(
        rows=[10.7, 30],
        cols=[12, 30],
        is_vessel=[1, NAN],
        is_fishing=[0, NAN],
        length_m=[50.0, NAN],
        height=40,
        width=48,
        radius=4,
    )
    assert t["center"].shape == (1, 40, 48) and t["vessel_weight"].shape == (40, 48)
    assert t["center"][0, 10, 12] == 1 and t["center"][0, 30, 30] == 1
    sigma = 4 / 3
    assert t["center"][0, 10, 14].item() == pytest.approx(math.exp(-4 / (2 * sigma**2)), 1e-6)
    assert t["center"][0, 10, 17] == 0  # outside the disk
    assert (t["center"] == 1).sum() == 2
    # the first detection: known flags and length in its disk, 13 x ... pixels of radius 4
    disk = t["vessel_weight"][6:15, 8:17]
    assert disk.sum() == sum(1 for y in range(-4, 5) for x in range(-4, 5) if x * x + y * y <= 16)
    assert t["vessel"][0, 10, 12] == 1 and t["fishing"][0, 10, 12] == 0
    assert t["fishing_weight"][10, 12] == 1
    assert t["length"][0, 10, 12] == pytest.approx(50 / LENGTH_SCALE)
    # the second: every label unknown, so nothing but the centre is trained there
    for name in ("vessel", "fishing", "length"):
        assert t[f"{name}_weight"][26:35, 26:35].sum() == 0
    with pytest.raises(InputError):
        xview3_targets([1], [1, 2], [1], [1], [1], 8, 8)
    with pytest.raises(ConfigError):
        xview3_targets([1], [1], [1], [1], [1], 8, 8, radius=0)


def test_disk_pixels_belong_to_the_nearest_centre():
    t = xview3_targets([5, 5], [5, 9], [1, 0], [NAN, NAN], [NAN, NAN], 12, 16, radius=4)
    assert t["vessel"][0, 5, 6] == 1 and t["vessel"][0, 5, 8] == 0  # columns 6 | 8
    assert t["vessel_weight"][5, 4:11].tolist() == [1.0] * 7


def reference_loss(out, targets, valid):
    """The head's loss written pixel by pixel in float64 from probabilities."""
    total = 0.0
    k, _, h, w = out.shape
    for b in range(k):
        for i in range(h):
            for j in range(w):
                if not valid[b, i, j]:
                    continue
                x, y = out[b, 0, i, j].item(), targets["center"][b, 0, i, j].item()
                p = 1 / (1 + math.exp(-x))
                total += (
                    -((1 - p) ** 2) * math.log(p)
                    if y >= 1
                    else -((1 - y) ** 4) * p**2 * math.log(1 - p)
                )
                for c, name in ((1, "vessel"), (2, "fishing")):
                    q = 1 / (1 + math.exp(-out[b, c, i, j].item()))
                    t = targets[name][b, 0, i, j].item()
                    bce = -(t * math.log(q) + (1 - t) * math.log(1 - q))
                    total += bce * targets[f"{name}_weight"][b, i, j].item()
                err = abs(out[b, 3, i, j].item() - targets["length"][b, 0, i, j].item())
                total += err * targets["length_weight"][b, i, j].item()
    return total


def test_loss_equals_a_pixel_by_pixel_reference():
    torch.manual_seed(0)
    head = XView3Head([FeatureInfo(8, 4)], dim=16, channels=8)
    parts = [
        xview3_targets([3, 9], [4, 2], [1, 0], [1, NAN], [120, NAN], 12, 12, radius=3),
        xview3_targets([6], [6], [NAN], [NAN], [30], 12, 12, radius=3),
    ]
    targets = {k: torch.stack([p[k] for p in parts]).double() for k in parts[0]}
    out = torch.randn(2, 4, 12, 12, dtype=torch.float64, requires_grad=True)
    valid = torch.rand(2, 12, 12) > 0.2
    loss = head.loss_sum(out, targets, valid)
    assert loss.item() == pytest.approx(reference_loss(out.detach(), targets, valid), rel=1e-9)
    loss.backward()
    unknown = (targets["vessel_weight"] == 0) | ~valid
    assert (out.grad[:, 1][unknown] == 0).all()  # unknown labels are ignored
    assert (out.grad[:, 1][~unknown] != 0).all()
    assert head.out.bias[0].item() == pytest.approx(math.log(0.01 / 0.99))
