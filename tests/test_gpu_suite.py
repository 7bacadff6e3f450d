"""benchmarks/gpu_suite.py: the search, the refusal without a GPU, and its dry run's parts
on CPU (the whole dry run, a fresh process a probe, is slow-marked)."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def suite(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the suite imports its sibling `common`
    return importlib.import_module("gpu_suite")


def limit_probe(limit: int, log: list):
    def probe(side: int, timeout: float) -> str:
        log.append(side)
        return "fits" if side <= limit else "exceeds"

    return probe


def test_search_doubles_then_bisects_to_an_eighth(suite):
    log = []
    found = suite.largest_side(limit_probe(5000, log), 1024, 131072, 256, seconds=60)
    assert log == [1024, 2048, 4096, 8192, 6144, 5120, 4608]
    assert (found.largest, found.first_failing, found.limited_by) == (4608, 5120, "memory")


def test_search_halves_when_the_start_fails_and_stops_at_the_cap(suite):
    log = []
    found = suite.largest_side(limit_probe(700, log), 1024, 131072, 256, seconds=60)
    assert log == [1024, 512, 768] and found.largest == 512
    found = suite.largest_side(limit_probe(10**9, []), 1024, 4096, 256, seconds=60)
    assert (found.largest, found.first_failing, found.limited_by) == (4096, None, "cap")
    found = suite.largest_side(limit_probe(100, []), 256, 4096, 256, seconds=60)
    assert (found.largest, found.first_failing) == (None, 256)
    found = suite.largest_side(lambda side, t: "error", 1024, 4096, 256, seconds=60)
    assert (found.largest, found.limited_by) == (None, "error")  # a failing child stops it


def test_search_stops_when_its_time_is_spent(suite):
    now = [0.0]

    def probe(side, timeout):
        now[0] += 10  # every probe takes 10 s
        return "fits" if side <= 3000 else "time" if side > 4096 else "exceeds"

    found = suite.largest_side(probe, 1024, 131072, 256, seconds=25, clock=lambda: now[0])
    assert (found.largest, found.limited_by, len(found.probes)) == (2048, "time", 3)
    now[0] = 0.0
    found = suite.largest_side(probe, 4096, 131072, 256, seconds=1000, clock=lambda: now[0])
    assert found.probes[0] == (4096, "exceeds") and found.limited_by == "memory"
    now[0] = 0.0
    found = suite.largest_side(probe, 2048, 131072, 256, seconds=1000, clock=lambda: now[0])
    assert found.probes[:2] == [(2048, "fits"), (4096, "exceeds")]


def test_without_a_gpu_it_refuses_in_one_line(suite, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert suite.main([]) == suite.NO_GPU == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no CUDA GPU is visible" in err and "--dry-run" in err


@pytest.mark.parametrize(("method", "train"), [("xt", True), ("whole", False), ("authors", True)])
def test_dry_run_probe_cases_run_on_cpu(suite, method, train):
    """What one probe's fresh process runs, here in this process (the dry run's sizes)."""
    import common

    cfg = suite.dry_settings()
    case, kwargs = suite.probe_kwargs(cfg, method, train, 64)
    assert kwargs["amp"] == "bf16" and kwargs["device"] == "cpu"
    out = getattr(common, case)(**kwargs)()
    if method != "whole":
        assert out["regions"] == 1
    if method == "xt":
        assert out["planned_live_mb"] > 0 and out["planned_region_batch"] == cfg.region_batch


def test_dry_run_speed_and_scan_cases_run_on_cpu(suite):
    cfg = suite.dry_settings()
    out = suite.case_speed(cfg.overrides, 128, cfg.region_batch, "cpu", "bf16", repeat=1)()
    assert out["regions"] == 4 and len(out["rates"]) == 4
    assert all(rate > 0 for rate in out["rates"].values())
    scan = suite.case_mamba(length=32, inner=8, d_state=4, device="cpu", repeat=1)()
    assert scan["kernel"] == "no kernel on CPU" and scan["scan_ms"] > 0


@pytest.mark.slow
def test_the_whole_dry_run_passes_and_writes_rows(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_suite.py"), "--dry-run", "--out", str(out)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    sections = {r["section"] for r in rows}
    assert {"train_largest", "infer_largest", "speed", "mamba"} <= sections
    summary = [r for r in rows if r["section"] == "train_largest"]
    assert {r["method"] for r in summary} == {"xt", "whole", "authors"}
    assert all(r["largest_side"] for r in summary) and all(r["dry_run"] for r in rows)
