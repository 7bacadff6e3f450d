"""The memory planner's estimate against the measured peak, on sizes it was not fitted on.

For each run (model, image size, region batch, mode) a fresh process measures the peak
resident memory above the idle process (`common.measure`), and the planner estimates it
(`xtimage.engine.planner.estimate_memory`, the increase only). The planner's two
constants (``OVERHEAD``, ``FACTOR``) are rounded from a least-squares fit (relative errors) on the
runs marked ``fit``, which is printed beside them; the target is that every *other* run,
estimated with the planner's constants, is within 25% of its measured increase.

    python benchmarks/planner_check.py            # quick: a few minutes
    python benchmarks/planner_check.py --full     # more and larger runs (slow)

Prints a table and writes JSON rows to benchmarks/results/planner_check.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import GLOBAL, STREAMING, machine, measure, print_table, save_rows

HERE = Path(__file__).parent
COMMON = HERE / "common.py"

XL = {"backbone": "mobilenetv3_small_050", **STREAMING, "dim": 64}
HYPER = {"backbone": "mobilenetv3_small_050", **GLOBAL, "dim": 64}
MAMBA = {"backbone": "mobilenetv3_small_050", "context": "mamba", "depth": 2, "dim": 64}
ATTO = {"backbone": "convnext_atto", **STREAMING, "dim": 64}

# (model, side, region batch, mode, used for fitting); every run has 4 chunks or more.
QUICK = [
    (XL, 4096, 8, "inference", True),
    (XL, 4096, 32, "inference", True),
    (HYPER, 4096, 64, "inference", True),
    (XL, 1024, 16, "exact", True),
    (XL, 4096, 16, "inference", False),
    (XL, 2048, 24, "inference", False),
    (HYPER, 4096, 16, "inference", False),
    (MAMBA, 4096, 16, "inference", False),
    (XL, 2048, 32, "exact", False),
    (XL, 2048, 16, "streaming", False),
    (ATTO, 2048, 16, "inference", False),
    (ATTO, 1024, 16, "exact", False),
]
FULL = QUICK + [
    (XL, 8192, 64, "inference", False),
    (HYPER, 8192, 16, "inference", False),
    (XL, 4096, 64, "exact", False),
    (HYPER, 2048, 32, "exact", False),
    (ATTO, 4096, 32, "streaming", False),
]


def estimate(model: dict, side: int, region_batch: int, mode: str) -> dict:
    """The planner's estimate of the increase and its parts, MiB."""
    from common import build_model
    from xtimage.engine.planner import estimate_memory

    net = build_model(**model)
    plan = estimate_memory(net, side, side, region_batch=region_batch, mode=mode, idle_bytes=0)
    return {k: v / 2**20 for k, v in plan.breakdown.items()} | {
        "estimate_mb": plan.increase_bytes / 2**20
    }


def fit(rows: list[dict]) -> tuple[float, float]:
    """Least squares on relative errors: (overhead MiB, factor) with measured - fixed =
    overhead + factor * (activations + read-ahead)."""
    import numpy as np

    live = np.array([r["activations"] + r["read_ahead"] for r in rows])
    measured = np.array([r["peak_mb"] for r in rows])
    fixed = np.array([r["gradients"] + r["optimizer"] for r in rows])
    a = np.stack([np.ones_like(live), live], 1) / measured[:, None]
    (overhead, factor), *_ = np.linalg.lstsq(a, (measured - fixed) / measured, rcond=None)
    return float(overhead), float(factor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="more and larger runs (slow)")
    args = parser.parse_args()
    runs = FULL if args.full else QUICK
    rows = []
    for model, side, k, mode, used in runs:
        result = measure(COMMON, "case_engine", model=model, height=side, width=side,
                         region_batch=k, mode=mode)  # fmt: skip
        est = estimate(model, side, k, mode)
        rows.append({
            "bench": "planner_check", "mode": mode, "side": side, "backbone": model["backbone"],
            "context": model["context"], "region_batch": k, "fit": used,
            "peak_mb": result["peak_mb"], "estimate_mb": round(est["estimate_mb"], 1),
            "ratio": round(est["estimate_mb"] / result["peak_mb"], 3),
            "seconds": result["seconds"],
            "regions_per_s": round(result["regions"] / result["seconds"], 1),
            **{k2: round(est[k2], 1) for k2 in ("activations", "read_ahead", "gradients",
                                                 "optimizer", "overhead")},
            **machine(),
        })  # fmt: skip
        print(f"{mode} {side} k={k} {model['context']}: measured {result['peak_mb']:.0f} "
              f"MiB, estimated {est['estimate_mb']:.0f} MiB", flush=True)  # fmt: skip
    overhead, factor = fit([r for r in rows if r["fit"]])
    from xtimage.engine import planner

    print(f"\nfit on the 'fit' runs: OVERHEAD {overhead:.1f} MiB, FACTOR {factor:.3f}; the "
          f"planner uses {planner.OVERHEAD / 2**20:.0f} MiB and {planner.FACTOR:.2f}")  # fmt: skip
    print_table(
        "Planner estimate vs measured peak increase (fresh process, MiB)",
        rows,
        [("mode", "mode", ""), ("side", "side", "d"), ("backbone", "backbone", ""),
         ("context", "context", ""), ("k", "region_batch", "d"), ("fit", "fit", ""),
         ("measured", "peak_mb", ".0f"), ("estimate", "estimate_mb", ".0f"),
         ("est/meas", "ratio", ".2f")],
    )  # fmt: skip
    held = [r for r in rows if not r["fit"]]
    worst = max(abs(r["ratio"] - 1) for r in held)
    print(f"\nheld-out runs: worst error {worst:.0%} (target: within 25%)")
    rows.append({"bench": "planner_check", "mode": "summary", "fit_overhead_mb": round(overhead, 1),
                 "fit_factor": round(factor, 3), "overhead_mb": planner.OVERHEAD / 2**20,
                 "factor": planner.FACTOR, "worst_held_out_error": round(worst, 3),
                 "held_out_runs": len(held), **machine()})  # fmt: skip
    save_rows("planner_check", rows, ["mode", "side", "backbone", "context", "region_batch"])


if __name__ == "__main__":
    main()
