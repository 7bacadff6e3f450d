import pytest
import torch
import torch.nn.functional as F

from xtimage.encoders.region import FeatureInfo
from xtimage.errors import ConfigError
from xtimage.heads import DenseHead, DenseOutput

SKIPS = [FeatureInfo(4, 4), FeatureInfo(6, 8)]


def head(norm="layer"):
    outputs = [
        DenseOutput("mask", 3, "ce"),
        DenseOutput("centre", 1, "bce", weight=2.0),
        DenseOutput("length", 1, "l1"),
    ]
    return DenseHead(SKIPS, 8, outputs, channels=8, norm=norm).double()


def inputs(k=2, region=32):
    skips = [
        torch.randn(k, 4, region // 4, region // 4, dtype=torch.float64),
        torch.randn(k, 6, region // 8, region // 8, dtype=torch.float64),
    ]
    return skips, torch.randn(k, 8, 2, 2, dtype=torch.float64)  # 2 x 2 token cells


def test_outputs_have_the_region_size_and_split_by_name():
    h = head()
    skips, tokens = inputs()
    out = h(skips, tokens, region=32)
    assert out.shape == (2, 5, 32, 32)
    parts = h.split(out)
    assert [p.shape[1] for p in parts.values()] == [3, 1, 1] and list(parts) == [
        "mask",
        "centre",
        "length",
    ]


@pytest.mark.parametrize("norm", ["layer", "batch", "instance"])
def test_in_eval_mode_regions_are_decoded_independently_whatever_the_norm(norm):
    h = head(norm)
    h(*inputs(k=4), region=32)  # a training pass: batch norm's running statistics move
    h.eval()
    skips, tokens = inputs(k=3)
    together = h(skips, tokens, region=32)
    alone = h([s[1:2] for s in skips], tokens[1:2], region=32)
    torch.testing.assert_close(together[1:2], alone, rtol=1e-12, atol=1e-12)
    assert h.decomposable == (norm != "batch")  # batch statistics couple regions in training


def test_loss_sum_is_the_weighted_sum_of_per_pixel_losses_on_valid_pixels():
    h = head()
    out = torch.randn(2, 5, 16, 16, dtype=torch.float64)
    targets = {
        "mask": torch.randint(0, 3, (2, 16, 16)),
        "centre": torch.rand(2, 1, 16, 16, dtype=torch.float64),
        "length": torch.rand(2, 1, 16, 16, dtype=torch.float64),
    }
    valid = torch.rand(2, 16, 16) > 0.4
    v = valid.double()
    expected = (
        (F.cross_entropy(out[:, :3], targets["mask"], reduction="none") * v).sum()
        + 2.0
        * (
            F.binary_cross_entropy_with_logits(out[:, 3:4], targets["centre"], reduction="none")[
                :, 0
            ]
            * v
        ).sum()
        + ((out[:, 4:5] - targets["length"]).abs()[:, 0] * v).sum()
    )
    torch.testing.assert_close(h.loss_sum(out, targets, valid), expected)


def test_unknown_loss_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown loss 'hinge'"):
        DenseOutput("x", 1, "hinge")


def test_class_weights_scale_each_pixel_by_its_true_class():
    h = DenseHead(SKIPS, 8, [DenseOutput("mask", 2, "ce", class_weights=(1.0, 3.0))]).double()
    out = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    target = torch.randint(0, 2, (1, 8, 8))
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    plain = F.cross_entropy(out, target, reduction="none")
    expected = (plain * (1.0 + 2.0 * target)).sum()
    torch.testing.assert_close(h.loss_sum(out, {"mask": target}, valid), expected)
    with pytest.raises(ConfigError, match="one weight per channel"):
        DenseOutput("mask", 2, "ce", class_weights=(1.0,))


def test_batch_loss_adds_soft_dice_on_the_foreground():
    h = DenseHead(SKIPS, 8, [DenseOutput("mask", 2, "ce", dice=0.5)]).double()
    out = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 8, 8))
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    p = out.softmax(1)[:, 1]
    t = target.double()
    dice = (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    expected = F.cross_entropy(out, target) + 0.5 * (1 - dice)
    torch.testing.assert_close(h.batch_loss(out, {"mask": target}, valid), expected)
    assert not h.decomposable and head().decomposable


def test_a_shallow_decoder_ignores_the_deeper_skips_and_takes_full_width_tokens():
    h = DenseHead(SKIPS, 8, [DenseOutput("mask", 2)], channels=4, depth=1, project_tokens=False)
    assert h.fuse[0][0].in_channels == 8 + 4  # tokens at width 8 beside the lateral's 4
    skips, tokens = inputs()
    skips = [s.float() for s in skips]
    out = h(skips, tokens.float(), region=32)
    other = h([skips[0], torch.randn_like(skips[1])], tokens.float(), region=32)
    assert out.shape == (2, 2, 32, 32)
    torch.testing.assert_close(out, other, rtol=0, atol=0)
    assert not torch.equal(out, h([torch.randn_like(skips[0]), skips[1]], tokens.float(), 32))


@pytest.mark.parametrize(
    "kwargs", [{"norm": "group"}, {"depth": 0}, {"depth": 3}, {"fusion": "add"}]
)
def test_bad_decoder_options_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        DenseHead(SKIPS, 8, [DenseOutput("mask", 2)], **kwargs)


@pytest.mark.parametrize("norm", ["layer", "none"])
def test_film_with_zero_scale_and_shift_is_the_concat_decoder(norm):
    """FiLM only adds ``x * scale + shift`` after each block's norm: with its projections
    zeroed the decoder is the concat decoder with the same weights; with them set, the
    output depends on the tokens at every block, not only through the deepest input."""
    film = DenseHead(SKIPS, 8, [DenseOutput("mask", 2)], channels=8, norm=norm, fusion="film")
    plain = DenseHead(SKIPS, 8, [DenseOutput("mask", 2)], channels=8, norm=norm)
    film, plain = film.double(), plain.double()
    plain.load_state_dict({k: v for k, v in film.state_dict().items() if "film" not in k})
    skips, tokens = inputs()
    assert not torch.allclose(film(skips, tokens, 32), plain(skips, tokens, 32))
    for conv in film.film:
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    torch.testing.assert_close(film(skips, tokens, 32), plain(skips, tokens, 32), rtol=0, atol=0)
    assert film.decomposable and not head("batch").decomposable


def test_film_is_a_product_of_pixel_features_and_context():
    """The shallowest block's FiLM by hand: normalised features times (1 + scale) plus
    shift, scale and shift a 1x1 map of the tokens resampled to that block."""
    h = DenseHead(SKIPS, 8, [DenseOutput("mask", 2)], channels=8, norm="none", fusion="film")
    h = h.double()
    skips, tokens = inputs()
    seen = {}
    h.fuse[0][1].register_forward_hook(lambda m, i, o: seen.__setitem__("normed", o))
    h.fuse[0][2].register_forward_hook(lambda m, i, o: seen.__setitem__("act_in", i[0]))
    h(skips, tokens, 32)
    context = F.interpolate(tokens, size=(8, 8), mode="bilinear", align_corners=False)
    scale, shift = F.conv2d(context, h.film[0].weight, h.film[0].bias).chunk(2, 1)
    expected = seen["normed"] * (1 + scale) + shift
    torch.testing.assert_close(seen["act_in"], expected, rtol=1e-12, atol=1e-12)
