"""The one model builder: a `ModelConfig` turned into constructor calls.

Every constant of the architecture lives in the config; this module is the only place
that turns it into modules (SAM's ``_build_sam`` habit), so `xt train`, `xt predict` and a
checkpoint all rebuild the same model. The head comes from the config's task
(`xtimage.tasks`). The baselines of Gupta et al. (ICML 2024) come out of the same
builder: ``crop`` is xT with context ``none``, ``downsample`` the image shrunk to one
region (`xtimage.baselines.Downsampled`). Data sets are built by `xtimage.data.registry`.
"""

from __future__ import annotations

from torch import nn

from xtimage.config import ModelConfig
from xtimage.model import XT
from xtimage.tasks import get_task


def build_model(config: ModelConfig, *, load_pretrained: bool = True) -> nn.Module:
    """The model a `ModelConfig` describes: an `XT`, or `Downsampled` around one.

    Args:
        config: the architecture.
        load_pretrained: read ``config.pretrained`` (off when a checkpoint's weights
            follow, so that predicting never needs the original backbone file).
    """
    from xtimage.baselines import Downsampled
    from xtimage.encoders.context import create_context_encoder
    from xtimage.encoders.context.partners import SymmetricPartners
    from xtimage.encoders.region import RegionEncoder

    config.check()
    encoder = RegionEncoder(
        config.backbone,
        region=config.region,
        in_chans=config.in_chans,
        subregion=config.subregion,
        pretrained=config.pretrained if load_pretrained else None,
        frozen=config.frozen,
        frozen_norm=config.frozen_norm,
        pixel_mean=config.pixel_mean,
        pixel_std=config.pixel_std,
        **config.backbone_kwargs,
    )
    if config.baseline == "crop":
        context = create_context_encoder("none", dim=config.dim)
    else:
        kwargs = dict(config.context_kwargs)
        if config.release and config.context in ("hyper", "mamba"):
            kwargs.setdefault("release", True)  # the authors' blocks (xtimage.convert)
        context = create_context_encoder(config.context, dim=config.dim, **kwargs)
        if config.partners:
            context = SymmetricPartners(context, config.partners, config.partner_proj)
    head = get_task(config).build_head(encoder.feature_info[:-1], config.dim)
    model = XT(
        encoder,
        context,
        head,
        region=config.region,
        margin=config.margin,
        pool=config.pool,
        token_norm=config.token_norm,
        token_maps=config.token_maps,
        token_reduce=config.token_reduce,
        release=config.release,
        release_chunk=config.release_chunk,
    )
    return Downsampled(model) if config.baseline == "downsample" else model


def unwrap(model: nn.Module) -> XT:
    """The `XT` inside a model (a baseline wrapper or DistributedDataParallel)."""
    while not isinstance(model, XT):
        model = model.model if hasattr(model, "model") else model.module
    return model
