"""RegionEncoder against separately built timm models: same weights, same maps."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models import adapt_input_conv

from xtimage.encoders.region import RegionEncoder, choose_window, valid_windows
from xtimage.errors import ConfigError, InputError
from xtimage.tiling import RegionPlan, extract_regions
from xtimage.window import Window

SWIN = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
# name -> (tiny timm kwargs, fixed input size, timm's features_only gives NHWC, sizes)
FAMILIES = {
    "resnet18": ({}, False, False, (64, 96)),
    "convnext_atto": ({}, False, False, (96, 160)),
    "mobilenetv3_small_050": ({}, False, False, (96, 160)),
    "swin_tiny_patch4_window7_224": (SWIN, True, True, (192, 320)),
    "swinv2_tiny_window8_256": (SWIN, True, True, (192, 320)),
    "swinv2_cr_tiny_ns_224": (SWIN, True, False, (192, 320)),
    "hiera_tiny_224": (dict(embed_dim=16, stages=(1, 1, 1, 1)), True, False, (192, 320)),
}
SLOW_SIZES = {False: (64, 128, 224, 256), True: (128, 224, 256, 384)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A random 3-channel checkpoint per family, at timm's default size, head included."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for i, (name, (kwargs, *_)) in enumerate(FAMILIES.items()):
        torch.manual_seed(100 + i)
        state = timm.create_model(name, num_classes=7, **kwargs).state_dict()
        if i % 2:
            files[name] = folder / f"{name}.pth"
            torch.save(state, files[name])
        else:
            files[name] = folder / f"{name}.safetensors"
            save_file({k: v.contiguous() for k, v in state.items()}, files[name])
    return files


def timm_reference(name, size, in_chans, weights, enc):
    """timm's own features_only model on the same file, with timm's in_chans adaptation."""
    kwargs, fixed, nhwc, _ = FAMILIES[name]
    kwargs = dict(kwargs)
    overlay = {"file": str(weights)}
    if fixed:
        kwargs["img_size"] = size
        kwargs.update({k: v for k, v in enc.timm_kwargs.items() if k == "window_size"})
    if name.startswith("hiera"):  # timm's hiera filter keeps the 224 px position table
        state = timm.models.load_state_dict(str(weights))
        state["pos_embed"] = timm.layers.resample_abs_pos_embed(
            state["pos_embed"], [size // 4] * 2, num_prefix_tokens=0
        )
        overlay = {"state_dict": state}
    ref = timm.create_model(
        name,
        features_only=True,
        in_chans=in_chans,
        pretrained=True,
        pretrained_cfg_overlay=overlay,
        **kwargs,
    ).eval()
    return ref, nhwc


def check_matches_timm(name, size, in_chans, weights):
    kwargs = FAMILIES[name][0]
    enc = RegionEncoder(name, region=size, in_chans=in_chans, pretrained=weights, **kwargs)
    enc.eval()
    ref, nhwc = timm_reference(name, size, in_chans, weights, enc)
    x = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        ours, theirs = enc(x), ref(x)
    if nhwc:  # timm's Swin feature wrapper gives NHWC; ours is always NCHW
        theirs = [t.permute(0, 3, 1, 2) for t in theirs]
    assert [(f.channels, f.stride) for f in enc.feature_info] == list(
        zip(ref.feature_info.channels(), ref.feature_info.reduction(), strict=True)
    )
    assert len(ours) == len(theirs)
    for a, b, info in zip(ours, theirs, enc.feature_info, strict=True):
        assert a.shape == (2, info.channels, size // info.stride, size // info.stride)
        assert torch.equal(a, b)
    # The first convolution is timm's adaptation of the file's 3-channel kernel.
    conv = timm.models.get_pretrained_cfg(name).first_conv
    original = timm.models.load_state_dict(str(weights))[f"{conv}.weight"]
    loaded = enc.backbone.get_submodule(conv).weight
    assert torch.equal(loaded, adapt_input_conv(in_chans, original))


@pytest.mark.parametrize("name", FAMILIES)
def test_maps_equal_timm_at_two_sizes_and_channel_counts(name, checkpoints):
    size_a, size_b = FAMILIES[name][3]
    check_matches_timm(name, size_a, 3, checkpoints[name])
    check_matches_timm(name, size_b, 2, checkpoints[name])


@pytest.mark.slow
@pytest.mark.parametrize("in_chans", [1, 2, 4, 13])
@pytest.mark.parametrize("name", FAMILIES)
def test_maps_equal_timm_matrix(name, in_chans, checkpoints):
    for size in SLOW_SIZES[FAMILIES[name][1]]:
        check_matches_timm(name, size, in_chans, checkpoints[name])


def test_state_dict_keys_are_timm_keys():
    enc = RegionEncoder("convnext_atto", region=64)
    timm_keys = set(timm.create_model("convnext_atto").state_dict())
    keys = set(enc.state_dict())
    assert all(k.startswith("backbone.") for k in keys)
    assert {k.removeprefix("backbone.") for k in keys} <= timm_keys


def test_hiera_position_table_is_resampled_bicubic(checkpoints):
    kwargs = FAMILIES["hiera_tiny_224"][0]
    enc = RegionEncoder(
        "hiera_tiny_224", region=128, pretrained=checkpoints["hiera_tiny_224"], **kwargs
    )
    table = timm.models.load_state_dict(str(checkpoints["hiera_tiny_224"]))["pos_embed"]
    grid = table.reshape(1, 56, 56, -1).permute(0, 3, 1, 2)  # (1, C, 56, 56)
    expected = F.interpolate(grid, size=(32, 32), mode="bicubic", antialias=True)
    expected = expected.flatten(2).transpose(1, 2)  # (1, 1024, C)
    torch.testing.assert_close(enc.backbone.pos_embed.data, expected)


@pytest.mark.parametrize(
    ("size", "preferred", "window"),
    [(224, 7, 7), (256, 7, 8), (192, 7, 6), (320, 7, 5), (320, 8, 10), (256, 16, 16), (64, 7, 8)],
)
def test_window_is_nearest_that_tiles_every_stage(size, preferred, window):
    strides = [4, 8, 16, 32]
    sides = [size // s for s in strides]
    tiles = [w for w in range(1, sides[0] + 1) if all(r <= w or r % w == 0 for r in sides)]
    assert valid_windows(size, strides) == tiles
    assert choose_window(size, strides, preferred) == window
    best = min(abs(w - preferred) for w in tiles)
    assert abs(window - preferred) == best


@pytest.mark.parametrize("name", [n for n in FAMILIES if n.startswith("swin")])
def test_swin_windows_need_no_padding(name):
    enc = RegionEncoder(name, region=192, **SWIN)
    blocks = [m for m in enc.modules() if hasattr(m, "shift_size") and hasattr(m, "window_size")]
    assert blocks
    for block in blocks:
        side = getattr(block, "input_resolution", None) or block.feat_size
        window = tuple(block.window_size)
        assert all(r % w == 0 for r, w in zip(side, window, strict=True)), (side, window)
    assert enc.timm_kwargs["window_size"] == 6


def test_sizes_that_do_not_fit_name_valid_ones():
    with pytest.raises(ConfigError, match="192 or 224"):
        RegionEncoder("swin_tiny_patch4_window7_224", region=200, **SWIN)
    with pytest.raises(ConfigError, match="96 or 128"):
        RegionEncoder("convnext_atto", region=100)
    with pytest.raises(ConfigError, match=r"use one of \[1, 2, 3, 6, 12, 24, 48\]"):
        RegionEncoder("swin_tiny_patch4_window7_224", region=192, window_size=7, **SWIN)
    with pytest.raises(ConfigError, match="does not tile region"):
        RegionEncoder("convnext_atto", region=128, subregion=48)
    with pytest.raises(ConfigError, match="did you mean"):
        RegionEncoder("convnext_atoo", region=64)
    with pytest.raises(ConfigError, match="img_size: use region="):
        RegionEncoder("convnext_atto", region=64, in_chans=2, img_size=64)


FAMILY_KWARGS = {name: (kw, sizes[0]) for name, (kw, _, _, sizes) in FAMILIES.items()}


@pytest.mark.parametrize("name", FAMILIES)
def test_a_region_does_not_see_other_regions(name):
    kwargs, size = FAMILY_KWARGS[name]
    enc = RegionEncoder(name, region=size, **kwargs).eval()
    x = torch.randn(3, 3, size, size)
    y = x.clone()
    y[1] += torch.randn_like(y[1])
    with torch.no_grad():
        before, after = enc(x), enc(y)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a[[0, 2]], b[[0, 2]])
        assert not torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    ("name", "kwargs", "region", "sub"),
    [("convnext_atto", {}, 128, 64), ("swin_tiny_patch4_window7_224", SWIN, 128, 64)],
)
def test_subregion_maps_are_stitched_in_raster_order(name, kwargs, region, sub):
    enc = RegionEncoder(name, region=region, subregion=sub, **kwargs).double().eval()
    single = RegionEncoder(name, region=sub, **kwargs).double().eval()
    single.load_state_dict(enc.state_dict())
    x = torch.randn(2, 3, region, region, dtype=torch.float64)
    windows = RegionPlan(region, region, region, subregion=sub).subregion_windows()
    with torch.no_grad():
        maps = enc(x)
        parts = [single(x[:, :, w.top : w.bottom, w.left : w.right]) for w in windows]
    for level, (m, info) in enumerate(zip(maps, enc.feature_info, strict=True)):
        assert m.shape[-1] == region // info.stride
        expected = torch.zeros_like(m)
        for w, part in zip(windows, parts, strict=True):
            s = info.stride
            expected[..., w.top // s : w.bottom // s, w.left // s : w.right // s] = part[level]
        torch.testing.assert_close(m, expected, rtol=1e-12, atol=1e-12)


def test_pretrained_file_changes_outputs_and_loads_its_tensors(tmp_path):
    torch.manual_seed(1)
    state = timm.create_model("convnext_atto").state_dict()
    path = tmp_path / "w.pth"
    torch.save({"state_dict": state}, path)  # timm's training-checkpoint layout
    torch.manual_seed(0)
    fresh = RegionEncoder("convnext_atto", region=64).eval()
    torch.manual_seed(0)
    loaded = RegionEncoder("convnext_atto", region=64, pretrained=path).eval()
    for key, value in loaded.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.equal(fresh(x)[-1], loaded(x)[-1])


def test_weights_that_would_download_fail_clearly(tmp_path):
    hint = "nothing is downloaded; pass a local file: pretrained='path/to/weights.safetensors'"
    for pretrained in (True, "convnext_atto.d2_in1k", "timm/convnext_atto.d2_in1k"):
        with pytest.raises(ConfigError) as info:
            RegionEncoder("convnext_atto", region=64, pretrained=pretrained)
        assert hint in str(info.value)
    with pytest.raises(ConfigError, match="nothing is downloaded"):
        RegionEncoder("hf-hub:timm/convnext_atto.d2_in1k", region=64)
    with pytest.raises(InputError, match="missing.safetensors"):
        RegionEncoder("convnext_atto", region=64, pretrained=tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pth"):
        RegionEncoder("convnext_atto", region=64, pretrained=bad)
    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18").state_dict(), other)
    with pytest.raises(ConfigError, match="do not fit convnext_atto"):
        RegionEncoder("convnext_atto", region=64, pretrained=other)


def test_frozen_stays_in_eval_without_gradients():
    enc = RegionEncoder("resnet18", region=64, frozen=True)
    parent = torch.nn.Sequential(enc).train()
    assert not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    x = torch.randn(2, 3, 64, 64)
    out = enc(x)[-1]
    assert not out.requires_grad
    ref = RegionEncoder("resnet18", region=64)
    ref.load_state_dict(enc.state_dict())
    ref.eval()
    assert torch.equal(out, ref(x)[-1].detach())  # BatchNorm used running statistics
    assert parent.training


def test_out_indices_pick_maps_and_drop_deeper_stages():
    enc = RegionEncoder("convnext_atto", region=64, out_indices=(0, 2))
    assert [(f.channels, f.stride) for f in enc.feature_info] == [(40, 4), (160, 16)]
    assert enc.channels == 160 and enc.stride == 16
    assert len(enc.backbone.stages) == 3
    maps = enc(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps] == [(40, 16, 16), (160, 4, 4)]
    with pytest.raises(ConfigError, match="out_indices"):
        RegionEncoder("convnext_atto", region=64, out_indices=(9,))


def test_config_rebuilds_the_same_encoder():
    enc = RegionEncoder("swinv2_cr_tiny_ns_224", region=96, in_chans=5, **SWIN).eval()
    again = RegionEncoder(**enc.config()).eval()
    again.load_state_dict(enc.state_dict())
    x = torch.randn(1, 5, 96, 96)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(enc(x), again(x), strict=True))


def test_wrong_region_shape_is_an_input_error():
    enc = RegionEncoder("mobilenetv3_small_050", region=64, in_chans=2)
    with pytest.raises(InputError, match=r"\(N, 2, 64, 64\)"):
        enc(torch.randn(1, 3, 64, 64))
    with pytest.raises(InputError):
        enc(torch.randn(1, 2, 96, 96))
    assert math.prod(enc(torch.randn(1, 2, 64, 64))[-1].shape[-2:]) == 4


def test_a_region_mostly_past_the_border_keeps_convnext_stem_gradients_in_scale():
    # A ConvNeXt stem (patchify conv, bias 0 at init, then LayerNorm over channels) maps a
    # patch of zeros to a vector without variance, and LayerNorm divides it by sqrt(eps):
    # with zero padding the stem's gradients were ~1e9 times an interior region's. Edge
    # padding gives the padding the border's pixels, so the scale stays that of an image.
    enc = RegionEncoder("convnext_atto", region=64)
    conv = enc.backbone.stem[0]
    plan = RegionPlan(160, 160, region=64, margin=8)  # core 48: 4 x 4 regions, 32 px padding
    regions = extract_regions(torch.rand(1, 3, 160, 160), plan)[0]
    interior, corner = plan.cols + 1, plan.num_regions - 1  # (1, 1) inside, (3, 3) 85% padding
    assert plan.window(interior).intersect(Window(0, 0, 160, 160)) == plan.window(interior)

    def stem_grads(index):
        enc.zero_grad()
        sum(m.square().mean() for m in enc(regions[index : index + 1])).backward()
        return conv.weight.grad.norm().item(), conv.bias.grad.norm().item()

    for inside, padded in zip(stem_grads(interior), stem_grads(corner), strict=True):
        assert padded < 10 * inside
