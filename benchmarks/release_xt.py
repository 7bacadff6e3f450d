"""The xT release's own model as a measured case: built and run by the release's code.

`paper_configs.py` measures the released code (github.com/bair-climate-initiative/xT)
beside xtimage's engine. The release runs unchanged, from its own checkout, under its own
Python (an environment with its model code's imports: torch, timm 0.9.7, einops, triton,
hiera-transformer, omegaconf), in a fresh process through
``common.measure(..., python=RELEASE_PYTHON)``. This file is that process's case: it
imports nothing of xtimage, so the release's environment needs none of it.

What it does, as the release's trainer and evaluator do: the model config is the release's
YAML (merged over its base configs, on the release's `ModelConfig` schema), the model comes
from the release's `build_model` and is moved to channels-last; inference is
``model(image)`` under ``torch.no_grad()`` in eval mode, a training step ``model(image)``,
cross-entropy on its ``"label"`` logits, backward and an AdamW step. Three departures,
each so that its rows compare with xtimage's: the backbones are built without weights (the
release's builders download ImageNet weights; here ``pretrained`` is forced off, as
xtimage's rows use random weights), autograd's anomaly detection (on in the release's
training loop, and slow) is left off, and there is no gradient clipping (xtimage's rows
have none). One shim: the release's Hiera builders call ``hiera.hiera_base`` (and _tiny,
_small, _base_plus, _large), names no published hiera-transformer (0.1.0-0.1.4) has; they
are bound to its ``hiera_<size>_224``, the models of those sizes, which the release builds
for its 224 px regions. The image, float32 random values made before the measurement, is
padded to whole regions (the release needs them; xtimage's region plan pads the same way).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path


def _unweighted(build):
    """``build`` with ``pretrained`` forced off (the release's builders ask for a download)."""

    @functools.wraps(build)
    def unweighted(*args, **kwargs):
        kwargs["pretrained"] = False
        return build(*args, **kwargs)

    return unweighted


def release_model(checkout: str, config: str):
    """The release's model for its config file ``config`` (relative to ``checkout``), and
    the region side it tiles by."""
    import hiera
    import timm
    from omegaconf import OmegaConf

    timm.create_model = _unweighted(timm.create_model)
    for size in ("tiny", "small", "base", "base_plus", "large"):
        setattr(hiera, f"hiera_{size}", _unweighted(getattr(hiera, f"hiera_{size}_224")))
    sys.path.insert(0, checkout)
    from xt.models import ModelConfig, build_model

    def merged(path: Path):  # a config file over its base_configs, as the release's loader
        own = OmegaConf.load(path)
        bases = [merged(Path(checkout) / base) for base in own.get("base_configs", [])]
        return OmegaConf.merge(*bases, own) if bases else own

    schema = OmegaConf.create({"model": OmegaConf.structured(ModelConfig)})
    cfg = OmegaConf.merge(schema, merged(Path(checkout) / config))
    return build_model(cfg.model, cfg.data.dataset), cfg.model.backbone.input_size


def case_release(checkout: str, config: str, height: int, width: int, train: bool = False):
    """Build the release's model and a (1, 3, H, W) image padded to whole regions; return
    the measured run (inference, or one AdamW training step)."""
    import torch

    net, region = release_model(checkout, config)
    net = net.to(memory_format=torch.channels_last)  # as the release's trainer
    rows, cols = -(-height // region), -(-width // region)
    if rows != cols:
        raise ValueError(f"the release tiles square images only, got {height} x {width}")
    seeded = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, rows * region, cols * region, generator=seeded)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4) if train else None
    label = torch.tensor([1])
    out = {"regions": rows * cols, "padded_side": rows * region}

    def run() -> dict:
        net.train(train)
        with torch.set_grad_enabled(train):
            logits = net(image)["label"]
            if train:
                torch.nn.functional.cross_entropy(logits, label).backward()
                optimizer.step()
        return out

    return run
