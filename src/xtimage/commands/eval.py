"""`xt eval`: score a checkpoint, or prediction files, on a labelled set."""

from __future__ import annotations

import argparse
import json

from xtimage.errors import ConfigError

ABOUT = """Score a checkpoint, or the files xt predict wrote, on a labelled set. Metrics:
segmentation pooled IoU per class, mIoU, foreground IoU; classification top-1 (top-5), macro
precision/recall/F1; detection box precision/recall/F1 at IoU 0.5; xview3 the official
loc_fscore, loc_fscore_shore, vessel_fscore, fishing_fscore, length_acc and aggregate
(data.params.val_labels=val.csv data.params.shoreline=shoreline/), at the thresholds saved
with the checkpoint. The decision thresholds used are printed with them.
"""

EXAMPLE = """examples:
  xt eval runs/seg/checkpoints/best.safetensors          # the run's own validation set
  xt eval best.safetensors data.kind=folder data.root=labelled/ data.val_fraction=0.99
  xt eval best.safetensors data.val_root=test/ --predictions out/   # score xt predict's files
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="score a checkpoint or prediction files on a labelled set",
        description=ABOUT,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="data.* settings to change")
    p.add_argument("--predictions", metavar="DIR", help="score files written by xt predict")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda...")
    p.add_argument("--amp", default="auto", help="auto, none, bf16, fp16")
    p.add_argument("--channels-last", action="store_true", help="NHWC convolutions (CPU speed)")
    p.add_argument("--lean-memory", action="store_true",
                   help="return freed memory to the system at once: a lower peak, slower")
    p.add_argument("--region-batch", type=int, default=16, help="regions encoded at once")
    p.add_argument("--threshold", type=float, default=0.3, help="detection score threshold")
    p.add_argument("--tta", choices=["none", "flips", "d4"], default=None,
                   help="test-time views to average (default: the model's model.tta)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    other = [o for o in args.overrides if not o.startswith("data.")]
    if other:  # reported before torch is imported
        raise ConfigError(
            f"xt eval takes data.* settings only (the model is the checkpoint's), got {other[0]}"
        )

    from xtimage.allocator import lean_host_memory
    from xtimage.checkpoint import read_checkpoint
    from xtimage.config import load_config
    from xtimage.data.registry import build_datasets
    from xtimage.distributed import cleanup, init_distributed
    from xtimage.predict import Predictor
    from xtimage.runtime import resolve_device

    if args.lean_memory:
        lean_host_memory()

    ckpt = read_checkpoint(args.checkpoint)
    config = load_config(ckpt.config.to_dict(), args.overrides)
    world = init_distributed(resolve_device(args.device).type)
    try:
        predictor = Predictor.from_checkpoint(
            ckpt.path,
            device=args.device,
            region_batch=args.region_batch,
            amp=args.amp,
            channels_last=args.channels_last,
            threshold=args.threshold,
            tta=args.tta,
        )
        val = build_datasets(config).val
        if args.predictions:
            metrics = predictor.score_files(val, args.predictions)
        else:
            metrics = predictor.evaluate(val, world=world, progress=not args.json)
    finally:
        cleanup()
    if not world.main:
        return 0
    metrics["images"] = len(val)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    source = f"predictions in {args.predictions}" if args.predictions else str(ckpt.path)
    print(f"{config.model.head} scores of {source} on {len(val)} image(s):")
    for key, value in metrics.items():
        if isinstance(value, float):
            print(f"  {key:<16} {value:.4f}")
        elif isinstance(value, list):
            print(f"  {key:<16} " + " ".join(f"{v:.4f}" for v in value))
    print("  thresholds       " + ", ".join(f"{k}={v}" for k, v in metrics["thresholds"].items()))
    return 0
