"""Archive prediction: a run killed (SIGKILL) midway, rerun on two processes, skips what
was written, redoes the rest, records a failing file and merges one complete index."""

import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from forked import fork_processes
from xtimage.archive import merge_index, predict_archive
from xtimage.build import build_model
from xtimage.config import load_config
from xtimage.distributed import World, init_distributed
from xtimage.predict import Predictor

TINY = [
    "model.region=64",
    "model.dim=32",
    "model.backbone_kwargs={depths: [1, 1, 1, 1], dims: [8, 8, 16, 16]}",
    "model.context_kwargs={depth: 1, heads: 2}",
    "model.head=classification",
    "model.num_classes=3",
]
NAMES = ["a", "b", "bad", "d", "e", "f", "g"]


@pytest.fixture
def archive(tmp_path):
    config = load_config(None, TINY)
    predictor = Predictor(build_model(config.model).eval(), config.model, region_batch=2)
    rng = np.random.default_rng(0)
    files = []
    for name in NAMES:
        path = tmp_path / "in" / f"{name}.npy"
        path.parent.mkdir(exist_ok=True)
        if name == "bad":
            path.write_bytes(b"not an array")
        else:
            np.save(path, rng.integers(0, 256, (3, 70, 90), dtype=np.uint8))
        files.append(path)
    return predictor, files, tmp_path / "out"


def _killed_run(predictor, files, out):
    """Predict until the 5th file, then die by SIGKILL: no cleanup, no barrier, no index."""
    calls = {"n": 0}
    predict_file = predictor.predict_file

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return predict_file(*args, **kwargs)

    predictor.predict_file = dying
    predict_archive(predictor, files, out, progress=False, world=World())


def _rerun(rank, predictor, files, out):
    init_distributed("cpu")
    result = predict_archive(predictor, files, out, progress=False)
    (out / f"counts{rank}.json").write_text(json.dumps(result.counts))


def test_killed_archive_rerun_skips_written_files_and_merges_a_complete_index(archive):
    predictor, files, out = archive
    context = mp.get_context("fork")
    child = context.Process(target=_killed_run, args=(predictor, files, out))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    assert sorted(first) == ["a.json", "b.json", "d.json"]  # "bad" failed, killed at "e"
    assert not (out / "xt_index.csv").exists()
    # the killed run's part file already says what is on disk
    rows = merge_index(out, files)
    assert [r["status"] for r in rows] == ["done", "done", "failed", "done"] + ["missing"] * 3

    fork_processes(_rerun, 2, predictor, files, out)
    counts = [json.loads((out / f"counts{r}.json").read_text()) for r in (0, 1)]
    # rank 0 takes a, bad, e, g; rank 1 b, d, f
    assert counts == [
        {"done": 2, "skipped": 1, "failed": 1},
        {"done": 1, "skipped": 2, "failed": 0},
    ]
    for name, mtime in first.items():  # not rewritten
        assert (out / name).stat().st_mtime_ns == mtime
    index = json.loads((out / "xt_index.json").read_text())
    assert [r["input"] for r in index] == [str(p) for p in files]
    assert [r["status"] for r in index] == ["done", "done", "failed"] + ["done"] * 4
    assert [r["rank"] for r in index] == [0, 0, 0, 0, 0, 1, 0]  # a, b, d kept from run 1
    bad = index[2]
    assert bad["outputs"] == [] and bad["error"] and "bad.npy" in bad["error"]
    for row in index:
        for path in row["outputs"]:
            assert json.loads(Path(path).read_text())["input"] == row["input"]
        assert row["status"] == "failed" or row["seconds"] > 0
    with open(out / "xt_index.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["input"] for r in table] == [r["input"] for r in index]
    assert [r["outputs"] for r in table] == [";".join(r["outputs"]) for r in index]
