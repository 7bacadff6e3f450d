"""Time of one exact-mode training step against the all-at-once step, same image, same model.

Issue 21's target: exact step / all-at-once step <= 1.5 at 1,024². Both give the full
gradient (tests/engine/test_runner.py); exact mode keeps one chunk of region-encoder
activations instead of the whole image's, and pays for it with a second encode of every
region, unless the batch's regions fit one chunk: then the engine encodes once with
autograd (`Engine._one_pass_step`), which is the all-at-once step with the engine's
bookkeeping around it.

- *all at once*: `XT.forward` on the whole image with autograd, loss, backward, AdamW
  (the xT release's way, as `benchmarks/common.py` emulates it);
- *exact*: `Engine.exact_step` + AdamW, its region batch chosen by the memory planner for
  ``--budget`` (the planner picks, as `xt train` does).

Both read the same image, held in memory as a float tensor (same input accounting). Runs
alternate (exact, all at once, exact, ...) after one warm-up each, in one process, and
each number is the best of ``--repeat``: a busy machine slows both alike.

Models: ``small`` (``mobilenetv3_small_050`` regions of 256 px, 2-layer Transformer-XL of
width 64) and ``swin_t_hyper`` (the paper's preset ``inat_reptilia_swin_t_hyper``:
Swin-V2-T regions of 256 px, 2 Hyper layers of width 768; random weights).

    python benchmarks/exact_step_time.py                       # both models at 1,024²
    python benchmarks/exact_step_time.py --sides 1024 2048 --models small
    python benchmarks/exact_step_time.py --region-batch 8   # two passes: the cost before

Prints a table and writes JSON rows to benchmarks/results/exact_step_time.json.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import STREAMING, _image, build_model, machine, print_table, save_rows

MODELS = {
    "small": {"backbone": "mobilenetv3_small_050", "dim": 64, **STREAMING},
    "swin_t_hyper": {"preset": "inat_reptilia_swin_t_hyper"},
}


def _steps(model: str, side: int, budget: str, region_batch: int | None):
    """(exact step, all-at-once step, region batch, regions) on one model and image; the
    planner picks the region batch unless one is given."""
    from xtimage.engine import Engine
    from xtimage.engine.planner import engine_for_budget

    net = build_model(**MODELS[model]).train()
    image = _image(side, side)  # (1, 3, H, W)
    label = torch.tensor([1])
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    if region_batch is None:
        engine, _ = engine_for_budget(net, side, side, budget, training=True, mode="exact")
    else:
        engine = Engine(net, region_batch=region_batch)

    def exact() -> None:
        optimizer.zero_grad(set_to_none=True)
        engine.exact_step([image[0]], label)
        optimizer.step()

    def all_at_once() -> None:
        optimizer.zero_grad(set_to_none=True)
        net.head.loss(net(image), label).backward()
        optimizer.step()

    return exact, all_at_once, engine.region_batch, net.plan(side, side).num_regions


def _best(fns: dict, repeat: int) -> dict:
    """Best wall seconds of each function, alternated, after one warm-up each."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sides", nargs="+", type=int, default=[1024])
    parser.add_argument("--budget", default="18GB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--region-batch", type=int, default=None,
                        help="instead of the planner's (e.g. below the region count: "
                             "two passes)")  # fmt: skip
    args = parser.parse_args()
    rows = []
    for model in args.models:
        for side in args.sides:
            exact, all_at_once, region_batch, regions = _steps(
                model, side, args.budget, args.region_batch
            )
            best = _best({"exact": exact, "all_at_once": all_at_once}, args.repeat)
            rows.append({
                "model": model, "side": side, "regions": regions,
                "region_batch": region_batch, "budget": args.budget,
                "chosen_by": "planner" if args.region_batch is None else "user",
                "encodes": 1 if regions <= region_batch else 2,
                "exact_s": round(best["exact"], 3),
                "all_at_once_s": round(best["all_at_once"], 3),
                "ratio": round(best["exact"] / best["all_at_once"], 3),
                "repeat": args.repeat, **machine(),
            })  # fmt: skip
            print(rows[-1], flush=True)
    print_table(
        "Exact-mode step against the all-at-once step (best of alternated runs, seconds)",
        rows,
        [
            ("model", "model", ""),
            ("side", "side", ""),
            ("regions", "regions", ""),
            ("region batch", "region_batch", ""),
            ("encodes", "encodes", ""),
            ("exact s", "exact_s", ".2f"),
            ("all at once s", "all_at_once_s", ".2f"),
            ("ratio", "ratio", ".2f"),
        ],
    )
    path = save_rows("exact_step_time", rows, key=("model", "side", "budget", "region_batch"))
    print(f"\nrows written to {path}")


if __name__ == "__main__":
    main()
