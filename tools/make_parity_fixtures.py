"""Write the release-parity fixtures: the xT release's own models, tiny, with random weights.

For each family the authors released (Swin-V2 or Hiera regions; Hyper or Mamba context, or
the plain "naive" classifier), this builds *their* model from a checkout of their code
(github.com/bair-climate-initiative/xT), in a tiny configuration, perturbs every weight,
runs it on a fixed input and writes

- ``<family>.ckpt``: a ``torch.save`` payload as their trainer writes it (``epoch``,
  ``state_dict`` with the DistributedDataParallel ``module.`` prefix, ``metrics``);
- ``<family>.io.safetensors``: the input image and their logits (a family with
  ``weights`` reuses that family's weights and input and writes its logits only).

`tests/test_convert.py` converts each checkpoint with `xtimage.convert` and checks that
xtimage's model gives the same logits. Not part of the test run: it needs their checkout,
and for the Mamba family a checkout of github.com/state-spaces/mamba (their code imports
``mamba_ssm``, whose CUDA kernels do not run on a CPU; this script loads mamba_ssm's
``Mamba`` module from the checkout without its package ``__init__`` and runs it on its
slow path with ``selective_scan_ref``, mamba_ssm's own pure-PyTorch reference scan). It
also needs ``hiera-transformer`` (``pip install --target DIR --no-deps
hiera-transformer``, then put DIR on PYTHONPATH) for the Hiera family.

    PYTHONPATH=/path/to/hiera-deps python tools/make_parity_fixtures.py /path/to/xT \\
        --mamba /path/to/mamba --out tests/fixtures/release

The tiny configurations are written down in `FAMILIES`; the test builds the matching
xtimage models from the same numbers.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

# A tiny Swin-V2: 4 stages of one block, 8-64 channels; 64 px regions (2 x 2 tokens).
SWIN = dict(
    name="swinv2_tiny_window16_256", embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)
)
# A tiny Hiera: 4 stages of one block, 8-64 channels; 64 px regions (2 x 2 tokens).
HIERA = dict(embed_dim=8, num_heads=1, stages=(1, 1, 1, 1))

MLP_RATIO = 2  # their hidden MLPs (the release: 4), small to keep the fixtures small
# Their Hyper layer has hidden // 128 heads, so 128 is the narrowest Hyper context.
FAMILIES = {
    # family: backbone, region px, image px, release cls_head, context settings
    "swin_hyper": dict(backbone="swin", region=64, image=128, head="xl", method="hyper",
                       hidden=128, layers=2, classes=7),
    "swin_mamba": dict(backbone="swin", region=64, image=128, head="xl", method="mamba",
                       hidden=64, layers=4, classes=7),
    "swin_naive": dict(backbone="swin", region=64, image=64, head="naive", method=None,
                       hidden=None, layers=0, classes=7),
    "hiera_hyper": dict(backbone="hiera", region=64, image=128, head="xl", method="hyper",
                        hidden=128, layers=1, classes=7),
    # the in-context-patches path (its XL rows' code): windows of 6 of the 16 tokens, with
    # swin_hyper's weights (only the logits are written)
    "swin_hyper_windows": dict(backbone="swin", region=64, image=128, head="xl",
                               method="hyper", hidden=128, layers=2, classes=7, windows=6,
                               weights="swin_hyper"),
}  # fmt: skip


def import_release(xt_root: Path, mamba_root: Path | None) -> None:
    """Put their package on the path; stand in mamba_ssm's CUDA parts by its reference."""
    sys.path.insert(0, str(xt_root))
    if mamba_root is None:
        return
    pkg = types.ModuleType("mamba_ssm")  # without __init__: it imports transformers, Mamba2...
    pkg.__path__ = [str(mamba_root / "mamba_ssm")]
    sys.modules["mamba_ssm"] = pkg
    import mamba_ssm.modules.mamba_simple as simple
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref

    simple.selective_scan_fn = selective_scan_ref  # the CUDA scan's reference, same math
    pkg.Mamba = simple.Mamba
    legacy = types.ModuleType("mamba_ssm.ops.triton.layernorm")  # their import path (v1)
    legacy.RMSNorm = None  # rms_norm=False in their blocks
    sys.modules["mamba_ssm.ops.triton.layernorm"] = legacy


def build_release(spec: dict) -> torch.nn.Module:
    """Their xT with a tiny backbone, made the way their backbone wrappers make it."""
    import timm
    from xt.models.context_encoders import ContextEncoderConfig
    from xt.models.decoders.decoder import xT

    if spec["backbone"] == "swin":
        from xt.models.backbones.swin import SwinWrapper

        kw = {k: v for k, v in SWIN.items() if k != "name"}
        inner = timm.create_model(
            SWIN["name"], features_only=True, pretrained=False, img_size=spec["region"], **kw
        )
        backbone = SwinWrapper(inner)
    else:
        import hiera
        from xt.models.backbones.hiera import HieraWrapper

        inner = hiera.Hiera(input_size=(spec["region"], spec["region"]), **HIERA)
        backbone = HieraWrapper(inner, hidden_size=HIERA["embed_dim"] * 8)
    context = ContextEncoderConfig(
        hidden_size=spec["hidden"] or 768,
        n_layer=spec["layers"],
        attention_method=spec["method"] or "hyper",
        in_context_patches=spec.get("windows", -1),
    )
    return xT(
        backbone=backbone,
        xl_config=context,
        channels_last=False,
        crop_size=spec["region"],
        num_classes=spec["classes"],
        mlp_ratio=MLP_RATIO,
        cls_head=spec["head"],
    )


def perturb(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Move every weight off its initial value (ones, zeros, a 1e-6 CLS token...)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("xt", type=Path, help="checkout of bair-climate-initiative/xT")
    parser.add_argument("--mamba", type=Path, help="checkout of state-spaces/mamba")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/release"))
    parser.add_argument("--only", nargs="*", help="families to write (default all)")
    args = parser.parse_args()
    import_release(args.xt.resolve(), args.mamba.resolve() if args.mamba else None)
    args.out.mkdir(parents=True, exist_ok=True)
    names = list(FAMILIES)
    for family, spec in FAMILIES.items():
        if args.only and family not in args.only:
            continue
        i = names.index(spec.get("weights", family))  # seeds of the weights' family
        if spec["method"] == "mamba" and args.mamba is None:
            print(f"{family}: skipped (needs --mamba)")
            continue
        torch.manual_seed(1000 + i)
        model = build_release(spec)
        perturb(model, torch.Generator().manual_seed(2000 + i))
        model.eval()
        side = spec["image"]
        image = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            logits = model(image)["label"]  # (1, classes)
        state = {f"module.{k}": v.detach().clone() for k, v in model.state_dict().items()}
        payload = {"epoch": 3, "state_dict": state, "metrics": {"top1": 0.5, "loss": 1.25}}
        if "weights" not in spec:
            torch.save(payload, args.out / f"{family}.ckpt")
        save_file(
            {"image": image.contiguous(), "logits": logits.contiguous()},
            str(args.out / f"{family}.io.safetensors"),
        )
        n = sum(p.numel() for p in model.parameters())
        print(f"{family}: {n} parameters, logits {logits.flatten()[:3].tolist()}...")


if __name__ == "__main__":
    main()
