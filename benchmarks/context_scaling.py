"""Time and peak memory of every context encoder against sequence length.

Each registered encoder among hyper, mamba, xl, windowed (those present when this runs),
and full global attention as the reference: the Hyper encoder with ``min_seq_len`` above
every length, i.e. the same block with exact ``scaled_dot_product_attention``. All at one
CPU-feasible width (default dim 128, 2 heads, depth 1), batch 1, float32.

Every measurement runs in a fresh subprocess: build the encoder, warm up on 1k tokens,
then time forward (under ``no_grad``) or forward + backward at the length; the peak is the
increase of the process's resident set (``VmHWM`` from /proc, reset through
``/proc/self/clear_refs``) over the idle process with model and inputs in memory.

Targets (issue 5): Hyper and Mamba grow near-linearly (time at 64k / time at 8k <= 10)
and at 64k the best of them is >= 5x faster than full attention. Quick mode stops at 16k
and reports the same 8x-length ratio (16k / 2k) and the speed-up at its longest length.

    python benchmarks/context_scaling.py            # 1k..16k
    python benchmarks/context_scaling.py --full     # 1k..64k (minutes to an hour on CPU)
    # the paper's Hyper context in training: causal, checkpointed, lean allocator
    python benchmarks/context_scaling.py --encoders hyper --modes fwd+bwd --dim 768 \
        --heads 6 --depth 2 --threads 2 --causal --checkpoint --lean-memory --lengths 16384

``--causal`` and ``--checkpoint`` set those options of the attention encoders that have
them (Hyper: ``causal``, ``checkpoint``); ``--lean-memory`` runs the child under
`xtimage.allocator.lean_host_memory`. Rows record all three and the peak in floats of
width D a token (``d_floats_per_token``: peak bytes / (tokens x dim x 4)).

Prints a table and merges JSON rows into benchmarks/results/context_scaling.json (a new
row replaces the one of the same encoder, mode, length and width).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "context_scaling.json"
QUICK = [1024, 2048, 4096, 8192, 16384]
FULL = [*QUICK, 32768, 65536]
CANDIDATES = ["hyper", "mamba", "xl", "windowed", "full"]


def configs(dim: int, heads: int, depth: int, causal: bool = False,
            checkpoint: bool = False) -> dict[str, tuple[str, dict]]:  # fmt: skip
    """Benchmark name -> (registry name, constructor arguments)."""
    hyper = dict(dim=dim, depth=depth, heads=heads, causal=causal, checkpoint=checkpoint)
    return {
        "hyper": ("hyper", hyper),
        "full": ("hyper", dict(hyper, min_seq_len=2**40)),
        "mamba": ("mamba", dict(dim=dim, depth=depth)),
        "xl": ("xl", dict(dim=dim, depth=depth, heads=heads)),
        "windowed": ("windowed", dict(dim=dim, depth=depth, heads=heads)),
    }


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(args: argparse.Namespace) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    from xtimage.encoders.context import create_context_encoder

    torch.set_num_threads(args.threads)
    if args.lean_memory:
        from xtimage.allocator import lean_host_memory

        lean_host_memory()
    torch.manual_seed(0)
    setting = configs(args.dim, args.heads, args.depth, args.causal, args.checkpoint)
    registry_name, kwargs = setting[args.one]
    encoder = create_context_encoder(registry_name, **kwargs).train(args.mode == "fwd+bwd")

    def inputs(n: int):
        side = int(n**0.5)
        rows, cols = torch.arange(n) // side, torch.arange(n) % side
        positions = torch.stack([rows, cols], -1)[None]  # (1, N, 2)
        tokens = torch.randn(1, n, args.dim, requires_grad=args.mode == "fwd+bwd")
        return tokens, positions

    def run(tokens, positions) -> None:
        if args.mode == "fwd":
            with torch.no_grad():
                encoder(tokens, positions)
        else:
            out, _ = encoder(tokens, positions)
            out.square().mean().backward()

    run(*inputs(1024))  # warm-up: kernels, allocator
    tokens, positions = inputs(args.length)
    idle = _memory_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    best = float("inf")
    for _ in range(args.repeat):
        encoder.zero_grad(set_to_none=True)
        tokens.grad = None
        start = time.perf_counter()
        run(tokens, positions)
        best = min(best, time.perf_counter() - start)
    peak = _memory_kib("VmHWM") - idle
    return {
        "benchmark": "context_scaling",
        "encoder": args.one,
        "mode": args.mode,
        "tokens": args.length,
        "dim": args.dim,
        "heads": args.heads,
        "depth": args.depth,
        "seconds": round(best, 4),
        "ms_per_1k_tokens": round(1000 * best / (args.length / 1000), 3),
        "peak_mib": round(peak / 1024, 1),
        "d_floats_per_token": round(peak * 1024 / (args.length * args.dim * 4), 1),
        "causal": args.causal,
        "checkpoint": args.checkpoint,
        "allocator": "lean" if args.lean_memory else "glibc default",
        "threads": args.threads,
        "device": "cpu",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


def child(args: argparse.Namespace, name: str, mode: str, length: int) -> dict | None:
    """Run one measurement in a fresh process; None when it fails or times out."""
    repeat = 2 if length <= 4096 else 1
    command = [
        sys.executable, __file__, "--one", name, "--mode", mode, "--length", str(length),
        "--dim", str(args.dim), "--heads", str(args.heads), "--depth", str(args.depth),
        "--threads", str(args.threads), "--repeat", str(repeat),
        *[f"--{flag.replace('_', '-')}" for flag in ("causal", "checkpoint", "lean_memory")
          if getattr(args, flag)],
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        sys.stderr.write(f"{name} {mode} {length}: failed\n{done.stderr[-2000:]}\n")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict]) -> list[str]:
    """Growth over an 8x length span ending at the longest length, and speed-up vs full."""
    lines = []
    for mode in ("fwd", "fwd+bwd"):
        times = {(r["encoder"], r["tokens"]): r["seconds"] for r in rows if r["mode"] == mode}
        longest = max((n for (_, n) in times), default=0)
        if not longest:
            continue
        for name in sorted({e for (e, _) in times}):
            if (name, longest) in times and (name, longest // 8) in times:
                ratio = times[name, longest] / times[name, longest // 8]
                lines.append(f"{mode:<8} {name:<9} t({longest}) / t({longest // 8}) = {ratio:.1f}")
        if ("full", longest) in times:
            for name in ("hyper", "mamba"):
                if (name, longest) in times:
                    speedup = times["full", longest] / times[name, longest]
                    lines.append(
                        f"{mode:<8} {name:<9} {speedup:.1f}x faster than full at {longest}"
                    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="lengths up to 64k (slow)")
    parser.add_argument("--lengths", type=int, nargs="+", help="override the lengths")
    parser.add_argument("--encoders", nargs="+", default=CANDIDATES)
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--causal", action="store_true", help="causal attention encoders")
    parser.add_argument("--checkpoint", action="store_true", help="activation checkpointing")
    parser.add_argument("--lean-memory", action="store_true", help="xtimage.allocator's lean mode")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args)))
        return

    from xtimage.encoders.context import CONTEXT_ENCODERS

    available = {k for k, (registry, _) in configs(1, 1, 1).items() if registry in CONTEXT_ENCODERS}
    names = [name for name in args.encoders if name in available]
    lengths = args.lengths or (FULL if args.full else QUICK)
    rows = []
    print(
        f"{'encoder':<9} {'mode':<8} {'tokens':>7} {'seconds':>9} {'ms/1k tok':>10} {'peak MiB':>9}"
    )
    for mode in args.modes:
        for name in names:
            for length in lengths:
                row = child(args, name, mode, length)
                if row is None:  # too slow or out of memory: longer ones will be too
                    print(f"{name:<9} {mode:<8} {length:>7} {'-':>9}")
                    break
                rows.append(row)
                print(
                    f"{name:<9} {mode:<8} {length:>7} {row['seconds']:>9.3f} "
                    f"{row['ms_per_1k_tokens']:>10.2f} {row['peak_mib']:>9.1f}",
                    flush=True,
                )
    print("\n".join(summarise(rows)))
    save(rows)


def save(rows: list[dict]) -> None:
    """Merge into the results file: a new row replaces the old one of the same setting."""

    def key(row: dict) -> tuple:
        fields = ("encoder", "mode", "tokens", "dim", "heads", "depth")
        options = (row.get("causal", False), row.get("checkpoint", False),
                   row.get("allocator", "glibc default"))  # fmt: skip
        return (*(row[k] for k in fields), *options)

    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    merged = {key(row): row for row in old} | {key(row): row for row in rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(sorted(merged.values(), key=key), indent=1) + "\n")


if __name__ == "__main__":
    main()
