"""Frozen-backbone feature cache: encode every region once, train only what follows.

With a frozen region encoder, the pooled cells it gives a region (`XT.encode_cells`,
before the trainable token projection) never change, so they are computed once per image
and kept on disk as safetensors. The key covers everything they depend on: the backbone's
architecture and a digest of its weights, the region plan recipe (region, margin,
pooling), the image size and a caller-chosen image key (a path and its modification
time, or a data set index with its seed). Pixel augmentation changes the pixels, so it
must either be off or be part of the image key.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from xtimage.errors import ConfigError
from xtimage.integrity import digest_tensors
from xtimage.io.atomic import atomic_path
from xtimage.model import XT

log = logging.getLogger(__name__)


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers, names and bytes."""
    return digest_tensors(module.state_dict())


class TokenCache:
    """Cells of a frozen backbone, one safetensors file per image.

    Args:
        root: cache directory (created).
        model: the model; its region encoder must be frozen.
    """

    def __init__(self, root: str | Path, model: XT) -> None:
        encoder = model.region_encoder
        if any(p.requires_grad for p in encoder.parameters()) or encoder.training:
            raise ConfigError(
                "the token cache needs a frozen region encoder (RegionEncoder(..., frozen=True)); "
                "a trainable one would make cached features stale"
            )
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.model = model
        recipe = {
            "encoder": encoder.config(),
            "weights": weights_digest(encoder),
            "region": model.region,
            "margin": model.margin,
            "pool": model.pool,
        }
        self._recipe = json.dumps(recipe, sort_keys=True, default=str)

    def path(self, image_key: str, height: int, width: int) -> Path:
        digest = hashlib.sha256(f"{self._recipe}|{image_key}|{height}x{width}".encode())
        return self.root / f"{digest.hexdigest()[:32]}.safetensors"

    def cells(self, engine, image, image_key: str) -> torch.Tensor:
        """(num_regions * T, C) cells of every region of ``image``, from disk if cached."""
        source = engine.source(image)
        path = self.path(image_key, source.height, source.width)
        if path.exists():  # safetensors: raw tensors, nothing unpickled
            tokens = engine.model.layout(source.height, source.width).num_tokens
            try:
                cells = load_file(path)["cells"]
                if cells.ndim == 2 and len(cells) == tokens and cells.isfinite().all():
                    return cells.to(engine.device)
            except Exception:  # noqa: BLE001 any damage: the entry is recomputed, not trusted
                pass
            log.warning("%s: damaged token cache entry, recomputed", path)
            path.unlink(missing_ok=True)
        cells = engine.encode_cells(source)
        with atomic_path(path) as tmp:
            tmp.write_bytes(save({"cells": cells.contiguous().cpu()}))  # not save_file's .tmp
        return cells
