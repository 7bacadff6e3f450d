"""xtimage: xT for extremely large images.

Nested tokenization (Gupta et al., "xT: Nested Tokenization for Larger Context in Large
Images", ICML 2024): an image is cut into regions, each region is encoded by a vision
backbone, and a long-sequence context encoder mixes the region tokens. xtimage streams
regions through the model with bounded memory, on CPU and GPU.
"""

from xtimage.errors import ConfigError, InputError, XTError
from xtimage.tiling import RegionPlan, TokenLayout, plan_regions

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "InputError",
    "RegionPlan",
    "TokenLayout",
    "XTError",
    "plan_regions",
]
