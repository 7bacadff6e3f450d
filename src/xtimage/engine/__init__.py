"""The streaming engine: bounded-memory inference and exact or streaming training.

Non-Module workflow code (the SAM predictor pattern): it owns sources, chunking,
read-ahead, RNG forking and the order of passes; `xtimage.model.XT` does the math.
"""

from xtimage.engine.runner import Engine, ImageTokens
from xtimage.engine.source import RegionSource

__all__ = ["Engine", "ImageTokens", "RegionSource"]
