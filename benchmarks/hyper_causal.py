"""Causal HyperAttention against causal exact attention, time, memory and error.

The issue's target (issue 21, part 4): causal `hyper_attention` at least as fast as
``F.scaled_dot_product_attention(q, k, v, is_causal=True)`` at every length, and faster
from 16k tokens. Shape as the issue measured it: batch 1, 2 heads of width 64, float32,
one thread, the release's settings (``lsh_num_projs=7, block_size=256, sample_size=256,
min_seq_len=4096``).

Per length, a fresh process times both, alternated (hyper, SDPA, SDPA, hyper, ...),
best of ``--repeat`` (4x that up to 4k tokens), after one warm-up call of each, in wall
seconds and in the thread's CPU seconds (one thread: steadier than wall time when the
machine is shared, since waiting for a core is not counted); forward
only by default, ``--backward`` adds forward + backward rows. Two more fresh processes
per length measure each one's peak memory (one call; the rise of the peak resident set
over the process with its inputs, ``benchmarks/common.py``). The error is
HyperAttention's relative Frobenius error against exact causal attention on two kinds of
input: i.i.d. Gaussian q, k, v (nearly uniform attention, the worst case for sampling)
and clustered keys with queries near copies of random keys (a few large entries per row,
the case LSH is built for; as in ``tests/encoders/context/test_hyperattention.py``).

    python benchmarks/hyper_causal.py                          # 1k 4k 8k 16k 32k
    python benchmarks/hyper_causal.py --lengths 16384 --backward

Prints a table and merges JSON rows into benchmarks/results/hyper_causal.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from common import machine, measure, print_table, save_rows  # noqa: E402

LENGTHS = [1024, 4096, 8192, 16384, 32768]
SETTINGS = dict(lsh_num_projs=7, block_size=256, sample_size=256, min_seq_len=4096)


def _inputs(length: int, heads: int, dim: int, kind: str = "gaussian", seed: int = 0):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return [torch.randn(1, heads, length, dim, generator=g) for _ in range(3)]
    centres = 4 * F.normalize(torch.randn(16, dim, generator=g), dim=-1)
    shape = (1, heads, length)
    keys = centres[torch.randint(16, shape, generator=g)] + 2 * torch.randn(
        *shape, dim, generator=g
    )
    pick = torch.randint(length, shape, generator=g)
    queries = keys.gather(2, pick[..., None].expand(*shape, dim))
    queries = queries + 0.01 * torch.randn(*shape, dim, generator=g)
    return [queries, keys, torch.randn(*shape, dim, generator=g)]


def _functions(backward: bool):
    import torch
    import torch.nn.functional as F

    from xtimage.encoders.context.hyperattention import hyper_attention

    def hyper(q, k, v):
        gen = torch.Generator().manual_seed(0)
        return hyper_attention(q, k, v, causal=True, generator=gen, **SETTINGS)

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def with_backward(fn):
        def run(q, k, v):
            out = fn(q, k, v)
            out.square().mean().backward()
            return out

        return run

    if backward:
        return {"hyper": with_backward(hyper), "sdpa": with_backward(sdpa)}
    return {"hyper": hyper, "sdpa": sdpa}


def case_time(length: int, heads: int, dim: int, threads: int, repeat: int, backward: bool):
    """Both, alternated, best of ``repeat``; and the error on two kinds of input."""
    import torch

    torch.set_num_threads(threads)
    fns = _functions(backward)
    q, k, v = (x.requires_grad_(backward) for x in _inputs(length, heads, dim))

    def run() -> dict:
        best = {name: float("inf") for name in fns}
        cpu = dict(best)
        for fn in fns.values():  # warm-up
            fn(q, k, v)
        for i in range(repeat):
            for name in ("hyper", "sdpa") if i % 2 == 0 else ("sdpa", "hyper"):
                start, start_cpu = time.perf_counter(), time.thread_time()
                fns[name](q, k, v)
                best[name] = min(best[name], time.perf_counter() - start)
                cpu[name] = min(cpu[name], time.thread_time() - start_cpu)
        errors = {}
        with torch.no_grad():
            for kind in ("gaussian", "clustered"):
                x = _inputs(length, heads, dim, kind, seed=1)
                exact, approx = _functions(False)["sdpa"](*x), _functions(False)["hyper"](*x)
                errors[f"error_{kind}"] = round(float((approx - exact).norm() / exact.norm()), 4)
        return {
            "hyper_s": round(best["hyper"], 4),
            "sdpa_s": round(best["sdpa"], 4),
            "speedup": round(best["sdpa"] / best["hyper"], 2),
            "hyper_cpu_s": round(cpu["hyper"], 4),
            "sdpa_cpu_s": round(cpu["sdpa"], 4),
            "cpu_speedup": round(cpu["sdpa"] / cpu["hyper"], 2),
            **errors,
        }

    return run


def case_memory(method: str, length: int, heads: int, dim: int, threads: int, backward: bool):
    """One call of one of them, for its peak memory."""
    import torch

    torch.set_num_threads(threads)
    fn = _functions(backward)[method]
    q, k, v = (x.requires_grad_(backward) for x in _inputs(length, heads, dim))

    def run() -> dict:
        if backward:
            fn(q, k, v)
        else:
            with torch.no_grad():
                fn(q, k, v)
        return {}

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64, help="head width")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backward", action="store_true", help="also forward + backward")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory processes")
    args = parser.parse_args()

    rows = []
    for backward in (False, True) if args.backward else (False,):
        mode = "fwd+bwd" if backward else "fwd"
        for length in args.lengths:
            shape = dict(length=length, heads=args.heads, dim=args.dim, threads=args.threads)
            repeat = 4 * args.repeat if length <= 4096 else args.repeat  # short: cheap
            timing = measure(HERE, "case_time", repeat=repeat, backward=backward, **shape)
            row = {
                "benchmark": "hyper_causal",
                "mode": mode,
                "tokens": length,
                "heads": args.heads,
                "head_dim": args.dim,
                "dtype": "float32",
                "repeat": repeat,
                "alternated": True,
                **SETTINGS,
                **{key: timing[key] for key in timing if key.startswith(("hyper", "sdpa"))},
                "speedup": timing["speedup"],
                "cpu_speedup": timing["cpu_speedup"],
                "error_gaussian": timing["error_gaussian"],
                "error_clustered": timing["error_clustered"],
                **machine(),
                "threads": args.threads,
            }
            if not args.no_memory:
                for method in ("hyper", "sdpa"):
                    mem = measure(HERE, "case_memory", method=method, backward=backward, **shape)
                    row[f"{method}_peak_mb"] = mem["peak_mb"]
            rows.append(row)
            print(
                f"{mode} {length}: hyper {row['hyper_s']:.3f} s, sdpa {row['sdpa_s']:.3f} s, "
                f"x{row['speedup']}; CPU x{row['cpu_speedup']}",
                flush=True,
            )
    print_table(
        "causal HyperAttention vs causal SDPA (best of alternated runs)",
        rows,
        [
            ("mode", "mode", ""),
            ("tokens", "tokens", ","),
            ("hyper s", "hyper_s", ".3f"),
            ("SDPA s", "sdpa_s", ".3f"),
            ("speed-up", "speedup", ".2f"),
            ("hyper CPU s", "hyper_cpu_s", ".3f"),
            ("SDPA CPU s", "sdpa_cpu_s", ".3f"),
            ("CPU speed-up", "cpu_speedup", ".2f"),
            ("hyper +MiB", "hyper_peak_mb", ".1f"),
            ("SDPA +MiB", "sdpa_peak_mb", ".1f"),
            ("err gauss", "error_gaussian", ".3f"),
            ("err clust", "error_clustered", ".3f"),
        ],
    )
    path = save_rows("hyper_causal", rows, ["mode", "tokens", "heads", "head_dim", "threads"])
    print(f"\nrows merged into {path}")


if __name__ == "__main__":
    main()
