"""`xt bench`: run the quick benchmarks in benchmarks/ and print their tables."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from xtimage.errors import ConfigError, InputError

# benchmarks/ of the source checkout this package runs from (absent in a wheel install)
BENCH_DIR = Path(__file__).resolve().parents[3] / "benchmarks"

ABOUT = """Run the benchmarks in benchmarks/ (a source checkout). Each prints its table and
writes JSON rows to benchmarks/results/NAME.json.
"""

EXAMPLE = """examples:
  xt bench --list
  xt bench io_throughput mamba_scan            # --quick sizes
  xt bench context_local_attention --full
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run the quick benchmarks and print their tables",
        description=ABOUT,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--full", action="store_true", help="full size instead of --quick")
    p.set_defaults(func=run)


def discover(root: Path | None = None) -> dict[str, Path]:
    """Benchmark scripts by name: ``benchmarks/*.py`` whose parser has ``"--quick"``."""
    root = root or (BENCH_DIR if BENCH_DIR.is_dir() else Path("benchmarks"))
    if not root.is_dir():
        raise InputError(
            f"{root}: no benchmarks folder; xt bench runs the scripts of a source checkout: "
            "run it from the repository's root"
        )
    return {
        p.stem: p
        for p in sorted(root.glob("*.py"))
        if not p.name.startswith("_") and '"--quick"' in p.read_text()
    }


def _summary(path: Path) -> str:
    """The first line of a script's docstring."""
    parts = path.read_text().split('"""')
    return parts[1].strip().splitlines()[0] if len(parts) > 2 and parts[1].strip() else ""


def run(args: argparse.Namespace) -> int:
    found = discover()
    if args.list:
        for name, path in found.items():
            print(f"{name:<28} {_summary(path)}")
        return 0
    unknown = [n for n in args.names if n not in found]
    if unknown:
        raise ConfigError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(found)}")
    failed = []
    for name in args.names or list(found):
        print(f"== {name}", flush=True)
        command = [sys.executable, str(found[name])] + ([] if args.full else ["--quick"])
        if subprocess.run(command).returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
