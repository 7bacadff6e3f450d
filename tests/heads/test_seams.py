"""Dense outputs stitched from regions with margins show no seams at region borders."""

import torch
from torch import nn

from xtimage.encoders.context import IdentityContext
from xtimage.encoders.region import FeatureInfo
from xtimage.engine import Engine
from xtimage.heads import DenseHead, DenseOutput
from xtimage.model import XT


class LocalEncoder(nn.Module):
    """A translation-equivariant toy backbone (for shifts by its stride, 16 px) with a
    receptive field of 26 px, far below the 48 px margin used below."""

    feature_info = [FeatureInfo(4, 4), FeatureInfo(8, 16)]
    channels, stride = 8, 16

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
        self.pool = nn.AvgPool2d(4)

    def forward(self, x):
        a = self.pool(torch.relu(self.c1(x)))  # (k, 4, R/4, R/4)
        return [a, self.pool(torch.relu(self.c2(a)))]  # (k, 8, R/16, R/16)


def model(region: int, margin: int, state: dict | None = None) -> XT:
    torch.manual_seed(0)
    head = DenseHead(LocalEncoder.feature_info[:1], 8, [DenseOutput("m", 2)], channels=4)
    xt = XT(LocalEncoder(), IdentityContext(8), head, region=region, margin=margin).double()
    if state is not None:
        xt.load_state_dict(state)
    return xt.eval()


def test_tiled_with_margin_equals_one_whole_image_region_away_from_the_image_border():
    image = torch.rand(3, 256, 256, dtype=torch.float64)
    whole = model(256, 0)
    expected = Engine(whole).segment(image)  # one region: no region borders at all
    tiled = Engine(model(160, 48, whole.state_dict()), region_batch=3).segment(image)
    inner = (slice(None), slice(48, -48), slice(48, -48))  # borders of 64 px cores inside
    torch.testing.assert_close(tiled[inner], expected[inner], rtol=1e-10, atol=1e-10)

    # without a margin the region borders (every 64 px) show: the comparison can fail
    seams = Engine(model(64, 0, whole.state_dict())).segment(image)
    assert (seams - expected)[inner].abs().max() > 1e-2
