"""The public API: every name exported from `xtimage` resolves, models build by name."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import xtimage
from xtimage.errors import ConfigError


@pytest.mark.parametrize("name", xtimage.__all__)
def test_every_export_resolves(name):
    assert getattr(xtimage, name) is not None


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = xtimage.nope


def test_importing_the_package_loads_no_torch():
    code = "import sys, xtimage; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_list_models_are_the_presets():
    names = xtimage.list_models()
    assert "synthetic_seg" in names and "demo" in names
    assert xtimage.list_models("inat_reptilia_swin_t_*") == [
        "inat_reptilia_swin_t_hyper", "inat_reptilia_swin_t_hyper_256",
        "inat_reptilia_swin_t_mamba", "inat_reptilia_swin_t_xl",
    ]  # fmt: skip


def test_create_model_applies_overrides_and_checks_them():
    model = xtimage.create_model("synthetic_seg", num_classes=3)
    assert model.head.out_channels == 3
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64)
    with pytest.raises(ConfigError, match="num_clases"):
        xtimage.create_model("synthetic_seg", num_clases=3)
