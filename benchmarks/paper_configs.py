"""The paper's configurations through the engine, beside the whole-image backbone, xtimage's
emulation of the release and the xT release itself: memory, seconds, the planner's choice.

Issue 21, item 1. Four of the paper's presets, with random weights (``model.pretrained=null``):
Swin-V2-T regions (256 px) with a Transformer-XL, Hyper or Mamba context of width 768, and
Hiera-B regions (224 px) with Hyper. For each, inference (classify) and one training step
(AdamW), on square images of side 1,024, 2,048, 4,096 and doubling while a run fits the
budget (``--budget``, the whole process, 18 GB) and the time guard (``--minutes``). The
systems, alternated in every round (xT, whole, emulation, release, xT, ...) so that a busy
machine slows all of them alike:

- ``xt``: xtimage's engine, reading the image region by region from the procedural source;
  the memory planner picks the region batch and the training mode (exact, else streaming)
  for the budget; its estimate is recorded beside the measured peak;
- ``xt_1gb`` (inference): the same, with the planner given the built model plus 1 GiB
  (issue 21's inference target) as its budget;
- ``whole``: the preset's backbone on the whole image at once (built for its size), with
  timm's classifier;
- ``emulation``: xtimage's `XT.forward` with every region in one batch: xtimage's emulation
  of the release's way, not the release's code;
- ``release``: the xT release's own code (``release_xt.py``), from ``--release-checkout``
  under ``--release-python``. Without them its rows are skipped, with one line saying so;
  so are configurations the release cannot run (it has no Transformer-XL classifier, and
  its Mamba imports mamba_ssm, whose kernels need CUDA).

``--lean-memory`` runs every system, the release too, under glibc's fixed mmap threshold
(`xtimage.allocator`; the rows say ``allocator``). Every run is a fresh process
(`common.measure`), stopped by a watchdog past the budget, or past the memory this machine
has available when that is less (the row says which). A row
(config, side, task, system) holds the peak increase over the idle process (the built
model; for whole, emulation and release also the image, which they hold in memory), the
best seconds of ``repeat`` runs and regions/s, a training step's gradient kind (exact, full,
streaming-truncated) and how its input is counted. ``limited_by`` on a system's largest
side that fitted says why it went no further: "budget", "memory available", "time" (the
next side, predicted at the area's ratio times this side's seconds, would not fit the time
left), "error" or "max side".

    python benchmarks/paper_configs.py --release-checkout /work/release/xT \\
        --release-python /work/release/venv/bin/python
    python benchmarks/paper_configs.py --configs inat_reptilia_swin_t_hyper --minutes 60
    python benchmarks/paper_configs.py --dry-run     # a tiny model and sizes, a minute

Prints a table and writes JSON rows to benchmarks/results/paper_configs.json (a dry run:
to a temporary folder unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import MIB, machine, measure, print_table, save_rows
from xtimage.allocator import LEAN_THRESHOLD, THRESHOLD_VARIABLE

HERE = Path(__file__)
COMMON = HERE.parent / "common.py"
RELEASE = HERE.parent / "release_xt.py"
# preset -> the release's config file for it, or why the release cannot run it here
CONFIGS = {
    "inat_reptilia_swin_t_xl": (None, "the release has no Transformer-XL classifier config"),
    "inat_reptilia_swin_t_hyper": ("config/swin-t/swin_v2_tiny_1e-4_hyper_512_256.yaml", None),
    "inat_reptilia_swin_t_mamba": (None, "the release's Mamba context imports mamba_ssm, "
                                   "whose selective scan needs CUDA"),
    "inat_reptilia_hiera_b_hyper": ("config/hiera/hiera_base_1e-4_hyper_448_224.yaml", None),
}  # fmt: skip
SYSTEMS = ("xt", "xt_1gb", "whole", "emulation", "release")
LABELS = {
    "xt": "xT (xtimage engine)",
    "xt_1gb": "xT, planned for model + 1 GiB",
    "whole": "whole-image backbone",
    "emulation": "xtimage's emulation of the release (XT.forward, all regions at once)",
    "release": "the xT release's code",
}
INPUT = {
    "xt": "read region by region from the procedural source during the run (in the increase)",
    "held": "image in memory as float32, made before the run (in the idle process and "
            "the total, not in the increase)",
}  # fmt: skip
KEY = ["config", "side", "task", "system", "allocator"]  # a row replaces the one of its key
TASK_WEIGHT = {"inference": 1, "train": 2}  # shares of the time guard
HEADROOM_MB = 1024  # left to the machine's other users when memory is short
# the dry run: the presets' structure at a tiny size (the whole-image backbone follows)
TINY = ["model.backbone=convnext_atto",
        "model.backbone_kwargs={depths: [1, 1, 1, 1], dims: [8, 8, 16, 16]}",
        "model.region=64", "model.dim=32", "model.context_kwargs.depth=1"]  # fmt: skip


def tiny(config: str) -> list[str]:
    """The dry run's overrides of ``config``: `TINY`, and 2 heads where it has heads."""
    from xtimage.config import load_config

    heads = "heads" in load_config(config).model.context_kwargs
    return TINY + ["model.context_kwargs.heads=2"] * heads


# ---------------------------------------------------------------------------- growth


def grow(
    systems: list[str],
    sides: list[int],
    run: Callable[[str, int, float | None], dict],
    repeat: int,
    seconds: float,
    clock: Callable[[], float] = time.monotonic,
) -> list[dict]:
    """Measure ``systems`` at growing ``sides``: each side ``repeat`` rounds, the systems
    alternated within a round; one row per system and side.

    ``run(system, side, timeout)`` returns a measurement (``seconds``, ``wall_s``, ...) or
    ``{"failure": "budget" | "memory available" | "time" | "error", ...}``; a failed
    system is not run again. Before each side but the first, a system whose ``repeat``
    runs (predicted from its last side: the build time plus its seconds times the area's
    ratio), added to those of the systems before it, would not fit in what is left of
    ``seconds`` stops there. A system's largest side that fitted gets ``limited_by``; a
    side whose later runs the time guard cut short still fitted, with fewer runs.
    """
    deadline = clock() + seconds
    alive, rows, last = list(systems), [], {}
    for i, side in enumerate(sides):
        if i:
            need, keep = 0.0, []
            for system in alive:
                need += repeat * _predicted(last[system], side)
                if need > deadline - clock():
                    last[system]["limited_by"] = "time"
                else:
                    keep.append(system)
            alive = keep
        runs: dict[str, list[dict]] = {s: [] for s in alive}
        for _ in range(repeat):
            for system in alive:
                if runs[system] and "failure" in runs[system][-1]:
                    continue
                timeout = None if i == 0 else max(1.0, deadline - clock())
                runs[system].append(run(system, side, timeout))
        for system in alive:
            rows.append(_summary(system, side, runs[system]))
            failure = rows[-1].get("failure")
            if failure and system in last:
                last[system]["limited_by"] = failure
            elif not failure:
                last[system] = rows[-1]
        alive = [s for s in alive if last.get(s, {}).get("side") == side
                 and "limited_by" not in last[s]]  # fmt: skip
    for system in alive:
        last[system]["limited_by"] = "max side"
    return rows


def _predicted(row: dict, side: int) -> float:
    """Wall seconds of one run at ``side`` from ``row``'s: build time + seconds x area."""
    return row["wall_s"] - row["seconds"] + row["seconds"] * (side / row["side"]) ** 2


def _summary(system: str, side: int, runs: list[dict]) -> dict:
    """One row from a system's runs at one side: best seconds, largest peak. A run that
    ran out of time after others fitted only ends the system's growth (``limited_by``)."""
    ok = [r for r in runs if "failure" not in r]
    failed = [r for r in runs if "failure" in r]
    fits = bool(ok) and all(r["failure"] == "time" for r in failed)
    row = {"system": system, "side": side, "fits": fits, "repeat": len(ok)}
    if not fits:
        row.update({k: v for k, v in failed[-1].items() if k != "seconds"})
    elif failed:
        row["limited_by"] = "time"
    if ok:
        best = min(ok, key=lambda r: r["seconds"])
        row.update({k: v for k, v in best.items() if k not in ("peak_mb", "total_peak_mb")})
        row["peak_mb"] = max(r["peak_mb"] for r in ok)
        row["total_peak_mb"] = max(r["total_peak_mb"] for r in ok)
        row["seconds_runs"] = [r["seconds"] for r in ok]
        if best.get("regions"):
            row["regions_per_s"] = round(best["regions"] / best["seconds"], 2)
    return row


# ---------------------------------------------------------------------------- runs


def memory_limit(budget_mb: float) -> tuple[float, str]:
    """The watchdog's limit (MiB) and what it stands for: the budget, or what the machine
    has available (less ``HEADROOM_MB``) when that is less."""
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
    machine_mb = available / 1024 - HEADROOM_MB
    return (budget_mb, "budget") if budget_mb <= machine_mb else (machine_mb, "memory available")


class Runner:
    """Runs one system at one side of one (config, task) in a fresh process."""

    def __init__(self, args: argparse.Namespace, config: str, task: str,
                 overrides: list[str]) -> None:  # fmt: skip
        from xtimage.config import load_config

        self.args, self.config, self.task = args, config, task
        self.model = {"preset": config, "overrides": ["model.pretrained=null", *overrides]}
        m = load_config(config, self.model["overrides"]).model
        # Swin and Hiera are built for one input size: the whole image's
        self.whole = {"backbone": m.backbone, "backbone_kwargs": m.backbone_kwargs,
                      "img_size": m.backbone.startswith(("swin", "hiera"))}  # fmt: skip
        self.idle_mb: dict[int, float] = {}  # xT's built model, per side (for xt_1gb)

    def case(self, system: str, side: int) -> tuple[str, Path, str | None, dict]:
        """(case, script, python, keyword arguments) of one run."""
        train = self.task == "train"
        size = {"height": side, "width": side}
        if system in ("xt", "xt_1gb"):
            budget = self.args.budget
            if system == "xt_1gb":  # xT ran first in the round: its built model's size
                idle = self.idle_mb.get(side) or max(self.idle_mb.values())
                budget = f"{idle + 1024}MiB"
            mode = "train" if train else "inference"
            return "case_engine", COMMON, None, dict(model=self.model, mode=mode, budget=budget,
                                                     **size)  # fmt: skip
        if system == "whole":
            return "case_whole", COMMON, None, dict(train=train, **self.whole, **size)
        if system == "emulation":
            return "case_authors", COMMON, None, dict(model=self.model, train=train, **size)
        checkout = str(Path(self.args.release_checkout).resolve())
        return (
            "case_release",
            RELEASE,
            self.args.release_python,
            dict(checkout=checkout, config=CONFIGS[self.config][0], train=train, **size),
        )

    def __call__(self, system: str, side: int, timeout: float | None) -> dict:
        from xtimage.engine.planner import parse_size

        case, script, python, kwargs = self.case(system, side)
        limit_mb, kind = memory_limit(parse_size(self.args.budget) / MIB)
        start = time.monotonic()
        try:
            result = measure(script, case, limit_mb, timeout, python=python, **kwargs)
            if result.get("exceeded") or result.get("total_peak_mb", 0) > limit_mb:
                result["failure"] = kind
        except subprocess.TimeoutExpired:
            result = {"failure": "time"}
        except RuntimeError as error:
            result = {"failure": "error", "error": str(error)[-800:]}
        result.update(wall_s=round(time.monotonic() - start, 1), limit_mb=round(limit_mb))
        if system == "xt" and "idle_mb" in result:
            self.idle_mb[side] = result["idle_mb"]
        state = result.get("failure") or f"+{result['peak_mb']:.0f} MiB, {result['seconds']:.1f} s"
        print(f"  {self.config} {self.task} {side} {system}: {state} ({result['wall_s']:.0f} s)",
              file=sys.stderr, flush=True)  # fmt: skip
        return result

    def describe(self, row: dict) -> dict:
        """``row`` with its config, task, labels, gradient kind and input accounting."""
        system, train = row["system"], self.task == "train"
        gradient = None
        if train and row.get("fits"):
            mode = row.get("planned_mode")
            gradient = {"exact": "exact", "streaming": "streaming-truncated"}.get(mode, "full")
        side = row.get("padded_side", row["side"])
        held = system not in ("xt", "xt_1gb")
        row = {"bench": "paper_configs", "config": self.config, "task": self.task, **row,
               "label": LABELS[system], "gradient": gradient,
               "input": INPUT["held" if held else "xt"],
               "input_mb": round(3 * side * side * 4 / MIB, 1) if held else None,
               "budget": self.args.budget, "dry_run": self.args.dry_run,
               "allocator": "lean" if self.args.lean_memory else "glibc default",
               "xtimage_commit": self.args.xtimage_commit, **machine()}  # fmt: skip
        if row.get("planned_estimate_mb") and row.get("peak_mb"):
            row["est_over_measured"] = round(row["planned_estimate_mb"] / row["peak_mb"], 2)
        if system == "release":
            row["release_commit"] = self.args.release_commit
        return row


# ---------------------------------------------------------------------------- main


def systems_for(args: argparse.Namespace, config: str, task: str) -> tuple[list[str], str | None]:
    """The systems run for ``config`` and ``task`` (of ``args.systems``; xt_1gb for
    inference, after xt), and why the release is not, if not."""
    systems = [s for s in SYSTEMS if s in args.systems]
    if task == "train" or "xt" not in systems:
        systems = [s for s in systems if s != "xt_1gb"]
    reason = (
        "not run in a dry run (the release builds its own configuration only)" if args.dry_run
        else CONFIGS[config][1] if args.release
        else "no --release-checkout and --release-python given"
    )  # fmt: skip
    return (systems if reason is None else [s for s in systems if s != "release"]), reason


def git_commit(path: str | Path) -> str | None:
    """The commit of the git work tree at ``path``, with "+dirty" when files under ``path``
    differ from it; None outside git."""

    def git(*cmd: str) -> str:
        proc = subprocess.run(["git", "-C", str(path), *cmd], capture_output=True, text=True)
        return proc.stdout.strip()

    head = git("rev-parse", "HEAD")
    return head and head + ("+dirty" if git("status", "--porcelain", "--", ".") else "") or None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--tasks", nargs="*", choices=list(TASK_WEIGHT), default=list(TASK_WEIGHT))
    parser.add_argument("--systems", nargs="*", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--budget", default="18GB", help="the whole process's memory")
    parser.add_argument("--minutes", type=float, default=240.0, help="time guard of the run")
    parser.add_argument("--repeat", type=int, default=2, help="runs per system and side (best)")
    parser.add_argument("--start", type=int, default=None, help="first side (1024; dry 64)")
    parser.add_argument("--max-side", type=int, default=None, help="(131072; dry run 256)")
    parser.add_argument(
        "--release-checkout",
        default=None,
        help="a checkout of github.com/bair-climate-initiative/xT",
    )
    parser.add_argument(
        "--release-python",
        default=None,
        help="the Python of an environment with the release's imports",
    )
    parser.add_argument("--dry-run", action="store_true", help="tiny model and sizes")
    parser.add_argument("--lean-memory", action="store_true",
                        help="every system under glibc's fixed mmap threshold "
                             "(xtimage.allocator: a lower peak, slower)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="folder of the JSON rows")
    args = parser.parse_args(argv)
    args.start = args.start or (64 if args.dry_run else 1024)
    args.max_side = args.max_side or (256 if args.dry_run else 131072)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.release = bool(args.release_checkout and args.release_python)
    args.release_commit = git_commit(args.release_checkout) if args.release else None
    import xtimage

    args.xtimage_commit = git_commit(Path(xtimage.__file__).parent)
    if args.lean_memory:  # inherited by every child, the release's too
        os.environ[THRESHOLD_VARIABLE] = str(LEAN_THRESHOLD)
    if not args.release and "release" in args.systems:
        print(
            "paper_configs: the xT release's rows are skipped: give --release-checkout (its "
            "code) and --release-python (an environment with its imports) to run it, "
            "unchanged, beside xtimage (benchmarks/release_xt.py)",
            file=sys.stderr,
        )
    out = args.out or (Path(tempfile.mkdtemp(prefix="paper_configs_")) if args.dry_run else None)
    sides = [args.start * 2**k for k in range(20) if args.start * 2**k <= args.max_side]
    pairs = [(c, t) for c in args.configs for t in args.tasks]
    deadline = time.monotonic() + 60 * args.minutes
    rows: list[dict] = []
    for i, (config, task) in enumerate(pairs):
        systems, reason = systems_for(args, config, task)
        if reason and args.release:
            print(f"paper_configs: {config}: no release rows: {reason}", file=sys.stderr)
        share = TASK_WEIGHT[task] / sum(TASK_WEIGHT[t] for _, t in pairs[i:])
        seconds = max(0.0, deadline - time.monotonic()) * share
        runner = Runner(args, config, task, tiny(config) if args.dry_run else [])
        found = grow(systems, sides, runner, args.repeat, seconds)
        found = [runner.describe(r) for r in found]
        if "release" in args.systems and reason:
            found.append({"bench": "paper_configs", "config": config, "task": task,
                          "system": "release", "side": None, "skipped": reason})  # fmt: skip
        rows += found
        path = save_rows("paper_configs", found, KEY, out)
    report(rows)
    print(f"\nrows written to {path}", file=sys.stderr)
    return 0


def report(rows: list[dict]) -> None:
    measured = [dict(r, config=r["config"].removeprefix("inat_reptilia_"),
                     planner=f"{r['planned_mode']} x{r['planned_region_batch']}"
                     if r.get("planned_mode") else None)
                for r in rows if r.get("side")]  # fmt: skip
    print_table(
        f"The paper's configurations (+MiB over the built model; {machine()['machine']})",
        measured,
        [("config", "config", ""), ("task", "task", ""), ("side", "side", "d"),
         ("system", "system", ""), ("fits", "fits", ""), ("+MiB", "peak_mb", ".0f"),
         ("total MiB", "total_peak_mb", ".0f"), ("planner", "planner", ""),
         ("est MiB", "planned_estimate_mb", ".0f"), ("est/meas", "est_over_measured", ".2f"),
         ("s/image", "seconds", ".1f"), ("regions/s", "regions_per_s", ".2f"),
         ("gradient", "gradient", ""), ("repeat", "repeat", "d"),
         ("limited by", "limited_by", ""), ("failure", "failure", "")],
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
