"""CPU speed: the region encoder's achieved FLOP/s against this CPU's peak, per CPU option.

- *Peak*: the best GFLOP/s of large square matrix products (``torch.mm``, n = 2,048 to
  4,096 in float32 through MKL, 4,096 to 8,192 in bfloat16 through oneDNN, which uses
  AMX where the CPU has it), best of ``--repeat``, at 1 and 2 threads: what this CPU
  sustains on the densest work there is, not a datasheet figure.
- *Achieved*: `xtimage.encoders.region.RegionEncoder` as xT builds it (256 px regions,
  all feature maps) on random regions, inference (``torch.inference_mode``) or training
  (forward and backward of the maps' mean, no optimizer), FLOPs per region counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on the same input (matrix products,
  convolutions and attention, 2 per multiply-add; elementwise work is not counted; the
  weight gradient of a grouped convolution corrected, see `conv_backward_flop`), divided
  by the measured seconds per region, and by the peak of the run's dtype and threads.
- *Variants*: float32 (the default), ``channels_last`` (`xtimage.runtime.to_channels_last`,
  the regions NCHW as the engine hands them), bf16 autocast, both, one
  thread, region batches 1, 4 and 32 (inference) against 16, and ``torch.compile``
  (float32 and bf16; its compile time, the first call on a cold cache, reported apart).
  Every timing encodes the same regions (16, or the batch when larger); variants
  alternate and each keeps its best of ``--repeat``. Inter-op threads (1 against the
  default) are measured in fresh processes, alternated, since they can be set only once.

Backbones: the paper's Swin-T (``swinv2_tiny_window16_256``), ConvNeXt-T and the demo's
``mobilenetv3_small_050``.

    python benchmarks/cpu_speed.py --quick   # mobilenet, few variants, no compile: ~1 min
    python benchmarks/cpu_speed.py           # all: ~1 h on 2 cores
    python benchmarks/cpu_speed.py --backbones convnext_tiny --no-compile

Prints tables and merges JSON rows into benchmarks/results/cpu_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from common import machine, print_table, save_rows

BACKBONES = ("swinv2_tiny_window16_256", "convnext_tiny", "mobilenetv3_small_050")
REGION = 256
REGIONS = 16  # regions per timing (or the batch, when larger)
PEAK_SIZES = {torch.float32: (2048, 4096), torch.bfloat16: (4096, 8192)}


@dataclass(frozen=True)
class Variant:
    """One way of running the encoder."""

    name: str
    threads: int = 2
    batch: int = 16
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False


BASE = Variant("float32")


def variants(mode: str, quick: bool, compile: bool) -> list[Variant]:
    """The contenders of one backbone and mode: the base and one change at a time."""
    found = [
        BASE,
        replace(BASE, name="channels_last", channels_last=True),
        replace(BASE, name="bf16", bf16=True),
        replace(BASE, name="channels_last+bf16", channels_last=True, bf16=True),
    ]
    if quick:
        return found
    found += [
        replace(BASE, name="1 thread", threads=1),
        replace(BASE, name="bf16, 1 thread", bf16=True, threads=1),
        replace(BASE, name="batch 1", batch=1),
        replace(BASE, name="batch 4", batch=4),
    ]
    if mode == "inference":  # training at 32 Swin regions needs ~7 GB: not on a shared box
        found.append(replace(BASE, name="batch 32", batch=32))
    if compile:
        found += [
            replace(BASE, name="compile", compile=True),
            replace(BASE, name="compile+bf16", compile=True, bf16=True),
        ]
    return found


# ---------------------------------------------------------------------------- peak


def gemm_gflops(dtype: torch.dtype, n: int, threads: int) -> float:
    """GFLOP/s of one n x n x n ``torch.mm`` in ``dtype`` on ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up: the library's first call sets up its kernels
    start = time.perf_counter()
    torch.mm(a, b)
    return 2 * n**3 / (time.perf_counter() - start) / 1e9


def peaks(dtypes: list[torch.dtype], repeat: int, quick: bool) -> list[dict]:
    """The best GEMM GFLOP/s per dtype and thread count (sizes alternate)."""
    rows = []
    for dtype in dtypes:
        sizes = PEAK_SIZES[dtype][:1] if quick else PEAK_SIZES[dtype]
        for threads in (1, 2):
            best = {n: 0.0 for n in sizes}
            for _ in range(repeat):
                for n in sizes:
                    best[n] = max(best[n], gemm_gflops(dtype, n, threads))
            n = max(best, key=best.get)
            rows.append({"backbone": "gemm", "mode": "peak", "variant": _dtype_name(dtype),
                         "threads": threads, "gemm_n": n, "gflops": round(best[n], 1),
                         "repeat": repeat})  # fmt: skip
    return rows


def native_bf16() -> dict:
    """Whether this CPU has bfloat16 instructions (elsewhere oneDNN emulates them)."""
    cpu = torch.cpu
    return {"avx512_bf16": getattr(cpu, "_is_avx512_bf16_supported", bool)(),
            "amx": getattr(cpu, "_is_amx_tile_supported", bool)()}  # fmt: skip


def _dtype_name(dtype: torch.dtype) -> str:
    return "bf16" if dtype == torch.bfloat16 else "float32"


# ---------------------------------------------------------------------------- encoder


def build_encoder(backbone: str, training: bool) -> torch.nn.Module:
    """The region encoder as xT builds it: 256 px regions, every feature map."""
    from xtimage.encoders.region import RegionEncoder

    torch.manual_seed(0)
    return RegionEncoder(backbone, region=REGION).train(training)


def _loss(maps: list[torch.Tensor]) -> torch.Tensor:
    return sum(m.float().mean() for m in maps)


def conv_backward_flop(
    grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
    output_padding, groups, output_mask, **kwargs,
) -> int:  # fmt: skip
    """A convolution's backward: its forward's FLOPs once per gradient asked for (input,
    weight). torch 2.14's own formula counts a grouped convolution's weight gradient as if
    it were ungrouped (a depthwise one 64-960x too high)."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def flop_per_region(encoder: torch.nn.Module, training: bool) -> float:
    """FLOPs of one region (forward, or forward and backward), counted on two."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 3, REGION, REGION)
    fix = {torch.ops.aten.convolution_backward: conv_backward_flop}
    counter = FlopCounterMode(display=False, custom_mapping=fix)
    with counter:
        if training:
            _loss(encoder(x)).backward()
        else:
            with torch.inference_mode():
                encoder(x)
    encoder.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def runner(encoder: torch.nn.Module, variant: Variant, training: bool) -> Callable[[], None]:
    """A function that encodes `REGIONS` regions (or one batch, when larger) as
    ``variant`` says, on its own copy of ``encoder``."""
    from xtimage.runtime import to_channels_last

    model = copy.deepcopy(encoder)
    if variant.channels_last:  # xtimage's option: the weights NHWC, the regions as they come
        model = to_channels_last(model)
    if variant.compile:
        model = torch.compile(model)
    calls = max(1, REGIONS // variant.batch)
    x = torch.randn(variant.batch, 3, REGION, REGION)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.bf16)

    def run() -> None:
        torch.set_num_threads(variant.threads)
        for _ in range(calls):
            if training:
                with amp:
                    maps = model(x)
                _loss(maps).backward()
            else:
                with torch.inference_mode(), amp:
                    model(x)
        if training:
            model.zero_grad(set_to_none=True)

    return run


def _seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_group(backbone: str, mode: str, found: list[Variant], repeat: int) -> list[dict]:
    """Seconds per region of each variant, alternated, best of ``repeat``; a warm-up call
    first (a compiled variant's is its compile time)."""
    training = mode == "training"
    torch._dynamo.reset()  # a fresh compile cache per group: no recompile limit reached
    encoder = build_encoder(backbone, training)
    flop = flop_per_region(encoder, training)
    runs, rows = {}, {}
    for v in found:
        runs[v] = runner(encoder, v, training)
        warm = _seconds(runs[v])
        rows[v] = {"compile_s": round(warm, 1)} if v.compile else {}
    best = {v: float("inf") for v in found}
    for _ in range(repeat):
        for v in found:
            regions = max(REGIONS, v.batch)
            best[v] = min(best[v], _seconds(runs[v]) / regions)
    out = []
    for v in found:
        row = {"backbone": backbone, "mode": mode, "variant": v.name, **asdict(v),
               "interop": torch.get_num_interop_threads()}  # fmt: skip
        del row["name"]
        row.update(s_per_region=round(best[v], 4), gflop_per_region=round(flop / 1e9, 3),
                   gflops=round(flop / best[v] / 1e9, 1), speedup=round(best[BASE] / best[v], 2),
                   repeat=repeat, regions=max(REGIONS, v.batch), **rows[v])  # fmt: skip
        out.append(row)
    return out


# ---------------------------------------------------------------------------- inter-op


def interop_child(backbone: str, mode: str, interop: int) -> None:
    """Print the base variant's seconds per region with ``interop`` inter-op threads."""
    torch.set_num_interop_threads(interop)
    training = mode == "training"
    run = runner(build_encoder(backbone, training), BASE, training)
    run()
    print(json.dumps({"s_per_region": _seconds(run) / REGIONS}))


def measure_interop(backbone: str, mode: str, repeat: int, flop: float) -> list[dict]:
    """The base variant with 1 inter-op thread against the default, fresh processes
    alternated, best of ``repeat``."""
    default = os.cpu_count() or 1
    best = {1: float("inf"), default: float("inf")}
    for _ in range(repeat):
        for interop in best:
            cmd = [sys.executable, __file__, "--interop-child", backbone, mode, str(interop)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            seconds = json.loads(proc.stdout.splitlines()[-1])["s_per_region"]
            best[interop] = min(best[interop], seconds)
    return [
        {"backbone": backbone, "mode": mode, "variant": f"interop {n}", **asdict(BASE),
         "interop": n, "s_per_region": round(s, 4), "gflop_per_region": round(flop / 1e9, 3),
         "gflops": round(flop / s / 1e9, 1), "repeat": repeat, "regions": REGIONS}
        for n, s in best.items()
    ]  # fmt: skip


# ---------------------------------------------------------------------------- main


def with_fractions(rows: list[dict], peak_rows: list[dict]) -> None:
    """Add each row's fraction of the float32 peak and of its own dtype's peak (at its
    thread count)."""
    peak = {(r["variant"], r["threads"]): r["gflops"] for r in peak_rows}
    for row in rows:
        fp32 = peak[("float32", row["threads"])]
        own = peak.get(("bf16" if row.get("bf16") else "float32", row["threads"]), fp32)
        row["fraction_of_fp32_peak"] = round(row["gflops"] / fp32, 3)
        row["fraction_of_own_peak"] = round(row["gflops"] / own, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="mobilenet, 4 variants, no compile")
    parser.add_argument("--backbones", nargs="*", default=None, help=f"default {BACKBONES}")
    parser.add_argument("--modes", nargs="*", default=["inference", "training"])
    parser.add_argument("--repeat", type=int, default=None, help="best of (quick 2, full 3)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--interop-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.interop_child:
        backbone, mode, interop = args.interop_child
        interop_child(backbone, mode, int(interop))
        return
    backbones = args.backbones or (["mobilenetv3_small_050"] if args.quick else list(BACKBONES))
    repeat = args.repeat or (2 if args.quick else 3)
    peak_rows = peaks([torch.float32, torch.bfloat16], repeat, args.quick)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # compile times are cold-cache times
        for backbone in backbones:
            for mode in args.modes:
                found = variants(mode, args.quick, not args.no_compile)
                group = measure_group(backbone, mode, found, repeat)
                if not args.quick:
                    flop = group[0]["gflop_per_region"] * 1e9
                    group += measure_interop(backbone, mode, repeat, flop)
                with_fractions(group, peak_rows)
                rows += group
                print_table(
                    f"{backbone}, {mode}, {REGION} px regions, best of {repeat}",
                    group,
                    [("variant", "variant", ""), ("s/region", "s_per_region", ".4f"),
                     ("GFLOP/reg", "gflop_per_region", ".2f"), ("GFLOP/s", "gflops", ".1f"),
                     ("of fp32 peak", "fraction_of_fp32_peak", ".3f"),
                     ("of own peak", "fraction_of_own_peak", ".3f"),
                     ("speedup", "speedup", ".2f"), ("compile s", "compile_s", ".0f")],
                )  # fmt: skip
    print_table(
        f"Peak: best n x n matrix product, best of {repeat} ({machine()['machine']})",
        peak_rows,
        [("dtype", "variant", ""), ("threads", "threads", "d"), ("n", "gemm_n", "d"),
         ("GFLOP/s", "gflops", ".1f")],
    )  # fmt: skip
    info = {"machine": machine()["machine"], "torch": torch.__version__, "quick": args.quick,
            **native_bf16()}  # fmt: skip
    save_rows("cpu_speed", [{**r, **info} for r in peak_rows + rows],
              ["backbone", "mode", "variant", "threads", "quick"])  # fmt: skip


if __name__ == "__main__":
    main()
