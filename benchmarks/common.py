"""Benchmark machinery: fresh-process memory measurement, the models, JSON rows, tables.

Peak resident memory never goes down inside a process, so every measurement runs in a
fresh one: ``python benchmarks/common.py --child SCRIPT CASE KWARGS``. The child imports
SCRIPT, calls ``CASE(**kwargs)`` (imports, model build, files opened: the *idle*
process), then resets the kernel's peak (``/proc/self/clear_refs``), reads the resident
size, and calls the returned function once. It reports

- ``peak_mb``: the peak resident size minus the idle one, MiB (the increase);
- ``total_peak_mb``: the peak resident size of the whole process, MiB;
- ``gpu_peak_mb``: on CUDA, torch's peak allocation above the idle one, MiB;
- ``seconds`` and whatever the case's function returns (regions, ...).

With a ``limit_mb`` a watchdog thread ends the child as soon as its resident size
passes the limit, so that searching for the widest image that fits a budget never uses
much more than the budget. Linux only (``/proc``). Sizes in MiB (2**20 bytes); a budget
of "4GB" is 4e9 bytes = 3815 MiB.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
MIB = 2**20
EXCEEDED = 3  # the child's exit code when the watchdog stopped it


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1])


def rss_mib() -> float:
    """Current resident size of this process, MiB."""
    return _status_kib("VmRSS") / 1024


def peak_mib() -> float:
    """Peak resident size of this process since start or the last `reset_peak`, MiB."""
    return _status_kib("VmHWM") / 1024


def reset_peak() -> None:
    """Set the kernel's peak resident size of this process to the current one."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _watchdog(limit_mb: float) -> None:
    """End the process with `EXCEEDED` once its resident size passes ``limit_mb``."""

    def watch() -> None:
        while True:
            rss = rss_mib()
            if rss > limit_mb:
                sys.stdout.write(json.dumps({"exceeded": True, "rss_mb": round(rss, 1)}) + "\n")
                sys.stdout.flush()
                os._exit(EXCEEDED)
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True, name="memory-watchdog").start()


def _child(script: str, case: str, kwargs: dict, limit_mb: float | None) -> None:
    import gc

    spec = importlib.util.spec_from_file_location(Path(script).stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = getattr(module, case)(**kwargs)
    gc.collect()
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_idle = torch.cuda.memory_allocated()
    reset_peak()
    idle = rss_mib()
    if limit_mb is not None:
        _watchdog(limit_mb)
    start = time.perf_counter()
    extra = run() or {}
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = peak_mib()
    out = {
        "idle_mb": round(idle, 1),
        "peak_mb": round(peak - idle, 1),
        "total_peak_mb": round(peak, 1),
        "seconds": round(seconds, 3),
        **extra,
    }
    if cuda:
        out["gpu_peak_mb"] = round((torch.cuda.max_memory_allocated() - gpu_idle) / MIB, 1)
    print(json.dumps(out))


def measure(
    script: str | Path,
    case: str,
    limit_mb: float | None = None,
    timeout: float | None = None,
    **kwargs: Any,
) -> dict:
    """Run ``case(**kwargs)`` of ``script`` in a fresh process; its measurement as a dict.

    Returns ``{"exceeded": True, "rss_mb": ...}`` when the process passed ``limit_mb``.
    """
    cmd = [sys.executable, __file__, "--child", str(script), case, json.dumps(kwargs)]
    if limit_mb is not None:
        cmd += ["--limit-mb", str(limit_mb)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == EXCEEDED and lines:
        return json.loads(lines[-1])
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{Path(script).name} {case} {kwargs} failed (exit {proc.returncode}):\n"
            + proc.stderr[-3000:]
        )
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------- models


def build_model(
    backbone: str = "mobilenetv3_small_050",
    context: str = "xl",
    dim: int = 64,
    region: int = 256,
    pool: int | None = None,
    in_chans: int = 3,
    num_classes: int = 10,
    **context_kwargs: Any,
):
    """An `XT` classifier: ``backbone`` regions, ``context`` of width ``dim``, mean pooling."""
    from xtimage.encoders.context import create_context_encoder
    from xtimage.encoders.region import RegionEncoder
    from xtimage.heads import ClassificationHead
    from xtimage.model import XT

    encoder = RegionEncoder(backbone, region=region, in_chans=in_chans)
    ctx = create_context_encoder(context, dim=dim, **context_kwargs)
    head = ClassificationHead(dim, num_classes)
    return XT(encoder, ctx, head, region=region, pool=pool)


# Context encoders of the memory benchmarks: narrow (CPU time), paper structure.
STREAMING = {"context": "xl", "depth": 2, "heads": 4, "segment_len": 256, "mem_len": 256}
GLOBAL = {"context": "hyper", "depth": 1, "heads": 4}


def open_image(source: str, height: int, width: int, seed: int = 0):
    """A reader: ``"procedural"`` (generated on the fly) or the path of a TIFF."""
    if source == "procedural":
        from xtimage.io.procedural import ProceduralReader

        return ProceduralReader(height, width, seed=seed)
    from xtimage.io import open_reader

    return open_reader(source)


def write_tiff(path: Path, side: int, tile: int = 256, compression: str = "zlib") -> Path:
    """A tiled RGB TIFF of ``side`` x ``side`` px, written tile by tile (memory: one tile).

    Pixels are those of `ProceduralReader` (seed 0), so a TIFF and the procedural source
    of the same size hold the same image.
    """
    import numpy as np
    import tifffile

    from xtimage.io.procedural import ProceduralReader
    from xtimage.window import Window

    reader = ProceduralReader(side, side, seed=0)
    n = -(-side // tile)

    def tiles():
        for i in range(n):
            for j in range(n):
                window = Window(i * tile, j * tile, tile, tile)
                inside = window.intersect(Window(0, 0, side, side))
                out = np.zeros((tile, tile, 3), np.uint8)
                out[: inside.height, : inside.width] = reader.read_region(inside).transpose(1, 2, 0)
                yield out

    tifffile.imwrite(
        path, tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile),
        photometric="rgb", compression=compression, bigtiff=True, metadata=None,
    )  # fmt: skip
    return path


# ---------------------------------------------------------------------------- cases
# Each case builds what it needs (the idle process) and returns the function measured.


def case_engine(
    model: dict,
    height: int,
    width: int,
    region_batch: int | None = None,
    mode: str = "inference",
    source: str = "procedural",
    read_ahead: bool = True,
    budget: str | None = None,
):
    """xT through the engine: classify ("inference"), or one "exact" / "streaming"
    training step with AdamW, on an image read from ``source``. With a ``budget`` and no
    ``region_batch``, the memory planner picks the region batch (and the training mode
    when ``mode`` is "train")."""
    import torch

    from xtimage.engine import Engine
    from xtimage.engine.planner import plan_memory

    net = build_model(**model)
    reader = open_image(source, height, width)
    regions = net.plan(height, width).num_regions
    planned = {}
    if region_batch is None:
        training = mode != "inference"
        plan = plan_memory(net, height, width, budget, training=training,
                           mode=None if mode in ("inference", "train") else mode)  # fmt: skip
        region_batch, mode = plan.region_batch, plan.mode
        planned = {"planned_mode": plan.mode, "planned_region_batch": plan.region_batch,
                   "planned_estimate_mb": round(plan.increase_bytes / MIB, 1)}  # fmt: skip
    engine = Engine(net, region_batch=region_batch, read_ahead=read_ahead)
    if mode == "inference":
        net.eval()

        def run() -> dict:
            engine.classify([reader])
            return {"regions": regions, **planned}

        return run
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    step = engine.exact_step if mode == "exact" else engine.streaming_step

    def train() -> dict:
        step([reader], torch.tensor([1]))
        optimizer.step()
        return {"regions": regions, **planned}

    return train


def _image(height: int, width: int):
    """The procedural image as a float tensor (1, 3, H, W), read in strips."""
    import torch

    from xtimage.io.procedural import ProceduralReader
    from xtimage.window import Window

    reader = ProceduralReader(height, width, seed=0)
    image = torch.empty(1, 3, height, width)
    for top in range(0, height, 1024):
        strip = Window(top, 0, min(1024, height - top), width)
        image[0, :, top : strip.bottom] = torch.from_numpy(reader.read_region(strip))
    return image


def case_whole(backbone: str, height: int, width: int, train: bool = False):
    """The same backbone on the whole image at once, with timm's own classifier; the
    image is in memory (a tensor made before the measurement)."""
    import timm
    import torch

    net = timm.create_model(backbone, num_classes=10)
    image = _image(height, width)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4) if train else None

    def run() -> dict:
        net.train(train)
        with torch.set_grad_enabled(train):
            logits = net(image)
            if train:
                torch.nn.functional.cross_entropy(logits, torch.tensor([1])).backward()
                optimizer.step()
        return {}

    return run


def case_authors(model: dict, height: int, width: int, train: bool = False):
    """The xT release's way: every region in one batch (`XT.forward`), with autograd
    when training; the image is in memory."""
    import torch

    net = build_model(**model)
    image = _image(height, width)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4) if train else None

    def run() -> dict:
        net.train(train)
        with torch.set_grad_enabled(train):
            logits = net(image)
            if train:
                net.head.loss(logits, torch.tensor([1])).backward()
                optimizer.step()
        return {"regions": net.plan(height, width).num_regions}

    return run


# ---------------------------------------------------------------------------- results


def machine() -> dict:
    """Where the numbers come from."""
    import torch

    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def save_rows(name: str, rows: Sequence[dict], key: Sequence[str]) -> Path:
    """Merge ``rows`` into ``results/<name>.json``: a row replaces the one with its key."""
    path = RESULTS / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else []
    new_keys = {tuple(r.get(k) for k in key) for r in rows}
    kept = [r for r in old if tuple(r.get(k) for k in key) not in new_keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([*kept, *rows], indent=1) + "\n")
    return path


def print_table(title: str, rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> None:
    """Print ``rows`` under ``title``; columns are (header, key, format spec)."""
    print(f"\n{title}")
    widths = [max(len(h), 9) for h, _, _ in columns]
    print("  ".join(h.rjust(w) for (h, _, _), w in zip(columns, widths, strict=True)))
    for row in rows:
        cells = []
        for (_, key, spec), w in zip(columns, widths, strict=True):
            value = row.get(key)
            text = "-" if value is None else format(value, spec) if spec else str(value)
            cells.append(text.rjust(w))
        print("  ".join(cells))


def fresh_process_cli() -> None:
    """Handle ``--child`` when this file runs as the measuring child."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=3, metavar=("SCRIPT", "CASE", "KWARGS"))
    parser.add_argument("--limit-mb", type=float, default=None)
    args = parser.parse_args()
    try:
        _child(args.child[0], args.child[1], json.loads(args.child[2]), args.limit_mb)
    except Exception:
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    fresh_process_cli()
