"""Device and mixed-precision choices shared by training, the engine and prediction."""

import pytest
import torch

from tiny import TINY_MODEL
from xtimage.errors import ConfigError
from xtimage.runtime import autocast, resolve_amp, resolve_device, to_channels_last

CPU = torch.device("cpu")


def test_auto_is_float32_on_cpu_and_named_precisions_are_honoured():
    assert resolve_amp("auto", CPU) == (None, False)
    assert resolve_amp("none", CPU) == (None, False)
    assert resolve_amp("bf16", CPU) == (torch.bfloat16, False)
    assert resolve_amp("fp16", CPU) == (torch.float16, True)  # fp16 brings a gradient scaler


def test_unknown_precision_names_the_choices():
    with pytest.raises(ConfigError, match="auto, none, bf16, fp16"):
        resolve_amp("float8", CPU)


def test_autocast_runs_matmuls_in_the_dtype_on_cpu_and_is_a_no_op_for_none():
    a = torch.randn(4, 4)
    with autocast(CPU, torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(CPU, None):
        assert (a @ a).dtype == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_asking_for_cuda_without_it_is_a_config_error():
    assert resolve_device("auto") == CPU
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


def test_prediction_in_bf16_on_cpu_is_close_to_float32():
    """amp=bf16 on CPU through the Predictor: the streamed heat map within bf16 rounding
    of the float32 one (8 significant bits; measured 0.002 apart at most)."""
    import numpy as np

    from xtimage.build import build_model
    from xtimage.config import load_config
    from xtimage.predict import Predictor

    config = load_config(None, TINY_MODEL)
    model = build_model(config.model).eval()
    image = np.random.default_rng(0).integers(0, 256, (3, 100, 150), dtype=np.uint8)
    full = Predictor(model, config.model, region_batch=2).predict(image)
    mixed = Predictor(model, config.model, region_batch=2, autocast=torch.bfloat16).predict(image)
    assert np.abs(mixed.heatmap - full.heatmap).max() < 0.01


def test_channels_last_prediction_equals_the_default_layout():
    """The speed option changes the summation order only: the heat map equals the default
    layout's to float32 rounding (1e-5), and the weights are NHWC."""
    import numpy as np

    from xtimage.build import build_model
    from xtimage.config import load_config
    from xtimage.predict import Predictor

    config = load_config(None, TINY_MODEL)
    model = build_model(config.model).eval()
    image = np.random.default_rng(0).integers(0, 256, (3, 100, 150), dtype=np.uint8)
    full = Predictor(model, config.model, region_batch=2).predict(image)
    nhwc = to_channels_last(model)
    conv = next(p for p in nhwc.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    fast = Predictor(nhwc, config.model, region_batch=2).predict(image)
    assert np.abs(fast.heatmap - full.heatmap).max() < 1e-5
