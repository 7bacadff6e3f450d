"""The model zoo in two calls, in the spirit of ``timm.create_model``.

    >>> import xtimage
    >>> xtimage.list_models("inat*")
    ['inat_reptilia_hiera_b_hyper', ...]
    >>> model = xtimage.create_model("synthetic_seg", num_classes=3)

A model name is a preset (`xtimage.config.CONFIG_DIR`); keyword overrides are fields of
its `ModelConfig` and are checked like a config file's keys.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from torch import nn

from xtimage.build import build_model
from xtimage.config import CONFIG_DIR, load_config


def list_models(pattern: str = "*") -> list[str]:
    """The preset names matching a shell-style ``pattern``, sorted."""
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def create_model(name: str, *, load_pretrained: bool = True, **overrides: Any) -> nn.Module:
    """The model of preset (or YAML file) ``name``, its model fields changed by
    ``overrides`` (e.g. ``num_classes=10, pretrained=None, in_chans=2``).

    Args:
        name: a preset name (`list_models`) or a config file.
        load_pretrained: read the backbone weights file the config names, if any.
        overrides: `ModelConfig` fields; an unknown one is a `ConfigError`.
    """
    values = load_config(name).to_dict()
    values["model"].update(overrides)
    config = load_config(values)
    return build_model(config.model, load_pretrained=load_pretrained)
