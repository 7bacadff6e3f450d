import torch
import torch.nn.functional as F

from xtimage.baselines import Downsampled
from xtimage.encoders.context import IdentityContext
from xtimage.encoders.region import RegionEncoder
from xtimage.heads import DenseHead, DenseOutput
from xtimage.model import XT


def test_downsampled_sees_the_area_resized_image_and_upsamples_outputs():
    encoder = RegionEncoder("convnext_atto", region=64, depths=(1, 1, 1, 1), dims=(8, 8, 16, 16))
    head = DenseHead(encoder.feature_info[:-1], 16, [DenseOutput("mask", 2)], channels=8)
    xt = XT(encoder, IdentityContext(16), head, region=64).eval()
    model = Downsampled(xt)
    image = torch.rand(1, 3, 256, 192)
    small = F.interpolate(image, size=(64, 64), mode="area")
    expected = F.interpolate(xt(small), size=(256, 192), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model(image), expected)
    # fine detail below the shrink factor is invisible: a 4 x 4 checkerboard averages away
    checker = (torch.arange(256)[:, None] + torch.arange(192)[None]) % 2
    flat = torch.full((1, 3, 256, 192), 0.5)
    textured = checker.float().expand(1, 3, -1, -1)
    torch.testing.assert_close(model(textured), model(flat))

