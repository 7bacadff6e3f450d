"""`xt convert`: an xT release checkpoint (``.ckpt``) into an xtimage checkpoint."""

from __future__ import annotations

import argparse
import json

ABOUT = """Convert an xT release checkpoint. It is read without running pickle code
(torch.load weights_only). Without a config, the release preset matching the checkpoint's
backbone width is used (its backbone and region); the context and head are read off the
checkpoint, with model.release=true. The result loads with `xt eval` / `xt predict` /
`xt train --resume`-free fine-tuning (model.pretrained is not needed: the weights are
inside).
"""

EXAMPLE = """examples:
  xt convert swin-t-hyper-512-256-top1.ckpt swin_t_hyper.safetensors
  xt convert swin-b-mamba-512-256-top1.ckpt out.safetensors inat_reptilia_swin_b_mamba
  xt convert my.ckpt out.safetensors my_run.yaml model.num_classes=284
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an xT release checkpoint (.ckpt) into an xtimage checkpoint",
        description=ABOUT,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", help="the release's .ckpt file")
    p.add_argument("out", help="the xtimage checkpoint to write (.safetensors)")
    p.add_argument("config", nargs="?", help="preset or YAML file (default: guessed)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--partial", action="store_true", help="write even with unfilled tensors")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xtimage.convert import convert_checkpoint, report_dict

    overrides = list(args.overrides)
    config = args.config
    if config is not None and "=" in config:
        overrides.insert(0, config)
        config = None
    report = convert_checkpoint(args.src, args.out, config, overrides, partial=args.partial)
    if args.json:
        print(json.dumps(report_dict(report), indent=2, default=str))
        return 0
    m = report.config
    print(
        f"{args.src}: release {report.family['backbone']} with the {report.family['head']} "
        f"classifier -> {report.out}"
    )
    context = f"{m.context} {m.context_kwargs}" if m.context != "none" else "none"
    print(f"  preset {report.preset}: {m.backbone}, region {m.region}, context {context}")
    print(f"  {report.used} tensors loaded, {m.num_classes} classes, model.release=true")
    print(f"  unused: {', '.join(report.unused) or 'none'}")
    print(f"  unfilled: {', '.join(report.unfilled) or 'none'}")
    return 0
