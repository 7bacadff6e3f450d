"""Cost of the Transformer-XL and windowed context encoders: ms per 1k tokens and peak memory.

Each configuration runs in a fresh process (``--worker``) so that its peak resident memory
is its own: the increase of ``ru_maxrss`` over the process after the model and the
inputs are built. Inference only (``torch.inference_mode``), batch 1, tokens on a square
grid in raster order. "dense" is the same XL model with one segment of the whole
sequence and no memory: exact global attention with the same bias, the O(N^2) baseline.
"streamed" rows feed ``--chunk`` tokens a call, carrying the state (the engine's way).

    python benchmarks/context_local_attention.py --lengths 4096 16384

Prints a table and writes JSON rows to benchmarks/results/context_local_attention.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from xtimage.encoders.context import create_context_encoder

RESULTS = Path(__file__).parent / "results" / "context_local_attention.json"
DENSE_MAX = 8192  # the dense baseline's N^2 mask would not fit much beyond this


def configs(args: argparse.Namespace, n: int) -> dict[str, tuple[str, dict, int]]:
    """Row name -> (registry name, keyword arguments, tokens a call)."""
    shape = dict(dim=args.dim, depth=args.depth, heads=args.heads)
    xl = dict(shape, segment_len=args.segment, mem_len=args.memory)
    window = dict(shape, window=args.window)
    rows = {
        "xl": ("xl", xl, n),
        "xl streamed": ("xl", xl, args.chunk),
        "windowed": ("windowed", window, n),
        "windowed +1 global": ("windowed", dict(window, num_global=1), n),
        "windowed causal streamed": ("windowed", dict(window, causal=True), args.chunk),
    }
    if n <= DENSE_MAX:
        rows["dense (global attention)"] = ("xl", dict(shape, segment_len=n, mem_len=0), n)
    return rows


def worker(name: str, kwargs: dict, n: int, chunk: int, repeat: int) -> dict:
    """Best-of-``repeat`` time and peak memory increase of one configuration."""
    torch.manual_seed(0)
    encoder = create_context_encoder(name, **kwargs).eval()
    side = int(n**0.5) + 1
    grid = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    positions = torch.stack(grid, dim=-1).reshape(-1, 2)[:n][None]  # (1, n, 2)
    tokens = torch.randn(1, n, kwargs["dim"])  # (1, n, D)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeat):
            start, state = time.perf_counter(), None
            for a in range(0, n, chunk):
                piece = slice(a, a + chunk)
                _, state = encoder(tokens[:, piece], positions[:, piece], None, state)
            best = min(best, time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base  # KiB on Linux
    return {"ms_per_1k_tokens": round(best * 1e6 / n, 1), "peak_mib": round(peak / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--segment", type=int, default=256)
    parser.add_argument("--memory", type=int, default=256)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=2048, help="tokens a call when streamed")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.worker:
        name, kwargs, n, chunk = json.loads(args.worker)
        print(json.dumps(worker(name, kwargs, n, chunk, args.repeat)))
        return

    print(f"{'what':<26} {'tokens':>7} {'a call':>7} {'ms/1k tok':>9} {'peak MiB':>9}")
    rows = []
    for n in args.lengths:
        for row, (name, kwargs, chunk) in configs(args, n).items():
            job = json.dumps([name, kwargs, n, chunk])
            command = [sys.executable, __file__, "--worker", job]
            command += ["--threads", str(args.threads), "--repeat", str(args.repeat)]
            result = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
            rows.append(
                {
                    "benchmark": "context_local_attention",
                    "what": row,
                    "tokens": n,
                    "tokens_per_call": min(chunk, n),
                    **kwargs,
                    **result,
                    "threads": args.threads,
                    "device": "cpu",
                    "machine": platform.processor() or platform.machine(),
                    "torch": torch.__version__,
                }
            )
            r = rows[-1]
            print(
                f"{row:<26} {n:>7} {r['tokens_per_call']:>7} "
                f"{r['ms_per_1k_tokens']:>9.1f} {r['peak_mib']:>9.1f}",
                flush=True,
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
