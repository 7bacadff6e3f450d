"""The one pixel preprocessing that training, evaluation and prediction share.

Pixels reach the model as float32 in [0, 1]: integers over their type's maximum, floats
as they are (`to_unit`). A model trained on whole images of a fixed size (photos, as
iNaturalist) sees each image resized to ``model.input_size`` by `resize_image`, in the
data set and in the predictor alike; band matching is `xtimage.io.transforms.match_channels`
and the backbone's mean/std normalisation is the region encoder's
(``model.pixel_mean`` / ``pixel_std``), so a checkpoint carries all of it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_unit(pixels: np.ndarray) -> np.ndarray:
    """Pixels as float32: integers over their type's maximum (uint8 / 255), floats
    unchanged."""
    if np.issubdtype(pixels.dtype, np.integer):
        return (pixels / np.iinfo(pixels.dtype).max).astype(np.float32)
    return pixels.astype(np.float32, copy=False)


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """A whole image resized to ``size`` x ``size`` (aspect ratio not kept, as the xT
    release does), float32 in [0, 1]: (C, H, W) -> (C, size, size).

    uint8 grey or RGB images are resized by Pillow's bilinear filter (the release's
    evaluation transform); anything else by antialiased bilinear interpolation of its
    `to_unit` values.
    """
    if image.dtype == torch.uint8 and image.shape[0] in (1, 3):
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.functional import pil_to_tensor, resize, to_pil_image

        small = resize(to_pil_image(image), [size, size], InterpolationMode.BILINEAR)
        return pil_to_tensor(small).reshape(image.shape[0], size, size).float() / 255
    x = torch.from_numpy(to_unit(image.numpy()))[None]  # (1, C, H, W)
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)[0]
