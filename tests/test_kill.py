"""Crash safety: ``kill -9`` at random moments of `xt train` (a checkpoint every step) and
of `xt predict` leaves no half-written file under a final name, every checkpoint on disk
loads, ``xt train --resume`` continues to the end, a rerun of `xt predict` finishes the
job, and the next run in the same place removes the killed runs' temporary and scratch
files; kills timed around checkpoint writes until some land inside one (its temporary
file left on disk) show the same. Slow: each kill starts a fresh process (the kill
moments are drawn with a fixed seed; the machine's speed moves where they land)."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from tiny import TINY_MODEL
from xtimage.checkpoint import read_checkpoint
from xtimage.io.open import readable_output

pytestmark = pytest.mark.slow

TINY = [
    "model.region=64", "model.dim=32", "model.decoder_channels=8",
    "model.backbone_kwargs={depths: [1, 1, 1, 1], dims: [8, 8, 16, 16]}",
    "model.context_kwargs={depth: 1, heads: 2}",
    "data.size=128", "data.train_samples=8", "data.val_samples=2", "train.batch_size=2",
    "train.steps=120", "train.checkpoint_every=1", "train.eval_every=0",
    "train.progress=false", "train.workers=0",
]  # fmt: skip
KILLS_TRAIN, KILLS_PREDICT = 8, 5


def xt(*args):
    return [sys.executable, "-m", "xtimage.cli", *[str(a) for a in args]]


def kill_after(command, seconds):
    """Start ``command``, SIGKILL it after ``seconds`` (if still running); its exit code."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode


def hidden(folder):
    """Hidden files and folders but the prediction index (`xtimage.archive`)."""
    return sorted(p.name for p in folder.rglob(".*") if p.name != ".xt_index")


def check_final_names(folder):
    """Every file under a final (not hidden) name is whole."""
    for path in folder.rglob("*.safetensors"):
        if not path.name.startswith("."):
            read_checkpoint(path)  # raises on a damaged file
    for path in folder.rglob("*.tif"):
        if not path.name.startswith("."):
            assert readable_output(path), path


def test_kill_9_during_training_then_resume(tmp_path):
    rng = random.Random(25)
    run = tmp_path / "run"
    started = time.monotonic()
    probe = xt("train", "synthetic_seg", *TINY, "train.steps=2", f"train.out={tmp_path / 'p'}")
    assert subprocess.run(probe, capture_output=True).returncode == 0
    startup = time.monotonic() - started  # a process's start and 2 steps on this machine
    killed = debris = 0
    for _ in range(KILLS_TRAIN):
        last = run / "checkpoints" / "last.safetensors"
        command = (xt("train", "--resume", run) if last.exists()
                   else xt("train", "synthetic_seg", *TINY, f"train.out={run}", "--overwrite"))
        code = kill_after(command, rng.uniform(0.6, 1.6) * startup)
        killed += code == -signal.SIGKILL
        debris += bool(hidden(run))  # killed while a checkpoint was being written
        check_final_names(run)
    print(f"\ntrain: {killed} of {KILLS_TRAIN} runs killed, {debris} times with a .partial left")
    assert killed >= KILLS_TRAIN // 2, "most runs must be killed, not finished"
    done = subprocess.run(xt("train", "--resume", run), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert read_checkpoint(run / "checkpoints" / "last.safetensors").step == 120
    check_final_names(run)
    assert hidden(run) == [], hidden(run)  # the killed runs' .partial files are gone


def test_kill_9_during_prediction_then_rerun(tmp_path):
    rng = random.Random(26)
    run = tmp_path / "run"
    trained = subprocess.run(xt("train", "synthetic_seg", *TINY, "train.steps=1",
                                f"train.out={run}"), capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    image = tmp_path / "scene.tif"
    pixels = np.random.default_rng(0).integers(0, 255, (1024, 1536, 3), np.uint8)
    tifffile.imwrite(image, pixels, tile=(256, 256), photometric="rgb")
    out = tmp_path / "out"
    command = xt("predict", run, image, "-o", out, "--heatmap")
    started = time.monotonic()
    assert subprocess.run(command, capture_output=True).returncode == 0
    elapsed = time.monotonic() - started
    for name in ("scene.mask.tif", "scene.heatmap.tif"):
        (out / name).unlink()
    killed = debris = 0
    for _ in range(KILLS_PREDICT):
        code = kill_after([*command, "--overwrite"], rng.uniform(0.5, 0.98) * elapsed)
        killed += code == -signal.SIGKILL
        debris += bool(hidden(out))
        check_final_names(out)
    print(f"\npredict: {killed} of {KILLS_PREDICT} runs killed, {debris} leaving scratch files")
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert readable_output(out / "scene.mask.tif") and readable_output(out / "scene.heatmap.tif")
    assert hidden(out) == [], hidden(out)  # scratch levels and .partial files of the kills


# ~43 MB checkpoints (weights and AdamW moments of a 384-wide context encoder) against
# steps of a 128 px image: a write takes tens of ms, enough for a kill to land inside it
BIG = [
    *TINY_MODEL, "model.dim=384", "model.context_kwargs={depth: 2, heads: 2}",
    "data.size=128", "data.train_samples=8", "data.val_samples=2", "train.batch_size=2",
    "train.steps=32", "train.checkpoint_every=1", "train.eval_every=0",
    "train.progress=false", "train.workers=0",
]  # fmt: skip
MIN_KILLS, MAX_KILLS, KILL_BUDGET_S = 10, 14, 80  # each kill moves the run <= 2 steps


def temporaries(folder, pid):
    """The temporary files of process ``pid`` in ``folder`` (`xtimage.io.atomic`)."""
    names = os.listdir(folder) if folder.is_dir() else []
    return {n for n in names if n.endswith(".partial") and f"-{pid}." in n}


def kill_around_a_write(command, folder, nth, delay):
    """Start ``command``; when its ``nth`` checkpoint temporary appears in ``folder``,
    wait ``delay`` s and SIGKILL it. (killed, whether a temporary of it is left: the kill
    landed inside a write)."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: set[str] = set()
    try:
        while proc.poll() is None:
            seen |= temporaries(folder, proc.pid)
            if len(seen) >= nth:
                time.sleep(delay)
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None and not seen:
            proc.kill()
        proc.wait()
    return proc.returncode == -signal.SIGKILL, bool(temporaries(folder, proc.pid))


def test_kill_9_inside_a_checkpoint_write_then_resume(tmp_path):
    rng = random.Random(2025)
    run = tmp_path / "run"
    folder, last = run / "checkpoints", run / "checkpoints" / "last.safetensors"
    tried = inside = 0
    started = time.monotonic()
    while tried < MAX_KILLS and (inside < 1 or tried < MIN_KILLS):
        if time.monotonic() - started > KILL_BUDGET_S and inside:
            break
        command = (xt("train", "--resume", run) if last.exists()
                   else xt("train", "synthetic_seg", *BIG, f"train.out={run}"))  # fmt: skip
        delay = 0.5 * rng.random() ** 3  # from the write's start to mid-step, mostly early
        killed, during = kill_around_a_write(command, folder, rng.randint(1, 2), delay)
        assert killed, "the run ended before its kill: raise train.steps"
        tried, inside = tried + 1, inside + during
        check_final_names(run)  # every checkpoint under a final name loads (digest checked)
    print(f"\ntrain, kills around checkpoint writes: {tried} tried, {inside} inside a write "
          f"({time.monotonic() - started:.0f} s)")  # fmt: skip
    assert inside >= 1, f"none of {tried} kills landed inside a checkpoint write"
    done = subprocess.run(xt("train", "--resume", run), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert read_checkpoint(last).step == 32
    check_final_names(run)
    assert hidden(run) == [], hidden(run)  # the temporaries of the kills are gone
