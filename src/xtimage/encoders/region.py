"""Region encoder: a timm backbone applied to every region on its own.

xT (Gupta et al., "xT: Nested Tokenization for Larger Context in Large Images", ICML 2024,
arXiv 2403.01915) calls the region encoder the *local expert*: any strong vision backbone
(Swin, Hiera, ConvNeXt in the paper) encodes each region independently, and the cells of
a region's last-stage map become its tokens. `RegionEncoder` wraps any timm model that
implements ``forward_intermediates`` and returns its multi-scale maps, always NCHW,
shallow to deep, each with its channels and stride.

Sizes. Families with a fixed input size (timm's ``fixed_input_size``: Swin, Swin-V2, Hiera,
ViT) are built for the region (or sub-region) size. timm's Swin windows pad a stage whose
side the window does not divide, so that border tokens attend to zeros; we pick instead
the window nearest the variant's own (``windowN`` in its name, else its pretrained size /
32) among those that divide every stage side larger than the window (a stage no larger
than the window is one window, as in timm). The input must be a multiple of the deepest
kept map's stride, so that every map has exactly ``size / stride`` cells a side.

Weights. Nothing is downloaded: ``pretrained`` is a local timm checkpoint (``.pth``,
``.bin``, ``.safetensors``). timm's own loader applies the family's checkpoint filter
(e.g. Swin's relative-position tables resized to the new window), adapts the first
convolution to ``in_chans`` with ``timm.models.adapt_input_conv``, and drops the
classifier. Hiera's flat position table is first resampled to the new size with timm's
``resample_abs_pos_embed`` (timm's Hiera filter does not do it).

Regions never interact except through BatchNorm batch statistics in training mode
(ResNet, MobileNet); use ``frozen=True`` or keep such backbones in eval mode when the
number of regions per batch must not change results.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from einops import rearrange
from timm.layers import resample_abs_pos_embed
from torch import nn

from xtimage.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

HUB_HINT = "nothing is downloaded; pass a local file: pretrained='path/to/weights.safetensors'"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Keyword arguments the wrapper sets itself; passing them through **timm_kwargs is an error.
_MANAGED = {
    "img_size": "region= (or subregion=)",
    "in_chans": "in_chans=",
    "num_classes": "nothing (the classifier is dropped)",
    "features_only": "nothing (maps come from forward_intermediates)",
    "out_indices": "out_indices=",
    "pretrained": "pretrained=",
    "pretrained_cfg_overlay": "pretrained=",
}


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map of a region encoder.

    Attributes:
        channels: channels of the map.
        stride: input pixels per map cell.
    """

    channels: int
    stride: int


def valid_windows(size: int, strides: Sequence[int]) -> list[int]:
    """Square window sizes that tile every stage of a windowed-attention backbone.

    A stage of ``size // stride`` cells a side is one window when the window is at least
    as large (timm shrinks the window to the stage), else it must be a whole number of
    windows (timm would otherwise pad it with zeros that border tokens attend to).
    """
    sides = [size // s for s in strides]
    return [w for w in range(1, max(sides) + 1) if all(r <= w or r % w == 0 for r in sides)]


def choose_window(size: int, strides: Sequence[int], preferred: int) -> int:
    """The valid window (see `valid_windows`) nearest ``preferred``, the larger on a tie."""
    return min(valid_windows(size, strides), key=lambda w: (abs(w - preferred), -w))


def _default_window(name: str) -> int:
    """The variant's own window: ``windowN`` in its name, else its pretrained size / 32."""
    match = re.search(r"window(\d+)", name)
    if match:
        return int(match.group(1))
    return timm.models.get_pretrained_cfg(name).input_size[-1] // 32


def _check_name(name: str) -> None:
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        raise ConfigError(f"model name {name!r} points at a hub; {HUB_HINT}")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ConfigError(f"unknown timm model {name!r}{hint}")


def _local_weights(pretrained: str | Path | bool | None) -> Path | None:
    """The local weights file asked for, or None; anything that would download fails."""
    if pretrained is None or pretrained is False:
        return None
    if not isinstance(pretrained, (str, Path)):
        raise ConfigError(f"pretrained={pretrained!r}: {HUB_HINT}")
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise InputError(f"pretrained={str(path)!r} is a folder; pass the weights file inside it")
    if path.suffix in WEIGHT_SUFFIXES:
        raise InputError(f"weights file {str(path)!r} not found; check the path ({HUB_HINT})")
    raise ConfigError(f"pretrained={pretrained!r} is not a local file; {HUB_HINT}")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        # weights_only: torch.load unpickles tensors and containers, never code
        return timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # torch.load / safetensors raise many types for a bad file
        raise InputError(
            f"cannot read weights from {str(path)!r} ({type(exc).__name__}: {exc}); pass a "
            f"timm state dict saved with torch.save or safetensors"
        ) from exc


def _fit_position_table(state: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Resample a flat (1, N, C) absolute position table to the model's square grid.

    Only for tables without prefix tokens whose filter does not resample them (Hiera);
    ViT's own checkpoint filter resamples its table, prefix tokens included.
    """
    old, new = state.get("pos_embed"), getattr(model, "pos_embed", None)
    if old is None or not isinstance(new, torch.Tensor) or old.ndim != 3 or new.ndim != 3:
        return
    if old.shape == new.shape or getattr(model, "num_prefix_tokens", 0):
        return
    g_old, g_new = math.isqrt(old.shape[1]), math.isqrt(new.shape[1])
    if g_old**2 == old.shape[1] and g_new**2 == new.shape[1]:
        state["pos_embed"] = resample_abs_pos_embed(
            old, new_size=[g_new, g_new], old_size=[g_old, g_old], num_prefix_tokens=0
        )  # (1, g_new**2, C)


class RegionEncoder(nn.Module):
    """A timm backbone run on every region independently, returning its feature maps.

    Args:
        name: timm model name, e.g. ``"swin_tiny_patch4_window7_224"``, ``"convnext_atto"``.
        region: side of the square regions it receives, in pixels.
        in_chans: input channels (2 for Sentinel-1 SAR, 4-13 for multispectral).
        subregion: when set, each region is cut into (region / subregion)^2 sub-regions
            (raster order, as `RegionPlan.subregion_windows`), the backbone runs at the
            sub-region size and each map is stitched back into the region's map.
        pretrained: a local timm checkpoint file; nothing is ever downloaded.
        frozen: keep the backbone in eval mode without gradients (train context and head
            only).
        frozen_norm: keep its batch norms in eval mode while training: their running
            statistics stay as loaded (pretrained, or a ``train.init`` run), their scale
            and shift still train. Chunked training (exact, streaming) otherwise
            normalises each chunk of regions by that chunk's statistics, not the batch's,
            and the running statistics follow the last few chunks.
        out_indices: which of timm's feature maps to return (default all); stages after
            the deepest one asked for are dropped.
        pixel_mean: per-channel mean subtracted from every region (the backbone's
            pretraining statistics), or None.
        pixel_std: per-channel standard deviation divided by, or None.
        **timm_kwargs: passed to ``timm.create_model`` (``embed_dim``, ``depths``,
            ``window_size``, ``drop_path_rate``...).
    """

    def __init__(
        self,
        name: str,
        *,
        region: int = 256,
        in_chans: int = 3,
        subregion: int | None = None,
        pretrained: str | Path | None = None,
        frozen: bool = False,
        frozen_norm: bool = False,
        out_indices: Sequence[int] | None = None,
        pixel_mean: Sequence[float] | None = None,
        pixel_std: Sequence[float] | None = None,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        _check_name(name)
        for label, value in (("region", region), ("in_chans", in_chans)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{label} must be a positive integer, got {value!r}")
        if subregion is not None and (
            not isinstance(subregion, int) or subregion <= 0 or region % subregion
        ):
            raise ConfigError(
                f"subregion {subregion!r} does not tile region {region}; use a divisor of "
                f"{region} or subregion=None"
            )
        managed = sorted(set(timm_kwargs) & set(_MANAGED))
        if managed:
            fixes = "; ".join(f"{k}: use {_MANAGED[k]}" for k in managed)
            raise ConfigError(f"RegionEncoder sets {', '.join(managed)} itself ({fixes})")
        weights = _local_weights(pretrained)

        if (pixel_mean is None) != (pixel_std is None) or (
            pixel_mean is not None and not len(pixel_mean) == len(pixel_std) == in_chans
        ):
            raise ConfigError(
                f"pixel_mean {pixel_mean!r} and pixel_std {pixel_std!r}: give both, one value "
                f"per channel ({in_chans}), or neither"
            )
        self.name = name
        self.region = region
        self.subregion = subregion
        self.in_chans = in_chans
        self.frozen = frozen
        self.frozen_norm = frozen_norm
        # The backbone's pixel statistics come from the config, not the weights: not saved.
        for key, values in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
            stat = None if values is None else torch.tensor(values, dtype=torch.float32)
            self.register_buffer(
                key, None if stat is None else stat.reshape(1, -1, 1, 1), persistent=False
            )  # (1, C, 1, 1)
        size = subregion or region  # what the backbone sees
        kwargs = dict(timm_kwargs, in_chans=in_chans, num_classes=0)
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is not None and cfg.fixed_input_size:
            kwargs["img_size"] = size

        # Shapes without memory or init cost: strides, kept stages, position tables.
        with torch.device("meta"):
            probe = timm.create_model(name, **kwargs)
        if not hasattr(probe, "forward_intermediates"):
            raise ConfigError(
                f"timm model {name!r} has no forward_intermediates, so its feature maps "
                f"cannot be taken; pick another backbone"
            )
        strides = [info["reduction"] for info in probe.feature_info]
        indices = list(range(len(strides))) if out_indices is None else list(out_indices)
        try:
            indices = probe.prune_intermediate_layers(indices, prune_norm=True, prune_head=True)
        except (AssertionError, IndexError) as exc:
            raise ConfigError(
                f"out_indices {out_indices!r} do not fit {name}'s {len(strides)} feature maps"
            ) from exc
        kept = strides[: max(indices) + 1]  # stages that run
        self._check_size(size, max(kept))
        if name.startswith("swin"):
            timm_kwargs["window_size"] = self._window(name, size, kept, timm_kwargs)
            kwargs["window_size"] = timm_kwargs["window_size"]

        state = None
        if weights is not None:
            state = _read_weights(weights)
            _fit_position_table(state, probe)
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"state_dict": state})
        try:
            backbone = timm.create_model(name, **kwargs)
        except Exception as exc:  # the family's checkpoint filter or load_state_dict
            if state is None:
                raise
            lines = [line.strip() for line in f"{type(exc).__name__}: {exc}".splitlines()]
            detail = lines[1] if len(lines) > 1 else lines[0]
            more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
            raise ConfigError(
                f"weights in {str(weights)!r} do not fit {name} with in_chans={in_chans} at "
                f"{size} px: {detail}{more}; pass a checkpoint of {name} built with the "
                f"same timm arguments"
            ) from exc
        if state is not None:
            backbone.pretrained_cfg.pop("state_dict", None)  # do not keep the checkpoint alive
            if not set(state) & set(backbone.state_dict()):
                warnings.warn(
                    f"no tensor name in {str(weights)!r} matches {name}'s; unless timm "
                    f"converted it from another format, it is not a checkpoint of {name}",
                    stacklevel=2,
                )
        backbone.prune_intermediate_layers(indices, prune_norm=True, prune_head=True)
        self.backbone = backbone
        self.indices = indices
        self.timm_kwargs = timm_kwargs
        self.feature_info = [
            FeatureInfo(channels=probe.feature_info[i]["num_chs"], stride=strides[i])
            for i in indices
        ]
        if frozen:
            self.backbone.requires_grad_(False)
            self.train(False)

    def _check_size(self, size: int, stride: int) -> None:
        if size % stride:
            low = size // stride * stride
            valid = " or ".join(str(s) for s in (low, low + stride) if s > 0)
            what = "sub-region" if self.subregion else "region"
            raise ConfigError(
                f"{what} {size} px is not a multiple of {self.name}'s stride {stride}; use {valid}"
            )

    def _window(self, name: str, size: int, strides: list[int], kwargs: dict) -> int:
        valid = valid_windows(size, strides)
        if "window_size" in kwargs:
            window = kwargs["window_size"]
            if window not in valid:
                raise ConfigError(
                    f"window_size {window!r} does not tile the stages of {name} at {size} px "
                    f"(sides {[size // s for s in strides]}); use one of {valid}"
                )
            return window
        window = choose_window(size, strides, _default_window(name))
        logger.info("%s at %d px: window %d (valid: %s)", name, size, window, valid)
        return window

    @property
    def channels(self) -> int:
        """Channels of the last map (the token map)."""
        return self.feature_info[-1].channels

    @property
    def stride(self) -> int:
        """Stride of the last map: pixels per token before pooling."""
        return self.feature_info[-1].stride

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this encoder's architecture (not its weights)."""
        return dict(
            name=self.name,
            region=self.region,
            in_chans=self.in_chans,
            subregion=self.subregion,
            frozen=self.frozen,
            frozen_norm=self.frozen_norm,
            out_indices=list(self.indices),
            **self.timm_kwargs,
        )

    def train(self, mode: bool = True) -> RegionEncoder:
        """Set training mode; a frozen encoder stays in eval mode, and so do the batch
        norms of one with ``frozen_norm``."""
        super().train(mode and not self.frozen)
        if mode and self.frozen_norm:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, regions: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of each region.

        Args:
            regions: (N, in_chans, region, region).

        Returns:
            One map per `feature_info` entry, shallow to deep, (N, channels,
            region / stride, region / stride).
        """
        expected = (self.in_chans, self.region, self.region)
        if regions.ndim != 4 or tuple(regions.shape[1:]) != expected:
            raise InputError(
                f"regions of shape {tuple(regions.shape)} do not fit region encoder "
                f"{self.name!r}, which takes (N, {', '.join(map(str, expected))}); set "
                f"model.in_chans and model.region (in_chans=, region= in Python) to match "
                f"the image"
            )
        if self.pixel_mean is not None:
            regions = (regions - self.pixel_mean) / self.pixel_std  # (N, C, R, R)
        k = self.region // (self.subregion or self.region)  # sub-regions a side
        x = rearrange(regions, "n c (i h) (j w) -> (n i j) c h w", i=k, j=k)  # (N*k*k, C, s, s)
        maps = self.backbone.forward_intermediates(x, indices=self.indices, intermediates_only=True)
        out = []
        for m, info in zip(maps, self.feature_info, strict=True):
            assert m.shape[1:] == (info.channels, *[x.shape[-1] // info.stride] * 2), m.shape
            out.append(rearrange(m, "(n i j) c h w -> n c (i h) (j w)", i=k, j=k))
        return out
