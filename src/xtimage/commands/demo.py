"""`xt demo`: the main job; xT against crop-only and downsample, with a report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

EXAMPLE = """examples:
  xt demo                      # evaluate the shipped models, write report/ (a few minutes)
  xt demo --from-scratch       # retrain all three with the same recipe and sweep first
  xt demo --quick --out /tmp/r # a one-minute smoke run (tiny training, 4 test images)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the built-in demonstration on CPU and write a report",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("report"), help="report folder")
    p.add_argument("--force", action="store_true", help="overwrite an existing report folder")
    p.add_argument("--from-scratch", action="store_true", help="retrain the three models")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (trains from scratch)")
    p.add_argument("--steps", type=int, help="training steps per run (default: the recipe's)")
    p.add_argument("--test-images", type=int, default=48, help="held-out images scored")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xtimage.demo import LABELS, DemoSettings, run_demo

    settings = DemoSettings(
        out=args.out,
        from_scratch=args.from_scratch or args.quick,
        steps=args.steps,
        test_images=args.test_images,
        force=args.force,
    )
    if args.quick:
        settings.steps, settings.lrs, settings.test_images = 3, (2e-3,), 4
        settings.val_images = 2
        settings.overrides = ["train.batch_size=2", "train.warmup=0"]
    start = time.monotonic()
    metrics = run_demo(settings)
    print(f"\n{'model':<12} {'foreground IoU':>15} {'ceiling':>8}")
    for name, m in metrics["models"].items():
        print(f"{LABELS[name]:<12} {m['foreground_iou']:>15.3f} {m['ceiling']:>8.3f}")
    print(f"\nreport: {settings.out / 'index.html'} (and README.md, metrics.json)")
    print(f"weights: {metrics['source']}")
    print(f"total time: {(time.monotonic() - start) / 60:.1f} min")
    return 0
