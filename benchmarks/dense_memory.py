"""Dense inference memory against image side: the context streamed, or run all at once.

`Engine.segment` of square images, each in a fresh process (`common.measure`): the peak
resident memory above the idle process (imports, model built, source opened). Region
encoder ``mobilenetv3_small_050`` at 256 px regions with a ``--margin`` (default 32 px),
Transformer-XL context of width 64 (2 layers, segment and memory 256 tokens), a dense
head (U-Net-style decoder, 16 channels, one 2-class output); 16 regions at once. The
image comes from `ProceduralReader` (pixels computed from their coordinates, read ahead
on threads like a file) and the outputs go to a writer that drops them (the outputs
themselves are the caller's business: a tiled file, or a (C, H, W) tensor that grows
with the image by definition).

- streamed: the engine's path for a streamable context (`xtimage.engine.dense`): the
  context pass leads the decoding pass and keeps a band of region rows' tokens;
- all at once: the same model with ``streamable`` switched off, i.e. the two-pass path
  (every token encoded and contextualised at once, then decoding), as before.

Target (issue 21): for Transformer-XL, the streamed increase at 16,384^2 within 1.25x of
that at 4,096^2.

    python benchmarks/dense_memory.py                       # 4k, 8k, 16k, both paths
    python benchmarks/dense_memory.py --sides 4096 16384 --paths streamed
    python benchmarks/dense_memory.py --paper --margin 0 --sides 4096 16384 --paths streamed

``--paper``: the paper's configuration instead, Swin-V2-T regions
(``swinv2_tiny_window16_256``, built for 256 px, so no margin) and the
``inat_reptilia_swin_t_xl`` preset's Transformer-XL of width 768, random weights.

Prints a table and writes JSON rows to benchmarks/results/dense_memory.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from common import STREAMING, machine, measure, print_table, save_rows  # noqa: E402

BACKBONE = "mobilenetv3_small_050"
# A cheap stand-in for long runs on a busy CPU: ConvNeXt-atto's structure, 1 block a stage,
# widths 8-16 (the engine tests' backbone). Same tokens per region (stride 32).
BACKBONES = {
    BACKBONE: {},
    "convnext_atto_narrow": {"depths": (1, 1, 1, 1), "dims": (8, 8, 16, 16)},
    "swinv2_tiny_window16_256": {},
}
PAPER = "swinv2_tiny_window16_256"
# the inat_reptilia_swin_t_xl preset's context
PAPER_CONTEXT = {"context": "xl", "depth": 2, "heads": 6, "segment_len": 64, "mem_len": 256,
                 "mlp_ratio": 6}  # fmt: skip


def width(backbone: str) -> int:
    """The context's width: the paper's 768, else the memory benchmarks' 64."""
    return 768 if backbone == PAPER else 64


class DropWriter:
    """A `Writer` that counts the output pixels and keeps nothing."""

    def __init__(self) -> None:
        self.pixels = 0

    def write(self, window, data) -> None:
        self.pixels += data.shape[-2] * data.shape[-1]

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def build_dense(margin: int, backbone: str = BACKBONE, dim: int = 64, region: int = 256):
    """XL-context dense model of the memory benchmarks."""
    from xtimage.encoders.context import create_context_encoder
    from xtimage.encoders.region import RegionEncoder
    from xtimage.heads import DenseHead, DenseOutput
    from xtimage.model import XT

    name = backbone.removesuffix("_narrow")
    encoder = RegionEncoder(name, region=region, **BACKBONES[backbone])
    setting = PAPER_CONTEXT if backbone == PAPER else STREAMING
    kwargs = {k: v for k, v in setting.items() if k != "context"}
    context = create_context_encoder(setting["context"], dim=dim, **kwargs)
    head = DenseHead(encoder.feature_info[:-1], dim, [DenseOutput("mask", 2, "ce")], channels=16)
    return XT(encoder, context, head, region=region, margin=margin)


def case_dense(
    side: int, path: str, margin: int, region_batch: int, backbone: str = BACKBONE,
    height: int | None = None,
):  # fmt: skip
    """One `Engine.segment` of a ``height`` (default ``side``) x ``side`` procedural image."""
    import torch

    from xtimage.engine import Engine
    from xtimage.io.procedural import ProceduralReader

    torch.manual_seed(0)
    model = build_dense(margin, backbone, dim=width(backbone)).eval()
    if path == "all at once":
        model.context.streamable = False
    height = height or side
    reader = ProceduralReader(height, side, seed=0)
    engine = Engine(model, region_batch=region_batch)
    regions = model.plan(height, side).num_regions

    def run() -> dict:
        writer = DropWriter()
        engine.segment(reader, writer=writer)
        assert writer.pixels == height * side
        return {"regions": regions}

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--paths", nargs="+", default=["streamed", "all at once"])
    parser.add_argument("--margin", type=int, default=32)
    parser.add_argument("--region-batch", type=int, default=16)
    parser.add_argument("--backbone", choices=list(BACKBONES), default=BACKBONE)
    parser.add_argument("--height", type=int, help="strips of this height (default: squares)")
    parser.add_argument("--paper", action="store_true",
                        help=f"the paper's configuration: {PAPER} and a 768-wide XL")  # fmt: skip
    args = parser.parse_args()
    if args.paper:
        args.backbone = PAPER

    rows = []
    for side in args.sides:
        for path in args.paths:
            out = measure(
                HERE, "case_dense", side=side, path=path, margin=args.margin,
                region_batch=args.region_batch, backbone=args.backbone, height=args.height,
            )  # fmt: skip
            row = {
                "benchmark": "dense_memory",
                "path": path,
                "side": side,
                "height": args.height or side,
                "context": "xl",
                "backbone": args.backbone,
                "dim": width(args.backbone),
                "margin": args.margin,
                "region_batch": args.region_batch,
                "source": "procedural",
                **out,
                **machine(),
            }
            rows.append(row)
            print(
                f"{path:>12} {side:>6}: +{row['peak_mb']:.1f} MiB "
                f"({row['total_peak_mb']:.1f} in all), {row['seconds']:.0f} s",
                flush=True,
            )
    for path in args.paths:
        mine = {r["side"]: r["peak_mb"] for r in rows if r["path"] == path}
        if len(mine) > 1:
            lo, hi = min(mine), max(mine)
            print(f"{path}: increase at {hi} / at {lo} = {mine[hi] / mine[lo]:.2f}")
    print_table(
        "dense inference, Transformer-XL context (increase over the idle process)",
        rows,
        [
            ("path", "path", ""),
            ("side", "side", ","),
            ("regions", "regions", ","),
            ("+MiB", "peak_mb", ".1f"),
            ("total MiB", "total_peak_mb", ".1f"),
            ("seconds", "seconds", ".0f"),
        ],
    )
    key = ["path", "side", "height", "backbone", "context", "margin", "region_batch"]
    path = save_rows("dense_memory", rows, key)
    print(f"\nrows merged into {path}")


if __name__ == "__main__":
    main()
