"""CLI startup: wall time and imported modules of `xt` paths that run no model.

Each case is a fresh ``python -m xtimage.cli ...`` process (what a user's ``xt`` does),
timed from spawn to exit; the number is the best of ``--repeat`` runs, the cases
alternating so that a busy machine slows all alike. The modules imported are counted in
one more run of the same command with ``-X importtime`` (every module imported once is one
line on stderr), and whether torch was among them.

Cases: ``xt --help``; a misspelled config key (``xt train synthetic_seg train.lrr=1``,
exit 2 with "did you mean"); ``xt info --size 30000x24000`` (a region plan); and, for
reference, ``python -c "import torch"``, the cost those paths no longer pay.
Target: ``xt --help`` and the config error under 1 s on a quiet core.

    python benchmarks/cli_startup.py            # quick: best of 5
    python benchmarks/cli_startup.py --full     # best of 15

Prints a table and writes JSON rows to benchmarks/results/cli_startup.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

from common import print_table, save_rows

CASES = {
    "xt --help": ["-m", "xtimage.cli", "--help"],
    "xt train (config error)": ["-m", "xtimage.cli", "train", "synthetic_seg", "train.lrr=1"],
    "xt info --size": ["-m", "xtimage.cli", "info", "--size", "30000x24000"],
    "import torch (reference)": ["-c", "import torch"],
}


def run_once(args: list[str], importtime: bool = False) -> tuple[float, str]:
    """Seconds from spawn to exit of ``python ARGS``, and its stderr."""
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), *args]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    assert proc.returncode in (0, 2), proc.stderr[-2000:]
    return seconds, proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="best of 5 (default)")
    parser.add_argument("--full", action="store_true", help="best of 15")
    parser.add_argument("--repeat", type=int, help="runs per case")
    args = parser.parse_args()
    repeat = args.repeat or (15 if args.full else 5)

    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(repeat):
        for name, command in CASES.items():
            times[name].append(run_once(command)[0])
    rows = []
    for name, command in CASES.items():
        _, err = run_once(command, importtime=True)
        modules = [line.split("|")[-1].strip() for line in err.splitlines()]
        modules = [m for m in modules[1:] if m] if modules else []  # line 1 is the header
        rows.append(
            {
                "benchmark": "cli_startup",
                "case": name,
                "best_s": round(min(times[name]), 3),
                "median_s": round(sorted(times[name])[len(times[name]) // 2], 3),
                "repeat": repeat,
                "modules": len(modules),
                "torch_imported": any(m == "torch" for m in modules),
                "load": round(os.getloadavg()[0], 2),
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                "python": platform.python_version(),
            }
        )
    print_table(
        f"CLI startup, fresh processes, best of {repeat} (load average {os.getloadavg()[0]:.2f})",
        rows,
        [
            ("case", "case", ""),
            ("best s", "best_s", ".3f"),
            ("median s", "median_s", ".3f"),
            ("modules", "modules", "d"),
            ("torch", "torch_imported", ""),
        ],
    )
    print(f"\nwrote {save_rows('cli_startup', rows, ['case'])}")


if __name__ == "__main__":
    main()
