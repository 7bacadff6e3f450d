"""Speed of the pure-PyTorch Mamba layer against one exact attention layer.

The issue's target: forward + backward of a Mamba layer at 16k tokens and width 128 within
2x of a Hyper layer at the same shape. Below HyperAttention's ``min_seq_len`` a Hyper layer
is exact attention, so one pre-norm SDPA attention layer (one head of width 128, as the
xT release's heads) stands in for it; its MLP is left out, which favours attention.

Also timed: the selective scan alone, and a per-token Python loop (the naive scan) where it
is affordable. Each number is the best of ``--repeat`` runs, measured in one process with
the contenders interleaved, so a busy machine slows all of them alike. Peak memory of the
Mamba layer (inference, and forward + backward) is measured in a fresh process per case,
as the rise of the peak resident set over the process after setup.

    python benchmarks/mamba_scan.py --lengths 1024 4096 16384

Prints a table and writes JSON rows to benchmarks/results/mamba_scan.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from xtimage.encoders.context.mamba import MambaBlock
from xtimage.encoders.context.selective_scan import selective_scan

RESULTS = Path(__file__).parent / "results" / "mamba_scan.json"


class AttentionLayer(nn.Module):
    """Pre-norm residual exact attention (the stand-in for a Hyper layer)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.qkv(self.norm(x)).view(B, L, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, L, d) each
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, d)
        return x + self.proj(out.transpose(1, 2).reshape(B, L, D))


def loop_scan(x, dt, A, B, C, D):
    """The naive scan: one Python step per token."""
    h = x.new_zeros(x.shape[0], *A.shape)
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None]
        ys.append((h * C[:, t, None]).sum(-1) + D * x[:, t])
    return torch.stack(ys, dim=1)


def fwd_bwd(fn, inputs) -> float:
    """Seconds for one forward and backward pass."""
    start = time.perf_counter()
    out = fn(*inputs)
    out.sum().backward()
    return time.perf_counter() - start


def peak_memory(length: int, dim: int, d_state: int, backward: bool) -> float:
    """MB the Mamba layer's peak adds, run in a fresh process."""
    cmd = [sys.executable, __file__, "--peak-of", str(length), str(dim), str(d_state)]
    out = subprocess.run(cmd + (["--backward"] if backward else []), capture_output=True)
    return float(out.stdout.decode().strip().splitlines()[-1])


def _measure_peak(length: int, dim: int, d_state: int, backward: bool) -> None:
    """Child process of `peak_memory`: prints the peak rise in MB."""
    torch.set_num_threads(1)
    mamba = MambaBlock(dim, d_state=d_state)
    x = torch.randn(1, length, dim, requires_grad=backward)
    mamba(x[:, :16])[0].sum().backward()  # warm-up: one-time library allocations
    rss = _status_kb("VmRSS")
    with torch.set_grad_enabled(backward):
        out = mamba(x)[0]
        if backward:
            out.sum().backward()
    print((_status_kb("VmHWM") - rss) / 1024)


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmHWM: peak since exec, unlike ru_maxrss)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loop-max", type=int, default=4096, help="longest naive loop run")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--peak-of", type=int, nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--backward", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_of:
        return _measure_peak(*args.peak_of, backward=args.backward)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    dim, inner = args.dim, 2 * args.dim
    mamba = MambaBlock(dim, d_state=args.d_state)
    attention = AttentionLayer(dim, heads=max(1, dim // 128))
    rows = []
    for length in args.lengths:
        x = torch.randn(1, length, dim, requires_grad=True)
        scan_in = [
            torch.randn(1, length, inner),
            torch.rand(1, length, inner) * 0.1,
            -torch.rand(inner, args.d_state) * 16,
            torch.randn(1, length, args.d_state),
            torch.randn(1, length, args.d_state),
            torch.ones(inner),
        ]
        scan_in = [t.requires_grad_() for t in scan_in]
        contenders = {
            "mamba layer": (lambda x: mamba(x)[0], [x]),
            "sdpa attention layer": (attention, [x]),
            "selective scan": (lambda *a: selective_scan(*a)[0], scan_in),
        }
        if length <= args.loop_max:
            contenders["per-token loop scan"] = (loop_scan, scan_in)
        best = {name: float("inf") for name in contenders}
        for _ in range(args.repeat):
            for name, (fn, inputs) in contenders.items():
                best[name] = min(best[name], fwd_bwd(fn, inputs))
        peaks = {
            "mamba layer, fwd+bwd": peak_memory(length, dim, args.d_state, backward=True),
            "mamba layer, inference": peak_memory(length, dim, args.d_state, backward=False),
        }
        for name in [*best, *peaks]:
            seconds = best.get(name)
            rows.append(
                {
                    "benchmark": "mamba_scan",
                    "what": name,
                    "tokens": length,
                    "dim": dim,
                    "d_state": args.d_state,
                    "seconds_fwd_bwd": None if seconds is None else round(seconds, 4),
                    "vs_attention": None
                    if seconds is None
                    else round(seconds / best["sdpa attention layer"], 3),
                    "peak_mb": None if name not in peaks else round(peaks[name], 1),
                    "threads": args.threads,
                    "device": "cpu",
                    "machine": platform.processor() or platform.machine(),
                    "torch": torch.__version__,
                }
            )

    print(f"{'what':<24} {'tokens':>7} {'fwd+bwd s':>10} {'vs attention':>13} {'peak MB':>8}")
    for row in rows:
        cells = [row["seconds_fwd_bwd"], row["vs_attention"], row["peak_mb"]]
        s, v, m = ("-" if c is None else f"{c:.3f}" for c in cells)
        print(f"{row['what']:<24} {row['tokens']:>7} {s:>10} {v:>13} {m:>8}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
