"""Inference memory against image side: xT with a streamable and with a global context.

Classification of square images through the engine (`Engine.classify`), each in a fresh
process (`common.measure`): peak resident memory above the idle process (imports,
model, file opened). Sides up to 32k are read from tiled TIFFs on disk (deflate, 256 px
tiles, written tile by tile into ``--folder``); 100k comes from `ProceduralReader`
(pixels generated on the fly: a 100k x 100k RGB image is 30 GB). Region encoder
``mobilenetv3_small_050`` at 256 px regions, 32 regions at once, context width 64:

- streaming: Transformer-XL, 2 layers, segment and memory of 256 tokens (streamable: the
  engine keeps nothing that grows with the image);
- global: Hyper (HyperAttention), 1 layer: every token is kept for one global pass, so
  memory grows with the token count; its slope in bytes per token is compared with the
  floor of one float32 copy of the tokens, 4 x width;
- global, pooled: the same with one token per region (``pool=1``), 64x fewer tokens;
- whole image: the same backbone on the whole image at once (timm's classifier, the image
  in memory as float32), for comparison, up to the first side that passes 4 GB in all
  (a watchdog stops the process there).

Targets: streaming increase at 32k within 1.25x of that at 4k; 100k x 100k under 4 GB in
all (``total_peak_mb``). Quick: sides 1k-8k, a 100,000 x 4,096 strip. Full (slow): 1k-32k
and 100k x 100k; the unpooled global context up to 16k (``--global-max 32768`` adds 32k:
1M tokens, 7 GiB in all).
Bytes per token: the slope over sides from 4k.

    python benchmarks/memory_scaling.py            # quick, a few minutes
    python benchmarks/memory_scaling.py --full     # slow (the 100k square: 13 min at 200
                                                   # regions/s, an hour on a busy machine)

Prints a table and writes JSON rows to benchmarks/results/memory_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import (
    GLOBAL,
    RESULTS,
    STREAMING,
    machine,
    measure,
    print_table,
    save_rows,
    write_tiff,
)

COMMON = Path(__file__).parent / "common.py"
BACKBONE = "mobilenetv3_small_050"
MODELS = {
    "streaming": {"backbone": BACKBONE, **STREAMING, "dim": 64},
    "global": {"backbone": BACKBONE, **GLOBAL, "dim": 64},
    "global_pooled": {"backbone": BACKBONE, **GLOBAL, "dim": 64, "pool": 1},
}
BUDGET_MB = 4e9 / 2**20  # "4GB"
METHODS = {  # kind -> the row's "method": one line each in the demo report's memory plot
    "streaming": "xT, streamable context",
    "global": "xT, global context",
    "global_pooled": "xT, global context, 1 token per region",
    "whole": "whole-image backbone",
}


def method(kind: str, height: int, width: int) -> str:
    """The row's ``method``; strips are their own series (their side is not a square's)."""
    return METHODS[kind] + ("" if height == width else f", {height:,} px strip")


def estimate_mb(model: dict, height: int, width: int, region_batch: int) -> float:
    """The planner's estimate of the increase, MiB."""
    from common import build_model
    from xtimage.engine.planner import estimate_memory

    net = build_model(**model)
    plan = estimate_memory(net, height, width, region_batch=region_batch, idle_bytes=0)
    return plan.increase_bytes / 2**20


def run_whole(side: int) -> dict:
    """The whole-image backbone on a square image; ``fits`` False when it passed 4 GB."""
    result = measure(COMMON, "case_whole", BUDGET_MB, backbone=BACKBONE, height=side, width=side)
    fits = not result.get("exceeded") and result["total_peak_mb"] <= BUDGET_MB
    row = {
        "bench": "memory_scaling", "mode": "inference", "side": side, "height": side,
        "width": side, "backbone": BACKBONE, "context": None, "kind": "whole",
        "method": method("whole", side, side), "fits": fits,
        "source": "memory", "regions": None, "tokens": None, "peak_mb": result.get("peak_mb"),
        "total_peak_mb": result.get("total_peak_mb", result.get("rss_mb")),
        "idle_mb": result.get("idle_mb"), "seconds": result.get("seconds"), **machine(),
    }  # fmt: skip
    print(f"{'whole':>14} {side}x{side}: total {row['total_peak_mb']:.0f} MiB"
          + ("" if fits else " (over 4 GB: stopped)"), file=sys.stderr, flush=True)  # fmt: skip
    return row


def run(kind: str, height: int, width: int, source: str, region_batch: int,
        repeat: int = 1) -> dict:  # fmt: skip
    """One row: the median of ``repeat`` fresh-process runs (each run's peak kept too)."""
    model = MODELS[kind]
    start = time.perf_counter()
    runs = [measure(COMMON, "case_engine", model=model, height=height, width=width,
                    region_batch=region_batch, source=source) for _ in range(repeat)]  # fmt: skip
    result = sorted(runs, key=lambda r: r["peak_mb"])[(repeat - 1) // 2]  # the median run
    tokens_per_region = 1 if model.get("pool") == 1 else 64
    row = {
        "bench": "memory_scaling", "mode": "inference", "side": max(height, width),
        "height": height, "width": width, "backbone": model["backbone"],
        "context": model["context"], "kind": kind, "method": method(kind, height, width),
        "dim": model["dim"],
        "pool": model.get("pool"), "region_batch": region_batch,
        "source": "procedural" if source == "procedural" else "tiff",
        "regions": result["regions"], "tokens": result["regions"] * tokens_per_region,
        "peak_mb": result["peak_mb"], "total_peak_mb": result["total_peak_mb"],
        "idle_mb": result["idle_mb"], "seconds": result["seconds"],
        "regions_per_s": round(result["regions"] / result["seconds"], 1),
        "estimate_mb": round(estimate_mb(model, height, width, region_batch), 1),
        "peak_mb_runs": [r["peak_mb"] for r in runs], **machine(),
    }  # fmt: skip
    print(f"{kind:>14} {height}x{width}: +{row['peak_mb']:.0f} MiB (total "
          f"{row['total_peak_mb']:.0f}), {row['regions_per_s']:.0f} regions/s, "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
    return row


def planner_rows(height: int, width: int, region_batch: int) -> list[dict]:
    """The planner's estimates for each xT kind at a size too slow to run here."""
    rows = []
    for kind in MODELS:
        est = estimate_mb(MODELS[kind], height, width, region_batch)
        rows.append({"bench": "memory_scaling_estimate", "mode": "inference", "kind": kind,
                     "side": max(height, width), "height": height, "width": width,
                     "backbone": BACKBONE, "context": MODELS[kind]["context"],
                     "region_batch": region_batch, "estimate_mb": round(est, 1)})  # fmt: skip
        print(f"{kind:>14} {height}x{width}: planner estimate +{est:.0f} MiB", file=sys.stderr)
    return rows


def bytes_per_token(rows: list[dict], kind: str, low: int) -> float | None:
    """Slope (bytes per token) of a least-squares line through (tokens, peak increase)."""
    import numpy as np

    pts = [(r["tokens"], r["peak_mb"] * 2**20) for r in rows
           if r["kind"] == kind and r["side"] >= low and r["height"] == r["width"]]  # fmt: skip
    if len(pts) < 2:
        return None
    x, y = np.array(pts, dtype=float).T
    return float(np.polyfit(x, y, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="1k-32k and 100k x 100k (slow)")
    parser.add_argument("--sides", type=int, nargs="*", help="TIFF sides (default by mode)")
    kinds = [*MODELS, "whole"]
    parser.add_argument("--kinds", nargs="*", default=kinds, choices=kinds)
    parser.add_argument(
        "--big",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="procedural image (quick 4096 100000, full 100000 100000)",
    )
    parser.add_argument("--region-batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1, help="runs per point (median)")
    parser.add_argument("--no-big", action="store_true", help="skip the procedural image")
    parser.add_argument(
        "--global-max",
        type=int,
        default=None,
        help="largest TIFF side, global context (quick 8192, full 16384)",
    )
    parser.add_argument("--folder", default=None, help="where the TIFFs go (a temp dir)")
    parser.add_argument("--estimates", action="store_true",
                        help="only the planner's estimates at 100,000 x 100,000")  # fmt: skip
    args = parser.parse_args()
    if args.estimates:
        rows = planner_rows(100_000, 100_000, args.region_batch)
        save_rows("memory_scaling", rows, ["bench", "kind", "height", "width", "region_batch"])
        return
    sides = args.sides or ([1024, 2048, 4096, 8192, 16384, 32768] if args.full
                           else [1024, 2048, 4096, 8192])  # fmt: skip
    big = args.big or ((100_000, 100_000) if args.full else (4096, 100_000))
    global_max = args.global_max or (16384 if args.full else 8192)
    k = args.region_batch

    rows = []
    if "whole" in args.kinds:
        for side in [1024, 2048, 4096, 6144, 8192, 12288, 16384]:
            rows.append(run_whole(side))
            if not rows[-1]["fits"]:
                break
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        for side in sides:
            path = write_tiff(Path(folder) / f"{side}.tif", side)
            for kind in args.kinds:
                if kind == "whole" or kind == "global" and side > global_max:
                    continue
                rows.append(run(kind, side, side, str(path), k, args.repeat))
            path.unlink()
    for kind in [] if args.no_big else args.kinds:
        if kind in MODELS and kind != "global":  # unpooled, a 100k image's tokens do not fit
            rows.append(run(kind, *big, "procedural", k, args.repeat))

    save_rows("memory_scaling", rows, ["bench", "kind", "height", "width", "region_batch"])
    merged = json.loads((RESULTS / "memory_scaling.json").read_text())  # earlier runs too
    low = 4096  # the fit starts at 4k (quick: 4k and 8k; full: up to 16k)
    slope = bytes_per_token([r for r in merged if r.get("tokens")], "global", low)
    print_table(
        f"Inference memory against side ({BACKBONE}, 256 px regions, {k} at once, width 64; "
        f"MiB above the idle process; {machine()['machine']})",
        rows,
        [("kind", "kind", ""), ("height", "height", "d"), ("width", "width", "d"),
         ("tokens", "tokens", "d"), ("source", "source", ""), ("+MiB", "peak_mb", ".0f"),
         ("estimate", "estimate_mb", ".0f"), ("total MiB", "total_peak_mb", ".0f"),
         ("fits", "fits", ""),
         ("regions/s", "regions_per_s", ".0f")],
    )  # fmt: skip
    stream = {r["side"]: r["peak_mb"] for r in merged if r.get("kind") == "streaming"
              and r.get("tokens") and r["height"] == r["width"]}  # fmt: skip
    top = max(s for s in stream if s <= 32768)
    if 4096 in stream:
        ratio = stream[top] / stream[4096]
        print(f"\nstreaming: increase at {top} / at 4096 = {ratio:.2f} (target <= 1.25)")
    for r in rows:
        if r["source"] == "procedural":
            verdict = "under" if r["total_peak_mb"] < BUDGET_MB else "OVER"
            print(f"{r['kind']} {r['height']} x {r['width']}: total {r['total_peak_mb']:.0f} MiB,"
                  f" {verdict} 4 GB ({BUDGET_MB:.0f} MiB)")  # fmt: skip
    if slope is not None:
        print(f"global: {slope:.0f} bytes per token (fit over sides >= {low}); floor 4 x width "
              f"= {4 * 64} bytes; {slope / 256:.1f}x the floor")  # fmt: skip
        sides = sorted({r["side"] for r in merged if r.get("kind") == "global" and r.get("tokens")
                        and r["side"] >= low})  # fmt: skip
        summary = {"bench": "memory_scaling_bytes_per_token", "mode": "inference",
                   "kind": "global", "context": "hyper", "backbone": BACKBONE, "dim": 64,
                   "bytes_per_token": round(slope, 1), "floor_bytes_per_token": 256,
                   "fit_sides": sides, **machine()}  # fmt: skip
        save_rows("memory_scaling", [summary], ["bench"])


if __name__ == "__main__":
    main()
