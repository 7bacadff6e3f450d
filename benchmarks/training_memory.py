"""Training memory in exact mode, 1k to 8k: the region encoder's share stays flat.

One exact training step (`Engine.exact_step` + AdamW) per fresh process (`common.measure`)
on square images from `ProceduralReader`; ``mobilenetv3_small_050`` regions of 256 px, 16
at once, Transformer-XL context of width 64. Exact mode keeps every token (and the
context's activations over all of them) but only one chunk of region-encoder activations:
pass 2 re-encodes each chunk with autograd and back-propagates the saved token
gradients. The *encoder share* is measured inside the step, on the real run: the peak of
the live tensor bytes (every storage PyTorch allocates, counted as it lives and dies) of
pass 2 above those alive when it starts. (The resident size is no measure of a phase:
the allocator reuses memory freed by the phase before.) The authors' way (`XT.forward`,
every region in one batch with autograd) is measured beside it on the sizes that fit.

    python benchmarks/training_memory.py           # quick: 1k, 2k, 4k (authors' to 2k)
    python benchmarks/training_memory.py --full    # 1k to 8k, authors' to 4k

Prints a table and writes JSON rows to benchmarks/results/training_memory.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import MIB, STREAMING, machine, measure, print_table
from common import save_rows as save

HERE = Path(__file__)
COMMON = HERE.parent / "common.py"
MODEL = {"backbone": "mobilenetv3_small_050", **STREAMING, "dim": 64}
REGION_BATCH = 16


def case_exact(model: dict, side: int, region_batch: int):
    """One exact step; reports the live tensor peak of pass 2 (encoder with autograd)."""
    import torch

    from common import build_model
    from xtimage.engine import Engine
    from xtimage.engine.planner import _LiveBytes
    from xtimage.io.procedural import ProceduralReader

    net = build_model(**model).train()
    reader = ProceduralReader(side, side)
    engine = Engine(net, region_batch=region_batch)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    pass2 = {}
    backward_tokens = engine._backward_tokens

    def measured_pass2(*args, **kwargs):
        with _LiveBytes() as trace:
            backward_tokens(*args, **kwargs)
        pass2["encoder_mb"] = round(trace.peak / MIB, 1)

    engine._backward_tokens = measured_pass2

    def run() -> dict:
        engine.exact_step([reader], torch.tensor([1]))
        optimizer.step()
        return {"regions": net.plan(side, side).num_regions, **pass2}

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="1k to 8k (slow)")
    args = parser.parse_args()
    sides = [1024, 2048, 4096, 8192] if args.full else [1024, 2048, 4096]
    authors_max = 4096 if args.full else 2048
    from common import build_model
    from xtimage.engine.planner import estimate_memory

    net = build_model(**MODEL)
    rows = []
    for side in sides:
        result = measure(HERE, "case_exact", model=MODEL, side=side, region_batch=REGION_BATCH)
        plan = estimate_memory(net, side, side, region_batch=REGION_BATCH, mode="exact",
                               idle_bytes=0)  # fmt: skip
        row = {
            "bench": "training_memory", "mode": "exact", "method": "xt", "side": side,
            "backbone": MODEL["backbone"], "context": MODEL["context"],
            "region_batch": REGION_BATCH, "regions": result["regions"],
            "tokens": result["regions"] * 64, "peak_mb": result["peak_mb"],
            "encoder_mb": result["encoder_mb"], "total_peak_mb": result["total_peak_mb"],
            "seconds": result["seconds"],
            "regions_per_s": round(result["regions"] / result["seconds"], 1),
            "estimate_mb": round(plan.increase_bytes / MIB, 1), **machine(),
        }  # fmt: skip
        rows.append(row)
        print(f"exact {side}: +{row['peak_mb']:.0f} MiB, encoder pass {row['encoder_mb']:.0f} "
              f"MiB, {row['seconds']:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
        if side <= authors_max:
            result = measure(COMMON, "case_authors", model=MODEL, height=side, width=side,
                             train=True)  # fmt: skip
            rows.append({
                "bench": "training_memory", "mode": "all_at_once", "method": "authors",
                "side": side, "backbone": MODEL["backbone"], "context": MODEL["context"],
                "regions": result["regions"], "tokens": result["regions"] * 64,
                "peak_mb": result["peak_mb"], "total_peak_mb": result["total_peak_mb"],
                "seconds": result["seconds"],
                "regions_per_s": round(result["regions"] / result["seconds"], 1), **machine(),
            })  # fmt: skip
            print(f"authors {side}: +{rows[-1]['peak_mb']:.0f} MiB", file=sys.stderr, flush=True)
    print_table(
        f"Training memory, one step ({MODEL['backbone']}, 256 px regions, XL width 64; MiB "
        f"above the idle process; {machine()['machine']})",
        rows,
        [("method", "method", ""), ("mode", "mode", ""), ("side", "side", "d"),
         ("tokens", "tokens", "d"), ("+MiB", "peak_mb", ".0f"),
         ("encoder live", "encoder_mb", ".0f"), ("estimate", "estimate_mb", ".0f"),
         ("regions/s", "regions_per_s", ".1f")],
    )  # fmt: skip
    enc = [r["encoder_mb"] for r in rows if r["method"] == "xt"]
    print(f"\nencoder share across sides: {min(enc):.0f} to {max(enc):.0f} MiB "
          f"({max(enc) / min(enc):.2f}x) while the tokens grow "
          f"{sides[-1] ** 2 // sides[0] ** 2}x")  # fmt: skip
    save(rows=rows, name="training_memory", key=["method", "mode", "side"])


if __name__ == "__main__":
    main()
