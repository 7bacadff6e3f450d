"""The downsample baseline: the whole image resized to one region, the same backbone.

What people do today when an image is too large: shrink it until it fits. The model is
an `XT` whose plan has a single region; fine detail smaller than the shrink factor is
lost by construction. (The other baseline, crop-only, is an `XT` with context "none".)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xtimage.model import XT


class Downsampled(nn.Module):
    """Resize (area) the image to one region, run ``model`` on it, resize outputs back.

    Args:
        model: an `XT` without margin; it sees one ``model.region`` square.
    """

    def __init__(self, model: XT) -> None:
        super().__init__()
        self.model = model

    @property
    def head(self) -> nn.Module:
        return self.model.head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, K), or dense outputs (B, K, H, W)."""
        r = self.model.region
        small = F.interpolate(images, size=(r, r), mode="area")  # (B, C, R, R)
        out = self.model(small)
        if not getattr(self.model.head, "dense", False):
            return out
        return F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)
