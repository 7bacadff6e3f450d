"""xtimage: xT for extremely large images.

Nested tokenization (Gupta et al., "xT: Nested Tokenization for Larger Context in Large
Images", ICML 2024): an image is cut into regions, each region is encoded by a vision
backbone, and a long-sequence context encoder mixes the region tokens. xtimage streams
regions through the model with bounded memory, on CPU and GPU.

The public API, importable from here (each loads its module on first use, so that
``import xtimage`` and the ``xt`` command start without PyTorch):

    create_model, list_models     models from presets (`xtimage.api`)
    load_config                   a run's config: preset or YAML plus overrides
    Trainer                       training, resumable (`xtimage.train`)
    Predictor                     inference on any image or file (`xtimage.predict`)
    open_reader                   windows of any large-image file (`xtimage.io`)
    plan_memory                   region batch and mode for a memory budget
    plan_regions, RegionPlan, TokenLayout   the region geometry (`xtimage.tiling`)
    XTError, ConfigError, InputError        the errors users can cause
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "create_model": "xtimage.api",
    "list_models": "xtimage.api",
    "load_config": "xtimage.config",
    "Trainer": "xtimage.train",
    "Predictor": "xtimage.predict",
    "open_reader": "xtimage.io",
    "plan_memory": "xtimage.engine.planner",
    "plan_regions": "xtimage.tiling",
    "RegionPlan": "xtimage.tiling",
    "TokenLayout": "xtimage.tiling",
    "XTError": "xtimage.errors",
    "ConfigError": "xtimage.errors",
    "InputError": "xtimage.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xtimage' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
