"""Box detection on large scenes: a CenterNet-style head, its targets and its decoding.

Objects as points (Zhou et al., "Objects as Points", 2019): one heatmap per class peaks
at box centres; at each peak the head also reads the box's size and the offset from the
pixel to the exact centre. xT (Gupta et al., "xT: Nested Tokenization for Larger Context
in Large Images", ICML 2024) runs such heads on the dense features of the whole image;
with region margins, a region sees an object that its border cuts.

The dense decoder predicts at full resolution, so two choices follow TTFNet (Liu et al.,
"Training-Time-Friendly Network for Real-Time Object Detection", AAAI 2020): gaussians
are elliptical, ``sigma = alpha * (w, h) / 6``, and size and offset are trained at every
pixel of the gaussian footprint, weighted by the gaussian normalised to sum 1 over each
object (so that every object's regression counts once, as CenterNet's single centre
pixel does), not at the centre pixel alone: the peak found at test time may be a pixel
off and must still read a trained size. The offset of a pixel is the vector from its
centre to the box centre.

Coordinates are continuous pixels: (0, 0) is the image's top-left corner, pixel (i, j)
covers ``[j, j + 1) x [i, i + 1)``; boxes are ``(x1, y1, x2, y2)``.

Decoding core windows and merging their boxes over a whole image, streamed, is the
detection task's (`xtimage.tasks.detection.BoxCollector`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xtimage.encoders.region import FeatureInfo
from xtimage.errors import ConfigError, InputError
from xtimage.heads.segmentation import DenseHead, DenseOutput, focal_loss
from xtimage.io.vector import Detection

ALPHA = 0.54  # TTFNet's gaussian size factor
MIN_SIGMA = 0.5  # pixels; keeps tiny boxes' gaussians a few pixels wide
PRIOR = 0.1  # initial heatmap probability (CenterNet's bias init, -2.19)


@dataclass
class Boxes:
    """Detected boxes of one image.

    Attributes:
        boxes: (n, 4) float ``(x1, y1, x2, y2)`` in pixels.
        scores: (n,) float in [0, 1].
        labels: (n,) int64 class indices.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @classmethod
    def empty(cls) -> Boxes:
        return cls(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))

    @classmethod
    def cat(cls, parts: Sequence[Boxes]) -> Boxes:
        if not parts:
            return cls.empty()
        return cls(
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.scores for p in parts]),
            torch.cat([p.labels for p in parts]),
        )

    def select(self, index: torch.Tensor) -> Boxes:
        return Boxes(self.boxes[index], self.scores[index], self.labels[index])

    def detections(self, names: Sequence[str] | None = None) -> list[Detection]:
        """As `xtimage.io.vector.Detection` for the CSV, GeoJSON and COCO writers.

        Args:
            names: class names by index; None: labels stay integer indices.
        """
        out = []
        for (x1, y1, x2, y2), score, label in zip(
            self.boxes.tolist(), self.scores.tolist(), self.labels.tolist(), strict=True
        ):
            name = names[label] if names is not None else label
            out.append(Detection.from_box(y1, x1, y2, x2, score=score, label=name))
        return out


def box_targets(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    height: int,
    width: int,
    alpha: float = ALPHA,
) -> dict[str, torch.Tensor]:
    """Training targets of `BoxHead` for one image.

    Each box with its centre inside the image draws a gaussian that is exactly 1 at the
    pixel holding the centre, with ``sigma = max(alpha * (w, h) / 6, MIN_SIGMA)``, cut at
    3 sigma, into its class's heatmap (overlaps keep the maximum). Each pixel of a
    footprint is *owned* by the box whose gaussian is highest there (the smaller box on
    ties) and gets that box's size, its offset to that box's centre, and a regression
    weight: the gaussian divided by its sum over the pixels the box owns. Boxes whose
    centre lies outside the image (e.g. cut by a crop) draw nothing.

    Args:
        boxes: (n, 4) ``(x1, y1, x2, y2)`` in pixels.
        labels: (n,) class indices.
        num_classes: heatmap channels K.
        height: image height H.
        width: image width W.
        alpha: gaussian size factor.

    Returns:
        ``heatmap`` (K, H, W), ``size`` (2, H, W) as (w, h), ``offset`` (2, H, W) as
        (dx, dy) and ``weight`` (H, W), all float32; each drawn box's weights sum to 1.
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.shape[0] != boxes.shape[0]:
        raise InputError(f"{boxes.shape[0]} boxes but {labels.shape[0]} labels")
    if ((labels < 0) | (labels >= num_classes)).any():
        bad = int(labels[(labels < 0) | (labels >= num_classes)][0])
        raise InputError(
            f"box label {bad} is outside the {num_classes} classes 0..{num_classes - 1}"
        )
    sizes = boxes[:, 2:] - boxes[:, :2]  # (n, 2) w, h
    if (sizes <= 0).any():
        bad = boxes[(sizes <= 0).any(1)][0].tolist()
        raise InputError(f"box {bad} is empty (needs x1 < x2 and y1 < y2)")
    heat = torch.zeros(num_classes, height, width, dtype=torch.float64)
    size = torch.zeros(2, height, width, dtype=torch.float64)
    offset = torch.zeros(2, height, width, dtype=torch.float64)
    owner = torch.zeros(height, width, dtype=torch.float64)  # gaussian value of the owner
    owner_id = torch.full((height, width), -1, dtype=torch.long)
    for b in torch.argsort(sizes.prod(1), descending=True).tolist():  # small boxes last
        (x1, y1, x2, y2), (w, h) = boxes[b].tolist(), sizes[b].tolist()
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        if not (0 <= cx < width and 0 <= cy < height):
            continue
        px, py = int(cx), int(cy)  # the pixel holding the centre
        sx, sy = max(alpha * w / 6, MIN_SIGMA), max(alpha * h / 6, MIN_SIGMA)
        rx, ry = math.ceil(3 * sx), math.ceil(3 * sy)
        cols = torch.arange(max(px - rx, 0), min(px + rx + 1, width), dtype=torch.float64)
        rows = torch.arange(max(py - ry, 0), min(py + ry + 1, height), dtype=torch.float64)
        g = torch.exp(
            -((rows[:, None] - py) ** 2) / (2 * sy**2) - (cols[None, :] - px) ** 2 / (2 * sx**2)
        )  # (h', w'), 1 at the centre pixel
        r, c = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
        heat[labels[b], r, c] = torch.maximum(heat[labels[b], r, c], g)
        win = g >= owner[r, c]  # (h', w')
        owner[r, c] = torch.where(win, g, owner[r, c])
        owner_id[r, c] = torch.where(win, b, owner_id[r, c])
        size[0, r, c] = torch.where(win, w, size[0, r, c])
        size[1, r, c] = torch.where(win, h, size[1, r, c])
        offset[0, r, c] = torch.where(win, cx - (cols[None, :] + 0.5), offset[0, r, c])
        offset[1, r, c] = torch.where(win, cy - (rows[:, None] + 0.5), offset[1, r, c])
    owned = owner_id >= 0
    totals = torch.zeros(len(boxes), dtype=torch.float64).index_add_(
        0, owner_id[owned], owner[owned]
    )  # (n,) each box's gaussian summed over its pixels
    weight = torch.zeros(height, width, dtype=torch.float64)
    weight[owned] = owner[owned] / totals[owner_id[owned]]
    return {
        "heatmap": heat.float(),
        "size": size.float(),
        "offset": offset.float(),
        "weight": weight.float(),
    }


class BoxHead(DenseHead):
    """A `DenseHead` with CenterNet's outputs: ``heatmap`` (K), ``size`` (2), ``offset`` (2).

    The heatmap is trained with `focal_loss` on every valid pixel; size and offset with
    L1, each pixel weighted by the target ``weight`` (TTFNet's gaussian, normalised per
    object), so only the gaussian footprints count, each object once. Losses are sums
    over pixels, as `DenseHead`'s, so that chunks add up; CenterNet's division by the
    number of objects becomes the engine's division by the valid pixel count.

    Args:
        skips: channels and strides of the skip maps, shallow to deep.
        dim: token width.
        num_classes: object classes K.
        channels: decoder width.
        size_weight: weight of the size loss (CenterNet: 0.1).
        offset_weight: weight of the offset loss (CenterNet: 1).
    """

    def __init__(
        self,
        skips: Sequence[FeatureInfo],
        dim: int,
        num_classes: int,
        *,
        channels: int = 32,
        norm: str = "layer",
        size_weight: float = 0.1,
        offset_weight: float = 1.0,
    ) -> None:
        if num_classes <= 0:
            raise ConfigError(f"num_classes must be positive, got {num_classes}")
        outputs = [
            DenseOutput("heatmap", num_classes, "focal"),
            DenseOutput("size", 2, "l1", size_weight),
            DenseOutput("offset", 2, "l1", offset_weight),
        ]
        super().__init__(skips, dim, outputs, channels, norm)
        self.num_classes = num_classes
        with torch.no_grad():
            self.out.bias[:num_classes] = math.log(PRIOR / (1 - PRIOR))

    def loss_sum(
        self, out: torch.Tensor, targets: dict[str, torch.Tensor], valid: torch.Tensor
    ) -> torch.Tensor:
        """Focal + weighted L1 losses summed over the valid pixels.

        Args:
            out: (k, K + 4, H, W) raw outputs.
            targets: `box_targets` cropped to the chunk: ``heatmap`` (k, K, H, W),
                ``size`` and ``offset`` (k, 2, H, W), ``weight`` (k, H, W).
            valid: (k, H, W) bool.
        """
        parts = self.split(out)
        v = valid.to(out.dtype)
        total = (focal_loss(parts["heatmap"], targets["heatmap"]).sum(1) * v).sum()
        weight = targets["weight"] * v  # (k, H, W)
        for spec in self.outputs[1:]:
            l1 = (parts[spec.name] - targets[spec.name]).abs().sum(1)  # (k, H, W)
            total = total + spec.weight * (l1 * weight).sum()
        return total


def decode_boxes(
    heatmap: torch.Tensor,
    size: torch.Tensor,
    offset: torch.Tensor,
    threshold: float = 0.1,
    k: int = 100,
) -> Boxes:
    """Boxes at the heatmap's local maxima (CenterNet's decoding).

    A pixel is a peak when it equals the maximum of its 3 x 3 neighbourhood in its
    class's map (ties keep every tied pixel) and scores at least ``threshold``; the
    ``k`` best peaks over all classes are kept. A peak at pixel (i, j) gives the centre
    ``(j + 0.5 + dx, i + 0.5 + dy)`` and the box of size ``(w, h)`` (negative sizes read
    as 0) around it.

    Args:
        heatmap: (K, H, W) scores in [0, 1] (sigmoid of the head's logits).
        size: (2, H, W) box width and height.
        offset: (2, H, W) from the pixel centre to the box centre, (dx, dy).
        threshold: minimum score.
        k: most peaks kept.
    """
    num_classes, height, width = heatmap.shape
    peaks = heatmap == F.max_pool2d(heatmap[None], 3, stride=1, padding=1)[0]
    scores = torch.where(peaks & (heatmap >= threshold), heatmap, -1.0).flatten()
    top = scores.topk(min(k, scores.numel()))
    index = top.indices[top.values >= 0]  # (n,)
    labels, pixel = index // (height * width), index % (height * width)
    y, x = pixel // width, pixel % width
    cx = x.to(size.dtype) + 0.5 + offset[0, y, x]
    cy = y.to(size.dtype) + 0.5 + offset[1, y, x]
    w, h = size[0, y, x].clamp_min(0), size[1, y, x].clamp_min(0)
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)  # (n, 4)
    return Boxes(boxes, heatmap.flatten()[index], labels)
