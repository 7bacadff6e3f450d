"""Benchmark machinery: fresh-process memory measurement, the models, JSON rows, tables.

Peak resident memory never goes down inside a process, so every measurement runs in a
fresh one: ``python benchmarks/common.py --child SCRIPT CASE KWARGS``. The child imports
SCRIPT, calls ``CASE(**kwargs)`` (imports, model build, files opened: the *idle*
process), then resets the kernel's peak (``/proc/self/clear_refs``), reads the resident
size, and calls the returned function once. It reports

- ``peak_mb``: the peak resident size minus the idle one, MiB (the increase);
- ``total_peak_mb``: the peak resident size of the whole process, MiB;
- ``seconds`` and whatever the case's function returns (regions, ...);

and, when the case used CUDA (``torch.cuda.is_initialized()`` after it was built), the
device's memory as torch's caching allocator saw it:

- ``gpu_idle_mb``: torch's allocations after the build (weights, inputs);
- ``gpu_peak_mb``: ``torch.cuda.max_memory_allocated`` above ``gpu_idle_mb`` (the increase);
- ``gpu_total_peak_mb``: ``max_memory_allocated`` of the whole process;
- ``gpu_reserved_peak_mb``: ``max_memory_reserved``, what the allocator held from the
  driver at its peak: live tensors plus rounding and cached free blocks, the number that
  runs out first. The CUDA context itself (0.3-1 GiB) is in none of them.

With a ``limit_mb`` a watchdog thread ends the child as soon as its resident size
passes the limit, so that searching for the widest image that fits a budget never uses
much more than the budget. With a ``gpu_limit_bytes`` the child caps torch's share of
the GPU (``torch.cuda.set_per_process_memory_fraction``) before the case is built, and a
CUDA out-of-memory error counts as exceeding the limit, like the watchdog's. Linux only
(``/proc``). Sizes in MiB (2**20 bytes); a budget of "4GB" is 4e9 bytes = 3815 MiB.
"""

from __future__ import annotations

import argparse
import fcntl
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
                _exceeded(rss_mb=round(rss, 1))
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True, name="memory-watchdog").start()


def _exceeded(**details: Any) -> None:
    """Report that the limit was passed and end the process with `EXCEEDED`."""
    sys.stdout.write(json.dumps({"exceeded": True, **details}) + "\n")
    sys.stdout.flush()
    os._exit(EXCEEDED)


def _child(
    script: str, case: str, kwargs: dict, limit_mb: float | None, gpu_limit: int | None = None
) -> None:
    import gc

    import torch

    if gpu_limit is not None:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(gpu_limit / total, 1.0))
    spec = importlib.util.spec_from_file_location(Path(script).stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    try:
        run = getattr(module, case)(**kwargs)
    except torch.cuda.OutOfMemoryError:
        _exceeded(oom=True, phase="build")
    gc.collect()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_idle = torch.cuda.memory_allocated()
    reset_peak()
    idle = rss_mib()
    if limit_mb is not None:
        _watchdog(limit_mb)
    start = time.perf_counter()
    try:
        extra = run() or {}
        if cuda:
            torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError:
        _exceeded(oom=True, phase="run", gpu_reserved_peak_mb=_gpu_mib("max_memory_reserved"))
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
        out["gpu_idle_mb"] = round(gpu_idle / MIB, 1)
        out["gpu_peak_mb"] = round(_gpu_mib("max_memory_allocated") - gpu_idle / MIB, 1)
        out["gpu_total_peak_mb"] = _gpu_mib("max_memory_allocated")
        out["gpu_reserved_peak_mb"] = _gpu_mib("max_memory_reserved")
    print(json.dumps(out))


def _gpu_mib(stat: str) -> float:
    """``torch.cuda.<stat>()`` in MiB (e.g. "max_memory_reserved")."""
    import torch

    return round(getattr(torch.cuda, stat)() / MIB, 1)


def measure(
    script: str | Path,
    case: str,
    limit_mb: float | None = None,
    timeout: float | None = None,
    gpu_limit_bytes: int | None = None,
    python: str | None = None,
    **kwargs: Any,
) -> dict:
    """Run ``case(**kwargs)`` of ``script`` in a fresh process; its measurement as a dict.

    Returns ``{"exceeded": True, "rss_mb": ...}`` when the process passed ``limit_mb``,
    ``{"exceeded": True, "oom": True, ...}`` when CUDA ran out of memory (capped at
    ``gpu_limit_bytes`` when given). Raises `subprocess.TimeoutExpired` past ``timeout``
    seconds (the child is killed). ``python`` runs the child under another interpreter
    (another environment, e.g. the xT release's; the child itself needs only torch).
    """
    cmd = [python or sys.executable, __file__, "--child", str(script), case, json.dumps(kwargs)]
    if limit_mb is not None:
        cmd += ["--limit-mb", str(limit_mb)]
    if gpu_limit_bytes is not None:
        cmd += ["--gpu-limit-bytes", str(int(gpu_limit_bytes))]
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
    preset: str | None = None,
    overrides: Sequence[str] = (),
    **context_kwargs: Any,
):
    """An `XT` classifier: ``backbone`` regions, ``context`` of width ``dim``, mean pooling;
    or, with a ``preset`` (a name in xtimage/presets, e.g. "inat_reptilia_swin_t_hyper"),
    the model it describes with ``overrides`` applied (randomly initialised)."""
    if preset is not None:
        from xtimage.build import build_model as build
        from xtimage.config import load_config

        config = load_config(preset, ["model.pretrained=null", *overrides])
        return build(config.model, load_pretrained=False)
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
# ``device`` and ``amp`` ("none", "bf16", "fp16"; see `xtimage.runtime.resolve_amp`) place
# the run; an fp16 training step goes through its gradient scaler.


def _placed(device: str, amp: str):
    """(device, autocast dtype, gradient scaler) of a case."""
    import torch

    from xtimage.runtime import resolve_amp

    dev = torch.device(device)
    dtype, fp16 = resolve_amp(amp, dev)
    return dev, dtype, torch.amp.GradScaler(dev.type, enabled=fp16)


def case_engine(
    model: dict,
    height: int,
    width: int,
    region_batch: int | None = None,
    mode: str = "inference",
    source: str = "procedural",
    read_ahead: bool = True,
    budget: str | None = None,
    device: str = "cpu",
    amp: str = "none",
    estimate: bool = False,
):
    """xT through the engine: classify ("inference"), or one "exact" / "streaming"
    training step with AdamW, on an image read from ``source``. With a ``budget`` and no
    ``region_batch``, the memory planner picks the region batch (and the training mode
    when ``mode`` is "train"). With ``estimate``, the planner's estimate of the run (for
    ``device``) is reported beside it: ``planned_live_mb``, the live tensor bytes its dry
    run traced (activations and read-ahead), ``planned_states_mb``, gradients and AdamW's
    moments, and ``planned_estimate_mb``, the increase."""
    import torch

    from xtimage.engine import Engine
    from xtimage.engine.planner import estimate_memory, plan_memory

    dev, dtype, scaler = _placed(device, amp)
    net = build_model(**model)
    reader = open_image(source, height, width)
    regions = net.plan(height, width).num_regions
    planned, plan = {}, None
    if region_batch is None:
        training = mode != "inference"
        plan = plan_memory(net, height, width, budget, training=training, device=dev,
                           mode=None if mode in ("inference", "train") else mode)  # fmt: skip
        region_batch, mode = plan.region_batch, plan.mode
        if net.context.recomputable and mode == "exact":  # as engine_for_budget does
            net.context.checkpoint = plan.checkpoint
    elif estimate:
        plan = estimate_memory(net, height, width, region_batch=region_batch, mode=mode,
                               read_ahead=read_ahead, device=dev, idle_bytes=0)  # fmt: skip
    if plan is not None:
        live = plan.breakdown["activations"] + plan.breakdown["read_ahead"]
        states = plan.breakdown["gradients"] + plan.breakdown["optimizer"]
        planned = {"planned_mode": plan.mode, "planned_region_batch": plan.region_batch,
                   "planned_estimate_mb": round(plan.increase_bytes / MIB, 1),
                   "planned_live_mb": round(live / MIB, 1),
                   "planned_states_mb": round(states / MIB, 1),
                   "planned_checkpoint": plan.checkpoint}  # fmt: skip
    net.to(dev)
    engine = Engine(net, region_batch=region_batch, device=dev, read_ahead=read_ahead,
                    autocast=dtype, scaler=scaler)  # fmt: skip
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
        step([reader], torch.tensor([1], device=dev))
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
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


def _all_at_once(net, height: int, width: int, train: bool, device: str, amp: str, loss, out):
    """The measured function of a whole-image run: the image in memory on ``device``
    (made now, before the measurement), one forward under autocast and, when training,
    ``loss(logits, label)``'s backward (through fp16's scaler) and an AdamW step."""
    import torch

    from xtimage.runtime import autocast

    dev, dtype, scaler = _placed(device, amp)
    net = net.to(dev)
    image = _image(height, width).to(dev)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4) if train else None
    label = torch.tensor([1], device=dev)

    def run() -> dict:
        net.train(train)
        with torch.set_grad_enabled(train):
            with autocast(dev, dtype):
                logits = net(image)
            if train:
                scaler.scale(loss(logits.float(), label)).backward()
                scaler.step(optimizer)
                scaler.update()
        return out

    return run


def case_whole(backbone: str, height: int, width: int, train: bool = False, device: str = "cpu",
               amp: str = "none", img_size: bool = False,
               backbone_kwargs: dict | None = None):  # fmt: skip
    """The same backbone on the whole image at once, with timm's own classifier. With
    ``img_size`` the backbone is built for the image's size (Swin's attention masks and
    position tables are made for one input size)."""
    import timm
    import torch

    kwargs = dict(backbone_kwargs or {}, **({"img_size": (height, width)} if img_size else {}))
    net = timm.create_model(backbone, num_classes=10, **kwargs)
    loss = torch.nn.functional.cross_entropy
    return _all_at_once(net, height, width, train, device, amp, loss, {})


def case_authors(model: dict, height: int, width: int, train: bool = False, device: str = "cpu",
                 amp: str = "none"):  # fmt: skip
    """The xT release's way: every region in one batch (`XT.forward`), with autograd
    when training."""
    net = build_model(**model)
    regions = {"regions": net.plan(height, width).num_regions}
    return _all_at_once(net, height, width, train, device, amp, net.head.loss, regions)


# ---------------------------------------------------------------------------- results


def machine() -> dict:
    """Where the numbers come from."""
    import torch

    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def save_rows(
    name: str, rows: Sequence[dict], key: Sequence[str], directory: Path | None = None
) -> Path:
    """Merge ``rows`` into ``<directory>/<name>.json`` (default ``results/``): a row
    replaces the one with its key."""
    path = (directory or RESULTS) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    # locked and renamed into place: benchmarks run side by side append to one file
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.exists() else []
        new_keys = {tuple(r.get(k) for k in key) for r in rows}
        kept = [r for r in old if tuple(r.get(k) for k in key) not in new_keys]
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps([*kept, *rows], indent=1) + "\n")
        partial.replace(path)
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
    parser.add_argument("--gpu-limit-bytes", type=int, default=None)
    args = parser.parse_args()
    try:
        _child(args.child[0], args.child[1], json.loads(args.child[2]), args.limit_mb,
               args.gpu_limit_bytes)  # fmt: skip
    except Exception:
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    fresh_process_cli()
