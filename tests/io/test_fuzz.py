"""Fuzzed files through `xt info` and a full read: every mutant reads or fails with a
one-line `XTError`; no traceback, no signal, no hang, no MemoryError.

The mutants come from `fuzz_corpus.make_corpus` (fixed seeds). They run in a subprocess
(`fuzz_harness.py`) with its heap capped (``RLIMIT_DATA``) and a timeout; a crash or a
hang names the mutant that was running, and the rest run in a fresh process. The cap on
what a declared size may allocate (``XT_MAX_ALLOC``) is set below the heap limit, as a
user on a small machine would. The default run sends 5 mutants per base file (35), the
slow run 50 per base (350).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from fuzz_corpus import make_corpus

HARNESS = Path(__file__).with_name("fuzz_harness.py")
HEAP = 3 * 10**9  # bytes: torch's import needs about 1 GB of it
TIMEOUT_S = 600


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (HEAP, HEAP))


def run_corpus(files: list[Path]) -> tuple[list[dict], list[str]]:
    """Results per mutant, and the problems (crashes and hangs) with their mutants."""
    env = {**os.environ, "XT_MAX_ALLOC": "1GB", "PYTHONWARNINGS": "ignore"}
    results, problems, todo = [], [], [str(f) for f in files]
    while todo:
        started, done = None, set()
        try:
            proc = subprocess.run(
                [sys.executable, str(HARNESS), *todo],
                capture_output=True, text=True, env=env, preexec_fn=_limit, timeout=TIMEOUT_S,
            )  # fmt: skip
            out, code = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as exc:
            out, code = (exc.stdout or b"").decode(), "timeout"
        for line in out.splitlines():
            row = json.loads(line)
            if "start" in row:
                started = row["start"]
            else:
                results.append(row)
                done.add(row["file"])
        if code == 0:
            break
        problems.append(f"{started}: {'hang' if code == 'timeout' else f'exit {code}'}")
        todo = [f for f in todo if f not in done and f != started]
    return results, problems


def check(folder: Path, per_base: int) -> Counter:
    files = make_corpus(folder, per_base=per_base)
    results, problems = run_corpus(files)
    counts = Counter(tried=len(files), problems=len(problems))
    raw = []
    for row in results:
        outcomes = (row["info"].split(":")[0], row["read"].split(":")[0])
        counts["read"] += outcomes == ("ok", "ok")
        counts["clean error"] += "xterror" in outcomes and "raw" not in outcomes
        if "raw" in outcomes:
            raw.append(row)
    counts["raw"] = len(raw)
    print(f"\nfuzz: {dict(counts)}")
    assert not problems, problems
    assert not raw, raw[:5]
    assert counts["read"] + counts["clean error"] == len(files)
    return counts


def test_fuzz_corpus_fast(tmp_path):
    counts = check(tmp_path, per_base=5)
    assert counts["tried"] >= 30  # 6 or 7 bases (the GeoTIFF needs rasterio)


@pytest.mark.slow
def test_fuzz_corpus_full(tmp_path):
    counts = check(tmp_path, per_base=50)
    assert counts["tried"] >= 300
