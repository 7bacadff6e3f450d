"""`xt demo`: the main job. For now: a region plan and a forward pass of a small model."""

from __future__ import annotations

import argparse
import time

import torch

from xtimage.tiling import RegionPlan, TokenLayout, extract_regions


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the built-in demonstration on CPU")
    p.add_argument("--size", default="1000x1500", help="demo image size HxW")
    p.add_argument("--region", type=int, default=256)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import timm

    from xtimage.commands.info import parse_size

    height, width = parse_size(args.size)
    plan = RegionPlan(height, width, args.region)
    start = time.perf_counter()
    backbone = timm.create_model("mobilenetv3_small_050", features_only=True, pretrained=False)
    backbone.eval()
    layout = TokenLayout(plan, backbone.feature_info.reduction()[-1])
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    tokens = []
    with torch.no_grad():
        for chunk in plan.chunks(8):
            regions = extract_regions(image, plan, chunk)[0]  # (k, C, R, R)
            last = backbone(regions)[-1]  # (k, D, r, r)
            tokens.append(layout.crop(last).flatten(2).transpose(1, 2).flatten(0, 1))
    sequence = torch.cat(tokens)  # (N, D)
    print(
        f"image {height} x {width}: {plan.num_regions} regions of {plan.region} px "
        f"({plan.rows} x {plan.cols}), {layout.num_tokens} tokens "
        f"({int(layout.valid().sum())} valid) of width {sequence.shape[-1]}"
    )
    print(
        f"forward pass of mobilenetv3_small_050 over all regions: "
        f"{time.perf_counter() - start:.2f} s on {torch.get_num_threads()} CPU thread(s)"
    )
    return 0
