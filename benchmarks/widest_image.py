"""Widest image in a 4 GB budget: xT against the whole-image backbone and the authors' way.

Three ways to classify (inference) or to take one AdamW training step on an image, all
with the same region encoder (``mobilenetv3_small_050``):

- *whole image*: the timm backbone on the whole image at once, its own classifier;
- *authors' way*: `XT.forward`, every region in one batch, with autograd when training
  (what the xT release does);
- *xT*: the streaming engine, reading regions from `ProceduralReader`; the memory planner
  picks the region batch for the budget (and, for training, exact mode, else streaming).

Each run is a fresh process (`common.measure`) whose *whole* resident memory must stay
within the budget (4 GB = 4e9 bytes; a watchdog stops a process as soon as it passes).
Widths grow until a method exceeds the budget; the others keep going. xT is run at a
few widths only (it never reaches the budget): up to 200,000 for inference, 100,000 for
training. The image is ``--height`` pixels tall (quick: 4,096, a strip) or square
(``--square``, slow). Whole-image and authors' runs hold the image in memory as float32
(made before the measured step, counted in the total); xT reads it region by region.

    python benchmarks/widest_image.py                 # quick: 4,096-high strips
    python benchmarks/widest_image.py --square        # square images (slow: xT at 100k)

Prints a table and writes JSON rows to benchmarks/results/widest_image.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import STREAMING, machine, measure, print_table, save_rows

COMMON = Path(__file__).parent / "common.py"
BACKBONE = "mobilenetv3_small_050"
MODEL = {"backbone": BACKBONE, **STREAMING, "dim": 64}
WIDTHS = [1024, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152, 65536, 100_000]


def one(method: str, train: bool, height: int, width: int, budget: str, limit_mb: float) -> dict:
    """Measure one method at one size; ``exceeded`` when the watchdog stopped it."""
    start = time.perf_counter()
    if method == "whole":
        result = measure(COMMON, "case_whole", limit_mb, backbone=BACKBONE, height=height,
                         width=width, train=train)  # fmt: skip
    elif method == "authors":
        result = measure(COMMON, "case_authors", limit_mb, model=MODEL, height=height,
                         width=width, train=train)  # fmt: skip
    else:
        result = measure(COMMON, "case_engine", limit_mb, model=MODEL, height=height,
                         width=width, mode="train" if train else "inference",
                         budget=budget)  # fmt: skip
    exceeded = bool(result.get("exceeded")) or result.get("total_peak_mb", 0) > limit_mb
    row = {
        "bench": "widest_image", "mode": "train" if train else "inference", "method": method,
        "side": max(height, width), "height": height, "width": width, "backbone": BACKBONE,
        "context": MODEL["context"] if method != "whole" else None, "budget": budget,
        "fits": not exceeded, "total_peak_mb": result.get("total_peak_mb", result.get("rss_mb")),
        "peak_mb": result.get("peak_mb"), "seconds": result.get("seconds"),
        "xt_mode": result.get("planned_mode"), "region_batch": result.get("planned_region_batch"),
        "estimate_mb": result.get("planned_estimate_mb"), **machine(),
    }  # fmt: skip
    if result.get("regions") and result.get("seconds"):
        row["regions_per_s"] = round(result["regions"] / result["seconds"], 1)
    verdict = "fits" if row["fits"] else "EXCEEDS"
    print(f"{row['mode']:>9} {method:>8} {height}x{width}: {verdict} "
          f"({row['total_peak_mb']} MiB), {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="4GB")
    parser.add_argument("--height", type=int, default=4096, help="strip height (quick)")
    parser.add_argument("--square", action="store_true", help="square images (slow)")
    parser.add_argument("--modes", nargs="*", default=["inference", "train"])
    parser.add_argument("--methods", nargs="*", default=["whole", "authors", "xt"])
    parser.add_argument("--max-width", type=int, default=100_000, help="whole and authors'")
    parser.add_argument("--xt-widths", type=int, nargs="*", default=None,
                        help="widths for xT (default: inference 16384 100000 200000, "
                             "training 16384 100000)")  # fmt: skip
    args = parser.parse_args()
    from xtimage.engine.planner import parse_size

    limit_mb = parse_size(args.budget) / 2**20
    rows = []
    for mode in args.modes:
        train = mode == "train"
        for method in args.methods:
            widths = [w for w in WIDTHS if w <= args.max_width]
            if method == "xt":
                default = [16384, 100_000] + ([] if train else [200_000])
                widths = args.xt_widths or default
            for width in widths:
                height = width if args.square else args.height
                rows.append(one(method, train, height, width, args.budget, limit_mb))
                if not rows[-1]["fits"]:
                    break

    shape = "square" if args.square else f"{args.height} px high"
    print_table(
        f"Widest image within {args.budget} ({shape}; {BACKBONE}; whole process, MiB; "
        f"{machine()['machine']})",
        rows,
        [("mode", "mode", ""), ("method", "method", ""), ("height", "height", "d"),
         ("width", "width", "d"), ("fits", "fits", ""), ("total MiB", "total_peak_mb", ".0f"),
         ("xT mode", "xt_mode", ""), ("k", "region_batch", "d"), ("seconds", "seconds", ".0f")],
    )  # fmt: skip
    print()
    for mode in args.modes:
        widest = {}
        for method in args.methods:
            fitting = [r["width"] for r in rows
                       if r["mode"] == mode and r["method"] == method and r["fits"]]  # fmt: skip
            widest[method] = max(fitting, default=0)
        base = widest.get("whole") or 0
        ratio = f"{widest.get('xt', 0) / base:.1f}x the whole image" if base else "n/a"
        print(f"{mode}: widest that fits: " + ", ".join(f"{m} {w}" for m, w in widest.items())
              + f"; xT {ratio} (target >= 10x)")  # fmt: skip
    save_rows("widest_image", rows, ["mode", "method", "height", "width", "budget"])


if __name__ == "__main__":
    main()
