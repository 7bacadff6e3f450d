"""xView3-SAR head: centre heatmap, vessel and fishing maps and a length map, and their
training targets.

xT (Gupta et al., "xT: Nested Tokenization for Larger Context in Large Images", ICML
2024) runs a dense decoder over the whole scene and reports the xView3-SAR score (Paolo
et al., NeurIPS 2022 Datasets and Benchmarks). The four maps follow the challenge's
winning recipe (a CenterNet-style point heatmap plus per-pixel attributes):

- ``center``: 1 channel, focal loss; a gaussian of ``sigma = radius / 3`` that is exactly
  1 at the pixel holding each detection, cut at ``radius`` (overlaps keep the maximum).
- ``vessel``, ``fishing``: 1 channel each, BCE; the label painted in a disk of ``radius``
  around each centre (a pixel in several disks belongs to the nearest centre). Unknown
  labels (NaN, as in the public CSVs) are ignored through a weight map that is 0 there
  (``vessel_weight``, ``fishing_weight``), as is everything outside the disks: these
  maps are only read at peaks.
- ``length``: 1 channel, L1 on metres / `LENGTH_SCALE`, in the same disks, weight 0 where
  the length is unknown (``length_weight``).

Coordinates: a detection at scene pixel (row, col) (``detect_scene_row``, integers in the
labels) draws its peak at that pixel; a peak found at pixel (i, j) is reported as row i,
column j.

Decoding the maps into the challenge's rows, streamed scene by scene, and choosing the
thresholds are the xView3 task's (`xtimage.tasks.xview3`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xtimage.encoders.region import FeatureInfo
from xtimage.errors import ConfigError, InputError
from xtimage.heads.segmentation import DenseHead, DenseOutput, focal_loss

LENGTH_SCALE = 100.0  # metres per unit of the length output (lengths reach ~500 m)
PRIOR = 0.01  # initial centre probability (CenterNet's bias init); few pixels are centres

XVIEW3_OUTPUTS = (
    DenseOutput("center", 1, "focal"),
    DenseOutput("vessel", 1, "bce"),
    DenseOutput("fishing", 1, "bce"),
    DenseOutput("length", 1, "l1"),
)


def xview3_targets(
    rows: np.ndarray,
    cols: np.ndarray,
    is_vessel: np.ndarray,
    is_fishing: np.ndarray,
    length_m: np.ndarray,
    height: int,
    width: int,
    radius: int = 4,
) -> dict[str, torch.Tensor]:
    """Training targets of `XView3Head` for one image (see the module docstring).

    Args:
        rows: (n,) detection rows in pixels (a float row lies in pixel ``floor(row)``).
        cols: (n,) detection columns.
        is_vessel: (n,) 1, 0 or NaN (unknown).
        is_fishing: (n,) 1, 0 or NaN.
        length_m: (n,) metres or NaN.
        height: image height H.
        width: image width W.
        radius: disk radius in pixels.

    Returns:
        ``center``, ``vessel``, ``fishing``, ``length`` (1, H, W) and ``vessel_weight``,
        ``fishing_weight``, ``length_weight`` (H, W), float32. Detections outside the
        image draw nothing.
    """
    if radius <= 0:
        raise ConfigError(f"the xView3 target radius must be positive, got {radius}")
    rows = np.floor(np.asarray(rows, np.float64).reshape(-1)).astype(np.int64)
    cols = np.floor(np.asarray(cols, np.float64).reshape(-1)).astype(np.int64)
    attrs = [np.asarray(a, np.float64).reshape(-1) for a in (is_vessel, is_fishing, length_m)]
    if any(len(a) != len(rows) for a in (cols, *attrs)):
        raise InputError(
            f"xview3_targets: rows, cols, is_vessel, is_fishing and length_m differ in length "
            f"({[len(a) for a in (rows, cols, *attrs)]})"
        )
    attrs[2] = attrs[2] / LENGTH_SCALE
    center = np.zeros((height, width), np.float64)
    values = np.zeros((3, height, width), np.float64)  # vessel, fishing, length
    known = np.zeros((3, height, width), np.float64)
    nearest = np.full((height, width), np.inf)  # distance to the owning centre
    sigma = radius / 3
    for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        if not (0 <= r < height and 0 <= c < width):
            continue
        r0, r1, c0, c1 = (
            max(r - radius, 0),
            min(r + radius + 1, height),
            max(c - radius, 0),
            min(c + radius + 1, width),
        )
        yy, xx = np.mgrid[r0:r1, c0:c1]
        d2 = (yy - r) ** 2 + (xx - c) ** 2  # (h', w')
        disk = d2 <= radius**2
        g = np.where(disk, np.exp(-d2 / (2 * sigma**2)), 0.0)  # 1 at the centre pixel
        center[r0:r1, c0:c1] = np.maximum(center[r0:r1, c0:c1], g)
        own = disk & (np.sqrt(d2) < nearest[r0:r1, c0:c1])
        nearest[r0:r1, c0:c1][own] = np.sqrt(d2)[own]
        for k, a in enumerate(attrs):
            good = np.isfinite(a[i])
            values[k, r0:r1, c0:c1][own] = a[i] if good else 0.0
            known[k, r0:r1, c0:c1][own] = float(good)
    t = {"center": center[None]}
    for k, name in enumerate(("vessel", "fishing", "length")):
        t[name] = values[k][None]
        t[f"{name}_weight"] = known[k]
    return {k: torch.from_numpy(v).float() for k, v in t.items()}


class XView3Head(DenseHead):
    """A `DenseHead` with the xView3 outputs ``center``, ``vessel``, ``fishing``, ``length``.

    The centre heatmap is trained with `focal_loss` on every valid pixel; vessel and
    fishing with BCE and length with L1, each pixel weighted by its target weight map
    (1 inside a disk with a known label, else 0). Sums over pixels, as `DenseHead`'s.

    Args:
        skips: channels and strides of the skip maps, shallow to deep.
        dim: token width.
        channels: decoder width.
        norm: decoder normalisation (see `DenseHead`).
    """

    def __init__(
        self, skips: Sequence[FeatureInfo], dim: int, *, channels: int = 32, norm: str = "layer"
    ) -> None:
        super().__init__(skips, dim, XVIEW3_OUTPUTS, channels, norm)
        with torch.no_grad():
            self.out.bias[0] = math.log(PRIOR / (1 - PRIOR))

    def loss_sum(
        self, out: torch.Tensor, targets: dict[str, torch.Tensor], valid: torch.Tensor
    ) -> torch.Tensor:
        """Focal + weighted BCE and L1 losses summed over the valid pixels.

        Args:
            out: (k, 4, H, W) raw outputs.
            targets: `xview3_targets` cropped to the chunk: maps (k, 1, H, W), weights
                (k, H, W).
            valid: (k, H, W) bool.
        """
        parts = self.split(out)
        v = valid.to(out.dtype)
        total = (focal_loss(parts["center"], targets["center"])[:, 0] * v).sum()
        for spec in self.outputs[1:]:
            pred, target = parts[spec.name][:, 0], targets[spec.name][:, 0]  # (k, H, W)
            if spec.loss == "bce":
                per_pixel = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
            else:
                per_pixel = (pred - target).abs()
            total = total + spec.weight * (per_pixel * targets[f"{spec.name}_weight"] * v).sum()
        return total
