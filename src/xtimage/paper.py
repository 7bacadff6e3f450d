"""The paper's configurations: which preset reproduces which reported row.

Numbers are those of Gupta et al., "xT: Nested Tokenization for Larger Context in Large
Images" (ICML 2024, arXiv 2403.01915) as the authors' release lists them
(github.com/bair-climate-initiative/xT, README "Pretrained Models"): iNaturalist 2018
Reptilia top-1 and parameters in millions, rounded as printed there. Their released
weights are named in ``weights`` (convert them with ``xt convert``). The release also
configures Hiera-B (alone at 224 px, and with Hyper at 448/224) without reporting a number
for it; those rows have None.

`preset_summary` builds a preset's model on the meta device (no memory, no weights) to
count its parameters, so ``xt info --presets`` can show them beside the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from xtimage.config import CONFIG_DIR, load_config


@dataclass(frozen=True)
class PaperRow:
    """One reported configuration.

    Attributes:
        model: the row's name as printed ("Swin-T <xT> Hyper").
        resolution: image px / region px ("512/256"), or the image px alone.
        top1: reported top-1 (%), or None where not reported.
        params_m: reported parameters in millions, or None.
        weights: the released checkpoint's file name, or None (none released).
    """

    model: str
    resolution: str
    top1: float | None
    params_m: float | None
    weights: str | None = None


def _rows() -> dict[str, PaperRow]:
    rows: dict[str, PaperRow] = {}
    sizes = {"t": "T", "s": "S", "b": "B", "l": "L"}
    # (top-1, params) per size: alone at 256, Hyper 256/256, Hyper 512/256, XL, Mamba
    reported = {
        "t": ((53.76, 31), (52.93, 47), (60.56, 47), (58.92, 47), (61.97, 44)),
        "s": ((58.45, 52), (57.04, 69), (63.62, 69), (62.68, 69), None),
        "b": ((58.57, 92), (55.52, 107), (64.08, 107), (62.09, 107), (63.73, 103)),
        "l": ((68.78, 206), (67.84, 215), (72.42, 215), (73.47, 215), (73.36, 212)),
    }
    for k, (alone, hyper256, hyper, xl, mamba) in reported.items():
        name, w = f"Swin-{sizes[k]}", f"swin-{k}"
        rows[f"inat_reptilia_swin_{k}"] = PaperRow(name, "256", *alone, f"{w}-nonxl-256-top1.ckpt")
        rows[f"inat_reptilia_swin_{k}_hyper_256"] = PaperRow(
            f"{name} <xT> Hyper", "256/256", *hyper256, f"{w}-hyper-256-256-top1.ckpt"
        )
        rows[f"inat_reptilia_swin_{k}_hyper"] = PaperRow(
            f"{name} <xT> Hyper", "512/256", *hyper, f"{w}-hyper-512-256-top1.ckpt"
        )
        rows[f"inat_reptilia_swin_{k}_xl"] = PaperRow(f"{name} <xT> XL", "512/256", *xl)
        if mamba is not None:
            rows[f"inat_reptilia_swin_{k}_mamba"] = PaperRow(
                f"{name} <xT> Mamba", "512/256", *mamba, f"{w}-mamba-512-256-top1.ckpt"
            )
    rows["inat_reptilia_hiera_b"] = PaperRow("Hiera-B", "224", None, None)
    rows["inat_reptilia_hiera_b_hyper"] = PaperRow("Hiera-B <xT> Hyper", "448/224", None, None)
    return rows


PAPER: dict[str, PaperRow] = _rows()


def count_parameters(model_config: Any) -> int:
    """Parameters of the model a `ModelConfig` builds, counted on the meta device."""
    from xtimage.build import build_model

    with torch.device("meta"):
        model = build_model(model_config, load_pretrained=False)
    return sum(p.numel() for p in model.parameters())


def preset_summary(name: str, params: bool = True) -> dict[str, Any]:
    """A preset's region, image size, context, parameters and the paper's row (if any)."""
    config = load_config(name)
    m = config.model
    context = m.context
    if m.context != "none":
        depth = m.context_kwargs.get("depth")
        context += f" x{depth}" if depth else ""
    row = PAPER.get(name)
    return {
        "preset": name,
        "backbone": m.backbone,
        "region": m.region,
        "image": config.data.size if config.data.kind in ("inaturalist", "synthetic") else None,
        "context": context,
        "release": m.release,
        "params": count_parameters(m) if params else None,
        "paper": None if row is None else row.__dict__,
    }


def preset_names() -> list[str]:
    """Every shipped preset, paper rows first (in the paper's order), then the others."""
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    return [n for n in PAPER if n in names] + [n for n in names if n not in PAPER]
