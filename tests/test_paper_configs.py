"""benchmarks/paper_configs.py: the growth (alternated rounds, budget, time guard, best of
runs), which systems run, and its dry run end to end (fresh processes: slow-marked)."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # it imports its sibling `common`
    return importlib.import_module("paper_configs")


def fake_run(largest: dict, log: list, now: list | None = None):
    """A run that fits up to ``largest[system]``, takes side² / 1e6 s (plus 1 s to build)
    on the clock ``now``, and reports more seconds the more often it ran."""

    def run(system, side, timeout):
        log.append((system, side))
        if side > largest[system]:
            return {"failure": "budget", "wall_s": 1.0}
        seconds = side * side / 1e6 + 0.1 * log.count((system, side))
        if now is not None:
            now[0] += seconds + 1
        return {"seconds": seconds, "wall_s": seconds + 1, "regions": (side // 256) ** 2,
                "peak_mb": side / 10 + len(log), "total_peak_mb": 800 + side / 10}  # fmt: skip

    return run


def test_rounds_alternate_and_a_system_stops_at_its_budget(bench):
    log = []
    run = fake_run({"xt": 10**9, "whole": 1024}, log)
    rows = bench.grow(["xt", "whole"], [1024, 2048, 4096], run, repeat=2, seconds=1e9)
    assert log == [("xt", 1024), ("whole", 1024), ("xt", 1024), ("whole", 1024),
                   ("xt", 2048), ("whole", 2048), ("xt", 2048),
                   ("xt", 4096), ("xt", 4096)]  # fmt: skip
    by = {(r["system"], r["side"]): r for r in rows}
    assert by["whole", 1024]["limited_by"] == "budget" and by["whole", 1024]["fits"]
    assert not by["whole", 2048]["fits"] and by["whole", 2048]["failure"] == "budget"
    assert by["xt", 4096]["limited_by"] == "max side" and "limited_by" not in by["xt", 2048]
    first = by["xt", 1024]
    base = 1024**2 / 1e6
    assert first["repeat"] == 2 and first["seconds_runs"] == [base + 0.1, base + 0.2]
    assert first["seconds"] == min(first["seconds_runs"])  # best of the runs
    assert first["peak_mb"] == 1024 / 10 + 3  # the largest peak of the runs
    assert first["regions_per_s"] == round(16 / first["seconds"], 2)


def test_the_time_guard_stops_a_side_that_would_not_fit(bench):
    now, log = [0.0], []
    run = fake_run({"xt": 10**9, "whole": 10**9}, log, now)
    # 1024: 2 x 2 runs of ~2.1 s; 2048: predicted 2 x (1 + 4 x 1.15) = 11.2 s for xt, the
    # same again for whole: with 22 s (13.2 left), xt runs 2048 and whole stops at 1024
    rows = bench.grow(["xt", "whole"], [1024, 2048], run, repeat=2, seconds=22,
                      clock=lambda: now[0])  # fmt: skip
    by = {(r["system"], r["side"]): r for r in rows}
    assert ("whole", 2048) not in log and ("xt", 2048) in log
    assert by["whole", 1024]["limited_by"] == "time"
    assert by["xt", 2048]["limited_by"] == "max side"


def test_a_run_cut_short_by_the_time_guard_keeps_the_side_that_fitted(bench):
    def run(system, side, timeout):
        if side == 2048 and timeout is not None and log.count(side) == 1:
            log.append(side)
            return {"failure": "time", "wall_s": 5.0}
        log.append(side)
        return {"seconds": 1.0, "wall_s": 2.0, "peak_mb": 10, "total_peak_mb": 800}

    log = []
    rows = bench.grow(["xt"], [1024, 2048, 4096], run, repeat=2, seconds=1e9)
    assert log == [1024, 1024, 2048, 2048]  # the second run at 2048 ran out: no 4096
    assert [(r["side"], r["fits"], r["repeat"], r.get("limited_by")) for r in rows] == [
        (1024, True, 2, None), (2048, True, 1, "time")]  # fmt: skip


def test_systems_for_each_task_and_why_the_release_is_skipped(bench):
    args = bench.parse_args([])
    args.release = False
    systems, reason = bench.systems_for(args, "inat_reptilia_swin_t_hyper", "inference")
    assert systems == ["xt", "xt_1gb", "whole", "emulation"] and "--release-checkout" in reason
    args.release = True
    systems, reason = bench.systems_for(args, "inat_reptilia_swin_t_hyper", "train")
    assert systems == ["xt", "whole", "emulation", "release"] and reason is None
    systems, reason = bench.systems_for(args, "inat_reptilia_swin_t_mamba", "train")
    assert "release" not in systems and "CUDA" in reason


@pytest.mark.slow
def test_dry_run_writes_rows_with_gradient_kind_input_and_planner(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "paper_configs.py"), "--dry-run", "--configs",
         "inat_reptilia_swin_t_hyper", "--max-side", "128", "--repeat", "1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "release's rows are skipped" in proc.stderr
    rows = json.loads((tmp_path / "paper_configs.json").read_text())
    by = {(r["task"], r["system"], r["side"]): r for r in rows}
    xt = by["train", "xt", 128]
    assert xt["fits"] and xt["planned_mode"] == "exact" and xt["gradient"] == "exact"
    assert xt["repeat"] == 1 and xt["input_mb"] is None and "procedural" in xt["input"]
    assert by["train", "emulation", 128]["gradient"] == "full"
    assert by["inference", "whole", 128]["input_mb"] == round(3 * 128 * 128 * 4 / 2**20, 1)
    # a tiny model fits 1 GiB over itself as well as the budget: the same region batch
    lean, full = by["inference", "xt_1gb", 128], by["inference", "xt", 128]
    assert lean["planned_region_batch"] == full["planned_region_batch"]
    assert by["inference", "release", None]["skipped"].startswith("not run in a dry run")
