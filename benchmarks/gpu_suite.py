"""The GPU suite: how large an image trains and infers on one GPU, and how fast, in 8 minutes.

One prepared run for a GPU lent for a few minutes. It writes JSON rows to
``benchmarks/results/gpu_suite.json`` (a row replaces an earlier one with its key):

1. *largest* (sections ``train`` and ``infer``): the largest square side that trains (one
   exact step + AdamW; Hyper is a global context encoder, so exact mode) and that infers
   (classify), for three ways of running the paper's Swin-T + Hyper preset
   (``inat_reptilia_swin_t_hyper``: Swin-V2-T regions of 256 px, 2 Hyper layers of width
   768, causal, logits from a CLS token as the release; 284 classes; random weights):

   - ``xt``: the streaming engine, reading the image region by region (``ProceduralReader``),
     ``--region-batch`` regions at once;
   - ``whole``: the preset's backbone on the whole image at once (built for its size), with
     timm's classifier;
   - ``authors``: the preset's model with every region in one batch (``XT.forward``, the
     xT release's way).

   Every probe is a fresh process (`common.measure`) under bf16 autocast, with torch's share
   of the GPU capped at ``--gpu-budget`` (default 40 GB, the paper's A100); a CUDA
   out-of-memory error is "does not fit". Sides double from a start until a probe fails,
   then bisect (multiples of 256 px) to within an eighth, within a time guard: a search
   that runs out of its share of ``--minutes`` stops there and says ``limited_by: "time"``.
   xT rows carry the memory planner's estimate of the same run (``planned_live_mb``, the
   live tensor bytes its dry run traced; ``planned_estimate_mb``) beside the measured
   ``gpu_reserved_peak_mb``, the data to fit the planner's CUDA constants (see
   `xtimage.engine.planner`).
2. *speed*: regions/s of the bare region encoder (regions already on the GPU) against the
   engine with context "none" and no head (reading the same regions from the image in host
   memory), and of the whole preset through the engine (inference, and one exact step).
3. *mamba*: mamba-ssm's fused selective-scan kernel (when it imports) against the
   pure-PyTorch scan at Mamba's width (E = 1536, N = 16, 16k tokens): the largest
   difference of outputs and input gradients, and milliseconds of forward + backward.

Without a visible GPU it refuses with one line and exit status 2. ``--dry-run`` runs the
same code on CPU with a tiny model and tiny sizes (a few seconds a probe) and writes its
rows to a temporary file unless ``--out`` is given.

    python benchmarks/gpu_suite.py                      # on a GPU: all sections, ~7 min
    python benchmarks/gpu_suite.py --dry-run            # on CPU: the same paths, tiny
    python benchmarks/gpu_suite.py --sections train --methods xt whole
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import RESULTS, measure, print_table

HERE = Path(__file__)
COMMON = HERE.parent / "common.py"
PRESET = "inat_reptilia_swin_t_hyper"
NO_GPU = 2  # exit status when no GPU is visible
SECTIONS = ("train", "infer", "speed", "mamba")
METHODS = ("xt", "whole", "authors")
# Shares of the time of each section (what one leaves is spent by the next).
WEIGHTS = {"train": 5, "infer": 2.5, "speed": 1, "mamba": 0.5}
MIN_SECTION_S = 20  # a section with less time left is skipped (a child takes ~10 s to start)


@dataclass
class Settings:
    """Sizes and models of one run: a GPU's, or the tiny CPU dry run's."""

    device: str
    amp: str
    overrides: list[str]  # applied to the preset
    whole_backbone: str
    whole_kwargs: dict
    whole_img_size: bool  # build the whole-image backbone for the image's size (Swin)
    region_batch: int
    quantum: int  # sides are multiples of this (the region side)
    starts: dict  # (method, section) -> first side tried
    cap: int  # largest side tried
    max_probe_s: float
    speed_side: int
    scan: dict  # shapes of the selective-scan comparison
    gpu_budget: int | None = None
    extra: dict = field(default_factory=dict)


def gpu_settings(region_batch: int, gpu_budget: int | None) -> Settings:
    return Settings(
        device="cuda",
        amp="bf16",
        overrides=[],
        whole_backbone="swinv2_tiny_window16_256",
        whole_kwargs={"window_size": 16},
        whole_img_size=True,
        region_batch=region_batch,
        quantum=256,
        # below the limits the planner expects at 40 GB (xT, float32: exact 8k-16k,
        # inference 16k-32k) and the paper's (the baselines near 2,800)
        starts={("xt", "train"): 4096, ("xt", "infer"): 8192,
                ("whole", "train"): 1024, ("whole", "infer"): 2048,
                ("authors", "train"): 1024, ("authors", "infer"): 2048},  # fmt: skip
        cap=131072,
        max_probe_s=150,
        speed_side=8192,
        scan={"length": 16384, "inner": 1536, "d_state": 16},
        gpu_budget=gpu_budget,
    )


def dry_settings() -> Settings:
    """A tiny model of the preset's structure, on CPU (bf16 autocast, as on the GPU)."""
    tiny = {"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}
    return Settings(
        device="cpu",
        amp="bf16",
        overrides=["model.backbone=convnext_atto", f"model.backbone_kwargs={json.dumps(tiny)}",
                   "model.region=64", "model.dim=32",
                   "model.context_kwargs={depth: 1, heads: 2}"],  # fmt: skip
        whole_backbone="convnext_atto",
        whole_kwargs=tiny,
        whole_img_size=False,
        region_batch=4,
        quantum=64,
        starts=dict.fromkeys([(m, s) for m in METHODS for s in ("train", "infer")], 64),
        cap=128,
        max_probe_s=120,
        speed_side=256,
        scan={"length": 256, "inner": 32, "d_state": 4},
    )


# ---------------------------------------------------------------------------- the search


@dataclass
class Search:
    """The outcome of one search for the largest side."""

    largest: int | None  # the largest side that fitted
    first_failing: int | None  # the smallest side that did not (memory or time)
    limited_by: str  # "memory", "time" (a probe or the search ran out of it), "cap", "error"
    probes: list[tuple[int, str]]  # (side, "fits" | "exceeds" | "time" | "error") in order


def largest_side(
    probe: Callable[[int, float], str],
    start: int,
    cap: int,
    quantum: int,
    seconds: float,
    clock: Callable[[], float] = time.monotonic,
) -> Search:
    """The largest multiple of ``quantum`` (up to ``cap``) for which ``probe`` fits.

    Doubles from ``start`` while probes fit, then bisects between the last side that fitted
    and the first that did not until they are within an eighth of the smaller (or one
    ``quantum``). ``probe(side, timeout)`` returns "fits", "exceeds" (out of memory),
    "time" (it ran past ``timeout`` seconds) or "error" (it failed otherwise). The search
    stops when its ``seconds`` are spent; a probe's timeout is what is left of them.
    """
    deadline = clock() + seconds
    lo = hi = None
    probes, limited = [], "cap"
    side = start
    while side is not None:
        left = deadline - clock()
        if left <= 0:
            return Search(lo, hi, "time", probes)
        result = probe(side, left)
        probes.append((side, result))
        if result == "error":  # a failing child says nothing about memory: stop
            return Search(lo, side, "error", probes)
        if result == "fits":
            lo = side
        else:
            hi, limited = side, LIMITS[result]
        side = _next_side(lo, hi, cap, quantum)
    return Search(lo, hi, limited, probes)


def _next_side(lo: int | None, hi: int | None, cap: int, quantum: int) -> int | None:
    """The side to probe next (doubling, halving when the start failed, then bisecting),
    or None when the search is done."""
    if hi is None:
        return None if lo >= cap else min(2 * lo, cap)
    if lo is None:
        return None if hi <= quantum else max(quantum, hi // 2 // quantum * quantum)
    if hi - lo <= max(quantum, lo // 8):
        return None
    return (lo + hi) // 2 // quantum * quantum


LIMITS = {"exceeds": "memory", "time": "time"}


class Clock:
    """Shares the run's time out: a part gets its weight's share of what is left."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def share(self, weight: float, weights_left: float) -> float:
        return max(0.0, (self.deadline - time.monotonic()) * weight / weights_left)


# ---------------------------------------------------------------------------- probes


def probe_kwargs(cfg: Settings, method: str, train: bool, side: int) -> tuple[str, dict]:
    """The `common` case and its arguments of one probe."""
    model = {"preset": PRESET, "overrides": cfg.overrides}
    placed = {"device": cfg.device, "amp": cfg.amp}
    if method == "xt":
        return "case_engine", dict(
            model=model, height=side, width=side, region_batch=cfg.region_batch,
            mode="exact" if train else "inference", estimate=True, **placed,
        )  # fmt: skip
    if method == "whole":
        return "case_whole", dict(
            backbone=cfg.whole_backbone, height=side, width=side, train=train,
            img_size=cfg.whole_img_size, backbone_kwargs=cfg.whole_kwargs, **placed,
        )  # fmt: skip
    return "case_authors", dict(model=model, height=side, width=side, train=train, **placed)


def run_probe(cfg: Settings, method: str, train: bool, side: int, timeout: float) -> dict:
    """One probe in a fresh process: its measurement and ``result`` ("fits", "exceeds",
    "time" or "error")."""
    case, kwargs = probe_kwargs(cfg, method, train, side)
    start = time.monotonic()
    try:
        result = measure(COMMON, case, timeout=min(timeout, cfg.max_probe_s),
                         gpu_limit_bytes=cfg.gpu_budget, **kwargs)  # fmt: skip
        verdict = "exceeds" if result.get("exceeded") else "fits"
    except subprocess.TimeoutExpired:
        result, verdict = {}, "time"
    except RuntimeError as error:  # the child failed: keep going, say why in the row
        result, verdict = {"error": str(error)[-800:]}, "error"
    wall = time.monotonic() - start
    row = {
        "bench": "gpu_suite", "section": "train" if train else "infer", "method": method,
        "side": side, "result": verdict, "wall_s": round(wall, 1), **_where(cfg),
        **{k: v for k, v in result.items() if k != "exceeded"},
    }  # fmt: skip
    if result.get("regions") and result.get("seconds"):
        row["regions_per_s"] = round(result["regions"] / result["seconds"], 1)
    if result.get("planned_live_mb") and "gpu_reserved_peak_mb" in result:
        # the planner's factor as this run measured it (overhead included)
        held = result["gpu_reserved_peak_mb"] - result["gpu_idle_mb"] - result["planned_states_mb"]
        row["reserved_per_live"] = round(held / result["planned_live_mb"], 3)
    print(f"  {row['section']:>5} {method:>7} {side:>6}: {verdict:<7} "
          f"reserved {row.get('gpu_reserved_peak_mb', '-')} MiB, {wall:.0f} s",
          file=sys.stderr, flush=True)  # fmt: skip
    return row


def _where(cfg: Settings) -> dict:
    budget = None if cfg.gpu_budget is None else round(cfg.gpu_budget / 1e9, 1)
    return {"device": cfg.device, "amp": cfg.amp, "gpu_budget_gb": budget,
            "dry_run": cfg.device != "cuda", **cfg.extra}  # fmt: skip


def largest_section(cfg: Settings, section: str, methods, seconds: float) -> list[dict]:
    """The search for each method: its probes' rows and a summary row each. xT goes
    last: its probes take longest, and it gets what the baselines leave of the time."""
    rows = []
    clock = Clock(seconds)
    methods = sorted(methods, key=lambda m: m == "xt")
    for i, method in enumerate(methods):
        found: list[dict] = []

        def probe(side: int, timeout: float, method=method, found=found) -> str:
            found.append(run_probe(cfg, method, section == "train", side, timeout))
            return found[-1]["result"]

        start = cfg.starts[(method, section)]
        search = largest_side(probe, start, cfg.cap, cfg.quantum,
                              clock.share(1, len(methods) - i))  # fmt: skip
        rows += found
        rows.append({
            "bench": "gpu_suite", "section": f"{section}_largest", "method": method,
            "largest_side": search.largest, "first_failing_side": search.first_failing,
            "limited_by": search.limited_by, "probes": len(search.probes), **_where(cfg),
        })  # fmt: skip
    return rows


# ---------------------------------------------------------------------------- child cases
# Run in fresh processes through `common.measure` (speed needs no fresh process, but the
# parent never touches the GPU, so its memory stays torch's alone in every child).


def case_gpu_info(device: str):
    """The device's name and memory, and that a tensor can be made on it."""
    import torch

    def run() -> dict:
        if device != "cuda":
            return {"gpu": None}
        props = torch.cuda.get_device_properties(0)
        torch.ones(1, device="cuda").sum().item()
        return {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 1e9, 1),
                "cuda": torch.version.cuda}  # fmt: skip

    return run


def _best_seconds(fn, repeat: int, device) -> float:
    import torch

    best = math.inf
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def case_speed(overrides: list[str], side: int, region_batch: int, device: str, amp: str,
               repeat: int = 3):  # fmt: skip
    """Regions/s: the bare region encoder, the engine without context and head, the
    preset through the engine (inference and one exact step). Runs alternate; best of
    ``repeat`` each, after a warm-up."""
    import torch

    from common import _image, _placed, build_model
    from engine_overhead import NoHead
    from xtimage.engine import Engine
    from xtimage.runtime import autocast
    from xtimage.tiling import extract_regions

    dev, dtype, scaler = _placed(device, amp)
    model = {"preset": PRESET, "overrides": overrides}
    full = build_model(**model).to(dev)
    crop = [*overrides, "model.baseline=crop", "model.class_pool=mean", "model.release=false"]
    bare = build_model(**{**model, "overrides": crop}).to(dev)
    bare.head = NoHead()
    image = _image(side, side)[0]  # (3, H, W) in host memory
    plan = full.plan(side, side)
    n = plan.num_regions
    batches = [b.to(dev) for b in extract_regions(image[None], plan)[0].split(region_batch)]
    encoder = bare.region_encoder.eval()
    optimizer = torch.optim.AdamW(full.parameters(), lr=1e-4)
    label = torch.tensor([1], device=dev)

    def encoder_only() -> None:
        with torch.no_grad(), autocast(dev, dtype):
            for batch in batches:
                encoder(batch)

    def engine(net):
        e = Engine(net, region_batch=region_batch, device=dev, autocast=dtype, scaler=scaler)
        return lambda: e.classify([image])

    def exact() -> None:
        Engine(full, region_batch=region_batch, device=dev, autocast=dtype,
               scaler=scaler).exact_step([image], label)  # fmt: skip
        optimizer.zero_grad(set_to_none=True)

    def run() -> dict:
        full.eval()
        runs = {"bare encoder (regions on the device)": encoder_only,
                "xT engine, context none, no head": engine(bare.eval()),
                "xT engine, the preset (Hyper, CLS token)": engine(full)}  # fmt: skip
        for fn in runs.values():  # warm-up: kernels chosen, caches filled
            fn()
        best = dict.fromkeys(runs, math.inf)
        for _ in range(repeat):
            for name, fn in runs.items():
                best[name] = min(best[name], _best_seconds(fn, 1, dev))
        full.train()
        exact()
        train_s = _best_seconds(exact, max(1, repeat - 1), dev)
        rates = {name: round(n / s, 1) for name, s in best.items()}
        rates["xT engine, preset, one exact training step"] = round(n / train_s, 1)
        return {"regions": n, "rates": rates}

    return run


def case_mamba(length: int, inner: int, d_state: int, device: str, repeat: int = 3):
    """mamba-ssm's kernel against the pure-PyTorch scan: differences and speed."""
    import torch

    from xtimage.encoders.context.selective_scan import _kernel, selective_scan

    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dev).requires_grad_()

    x, B, C = rand(1, length, inner), rand(1, length, d_state), rand(1, length, d_state)
    dt = torch.nn.functional.softplus(torch.randn(1, length, inner, generator=g) - 4)
    dt = dt.to(dev).requires_grad_()
    A = (-torch.arange(1.0, d_state + 1).repeat(inner, 1)).to(dev).requires_grad_()
    D = torch.ones(inner, device=dev, requires_grad=True)
    inputs = (x, dt, A, B, C, D)
    kernel = _kernel() if dev.type == "cuda" else None
    status = "used" if kernel is not None else (
        "mamba_ssm does not import" if dev.type == "cuda" else "no kernel on CPU")

    def fwd_bwd(use_kernel: bool):
        for t in inputs:
            t.grad = None
        y, _ = selective_scan(*inputs, use_kernel=use_kernel)
        y.sum().backward()
        return y.detach(), [t.grad.clone() for t in inputs]

    def run() -> dict:
        out = {"length": length, "inner": inner, "d_state": d_state, "kernel": status}
        y_ref, g_ref = fwd_bwd(False)
        out["scan_ms"] = round(1e3 * _best_seconds(lambda: fwd_bwd(False), repeat, dev), 2)
        if kernel is not None:
            y_k, g_k = fwd_bwd(True)
            out["kernel_ms"] = round(1e3 * _best_seconds(lambda: fwd_bwd(True), repeat, dev), 2)
            out["speedup"] = round(out["scan_ms"] / out["kernel_ms"], 2)
            out["y_max_rel_diff"] = float((y_k - y_ref).abs().max() / y_ref.abs().max())
            out["grad_max_rel_diff"] = max(
                float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
                for a, b in zip(g_k, g_ref, strict=True)
            )
        return out

    return run


# ---------------------------------------------------------------------------- main


def save(path: Path, rows: list[dict]) -> None:
    """Merge ``rows`` into ``path``: a row replaces the earlier one with its key."""
    key = ("section", "method", "side", "device", "amp", "gpu_budget_gb", "dry_run")
    old = json.loads(path.read_text()) if path.exists() else []
    new = {tuple(r.get(k) for k in key) for r in rows}
    kept = [r for r in old if tuple(r.get(k) for k in key) not in new]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([*kept, *rows], indent=1) + "\n")


def _guarded(script: Path, case: str, timeout: float, **kwargs) -> dict:
    """`measure`, with a failure or a timeout as ``{"error": ...}`` instead of raised."""
    try:
        return measure(script, case, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        return {"error": f"ran past its {timeout:.0f} s"}
    except RuntimeError as error:
        return {"error": str(error)[-800:]}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model and sizes")
    parser.add_argument("--minutes", type=float, default=7.0, help="time guard of the run")
    parser.add_argument("--gpu-budget", default="40GB",
                        help="cap torch's share of the GPU (default: the paper's 40 GB A100; "
                             "'all' for the whole card)")  # fmt: skip
    parser.add_argument("--region-batch", type=int, default=64, help="xT regions at once")
    parser.add_argument("--sections", nargs="*", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--methods", nargs="*", choices=METHODS, default=list(METHODS))
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON rows (default results/gpu_suite.json; dry run: a temp file)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_suite: no CUDA GPU is visible (torch.cuda.is_available() is False); run it "
              "on a GPU machine, or pass --dry-run to run the same code on CPU with tiny sizes",
              file=sys.stderr)  # fmt: skip
        return NO_GPU
    from xtimage.engine.planner import parse_size

    if args.dry_run:
        cfg = dry_settings()
        out = args.out or Path(tempfile.mkdtemp(prefix="gpu_suite_")) / "gpu_suite_dry_run.json"
    else:
        budget = None if args.gpu_budget == "all" else parse_size(args.gpu_budget)
        cfg = gpu_settings(args.region_batch, budget)
        out = args.out or RESULTS / "gpu_suite.json"
    info = _guarded(HERE, "case_gpu_info", timeout=300, device=cfg.device)
    if "error" in info:
        print(f"gpu_suite: the {cfg.device} device did not answer: "
              f"{info['error'].strip().splitlines()[-1]}", file=sys.stderr)  # fmt: skip
        return 1
    cfg.extra = {k: info[k] for k in ("gpu", "gpu_memory_gb", "cuda") if k in info}
    cfg.extra["torch"] = torch.__version__
    print(f"gpu_suite on {info.get('gpu') or 'CPU (dry run)'}: sections {args.sections}, "
          f"{args.minutes:g} min", file=sys.stderr, flush=True)  # fmt: skip
    clock = Clock(60 * args.minutes)
    rows: list[dict] = []
    sections = [s for s in SECTIONS if s in args.sections]
    for i, section in enumerate(sections):
        seconds = clock.share(WEIGHTS[section], sum(WEIGHTS[s] for s in sections[i:]))
        if seconds < MIN_SECTION_S:
            reason = f"{seconds:.0f} s left of --minutes"
            rows.append({"bench": "gpu_suite", "section": section, "method": "skipped",
                         "reason": reason, **_where(cfg)})  # fmt: skip
            print(f"  {section}: skipped, {seconds:.0f} s left", file=sys.stderr)
        elif section in ("train", "infer"):
            rows += largest_section(cfg, section, args.methods, seconds)
        elif section == "speed":
            result = _guarded(HERE, "case_speed", timeout=seconds,
                              overrides=cfg.overrides, side=cfg.speed_side,
                              region_batch=cfg.region_batch, device=cfg.device,
                              amp=cfg.amp)  # fmt: skip
            if "error" in result:
                rows.append({"bench": "gpu_suite", "section": section, "method": "failed",
                             **result, **_where(cfg)})  # fmt: skip
            for run, rate in result.get("rates", {}).items():
                rows.append({"bench": "gpu_suite", "section": "speed", "method": run,
                             "side": cfg.speed_side, "regions": result["regions"],
                             "region_batch": cfg.region_batch, "regions_per_s": rate,
                             **_where(cfg)})  # fmt: skip
        else:
            result = _guarded(HERE, "case_mamba", timeout=seconds, device=cfg.device,
                              **cfg.scan)  # fmt: skip
            rows.append({"bench": "gpu_suite", "section": "mamba", "method": "selective_scan",
                         **{k: v for k, v in result.items() if not k.endswith("_mb")},
                         **_where(cfg)})  # fmt: skip
        save(out, rows)  # after every section: a run cut short keeps what it measured
    report(rows)
    print(f"\nrows written to {out}", file=sys.stderr)
    return 0


def report(rows: list[dict]) -> None:
    summary = [r for r in rows if r["section"].endswith("_largest")]
    if summary:
        print_table("Largest square side (px) that fits", summary,
                    [("section", "section", ""), ("method", "method", ""),
                     ("largest", "largest_side", ""), ("fails at", "first_failing_side", ""),
                     ("limited by", "limited_by", ""), ("probes", "probes", "d")])  # fmt: skip
    probes = [r for r in rows if r["section"] in ("train", "infer")]
    if probes:
        print_table("Probes (GPU memory in MiB: torch's peak above idle, reserved peak)", probes,
                    [("section", "section", ""), ("method", "method", ""), ("side", "side", "d"),
                     ("result", "result", ""), ("+alloc", "gpu_peak_mb", ".0f"),
                     ("reserved", "gpu_reserved_peak_mb", ".0f"),
                     ("planned live", "planned_live_mb", ".0f"),
                     ("per live", "reserved_per_live", ".2f"),
                     ("regions/s", "regions_per_s", ".1f"),
                     ("wall s", "wall_s", ".0f")])  # fmt: skip
    speed = [r for r in rows if r["section"] == "speed"]
    if speed:
        print_table("Regions/s", speed, [("run", "method", ""), ("regions/s", "regions_per_s",
                                                                   ".1f")])  # fmt: skip
    for r in rows:
        if r["section"] == "mamba" and "scan_ms" in r:
            print(f"\nselective scan ({r['length']} tokens, E={r['inner']}, N={r['d_state']}): "
                  f"pure PyTorch {r['scan_ms']} ms fwd+bwd; kernel: {r['kernel']}"
                  + (f", {r['kernel_ms']} ms ({r['speedup']}x), outputs within "
                     f"{r['y_max_rel_diff']:.1e}, gradients within {r['grad_max_rel_diff']:.1e}"
                     if "kernel_ms" in r else ""))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
