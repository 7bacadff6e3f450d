"""`xt demo`: xT against the two usual ways out (crop, downsample) on a task that needs both.

The task (`xtimage.data.synthetic`, segmentation): segment the objects whose 1-px
texture matches a key shape that usually lies in another region. A crop-only model sees
the textures but not the key; a downsampled model sees neither texture. Three models,
one recipe (the ``demo`` preset), differing only in ``model.baseline``:

- ``xt``: region encoder + Transformer-XL context over all region tokens;
- ``crop``: the same region encoder, context "none";
- ``downsample``: the whole image shrunk to one region, the same backbone.

By default the demo evaluates weights the project trained with that recipe
(``xtimage/assets/demo``, with their training record); ``from_scratch`` retrains all three
through `xtimage.train.Trainer` with the same learning-rate sweep and step budget. Each
model is evaluated on held-out images in a fresh process, so its peak memory is its own.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import multiprocessing
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from xtimage.config import load_config
from xtimage.errors import ConfigError, InputError
from xtimage.report import Figure, Report, save_panels

log = logging.getLogger(__name__)

MODELS = ("xt", "crop", "downsample")
LABELS = {"xt": "xT", "crop": "crop-only", "downsample": "downsample"}
RECIPE = "demo"
VIEW_NAMES = {"none": "the image as it is", "flips": "its 4 flips and half turns",
              "d4": "its 8 flips and quarter turns"}  # fmt: skip
WEIGHTS_DIR = Path(str(importlib.resources.files("xtimage") / "assets" / "demo"))
TEST_SEED = 1000  # held-out scenes: training uses seed 0, validation seed 1


@dataclass
class DemoSettings:
    """What `run_demo` does.

    Attributes:
        out: report folder.
        from_scratch: retrain the three models instead of evaluating shipped weights.
        steps: optimizer steps per training run (from scratch); None: the recipe's.
        lrs: the learning-rate sweep (from scratch); the best on validation is kept.
        test_images: held-out images each model is scored on.
        val_images: validation images that pick the learning rate.
        force: replace an existing report folder.
    """

    out: Path = Path("report")
    from_scratch: bool = False
    steps: int | None = None
    lrs: tuple[float, ...] = (1e-3, 2e-3)
    test_images: int = 48
    val_images: int = 32
    force: bool = False
    overrides: list[str] = field(default_factory=list)


def _config(model: str, overrides: list[str]):
    return load_config(RECIPE, [f"model.baseline={model}", *overrides])


def _train(settings: DemoSettings, model: str, stages: tqdm) -> dict[str, Any]:
    """Train ``model`` once per learning rate; the run with the best validation IoU wins.

    Each run shows its own step bar under the demo's stage bar."""
    from xtimage.train import Trainer

    steps = settings.steps or _config(model, []).train.steps
    runs = []
    for i, lr in enumerate(settings.lrs, start=1):
        stages.set_postfix_str(f"train {model}, lr {lr:g} ({i}/{len(settings.lrs)})")
        out = settings.out / "runs" / f"{model}_lr{lr:g}"
        overrides = [
            f"train.lr={lr}",
            f"train.steps={steps}",
            f"train.eval_every={steps}",
            f"data.val_samples={settings.val_images}",
            f"train.out={out}",
            *settings.overrides,
        ]
        start = time.monotonic()
        result = Trainer(_config(model, overrides), overwrite=True).fit()
        runs.append(
            {
                "lr": lr,
                "steps": result["step"],
                "val_foreground_iou": result["metrics"].get("foreground_iou"),
                "minutes": (time.monotonic() - start) / 60,
                "checkpoint": str(out / "checkpoints" / "best.safetensors"),
            }
        )
    best = max(runs, key=lambda r: r["val_foreground_iou"] or 0.0)
    return {"runs": runs, "best": best}


def _shipped(model: str) -> dict[str, Any]:
    """The training record and checkpoint of a shipped model."""
    record_path = WEIGHTS_DIR / "training.json"
    checkpoint = WEIGHTS_DIR / f"{model}.safetensors"
    if not checkpoint.exists() or not record_path.exists():
        raise InputError(
            f"{checkpoint}: the demo's shipped weights are missing; run `xt demo "
            f"--from-scratch` to train them (or reinstall xtimage)"
        )
    record = json.loads(record_path.read_text())[model]
    record["best"]["checkpoint"] = str(checkpoint)
    return record


def _evaluate(checkpoint: str, test_images: int, picture: int) -> dict[str, Any]:
    """Score one checkpoint on the held-out set (run in a fresh process)."""
    import torch

    from xtimage.data.synthetic import SyntheticTask
    from xtimage.metrics.segmentation import SegmentationMeter
    from xtimage.predict import Predictor

    torch.set_num_threads(max(1, torch.get_num_threads()))
    preset = _config("xt", [])  # its test-time views apply to the shipped weights too
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", amp="none",
                                          tta=preset.model.tta)  # fmt: skip
    cfg = predictor.config
    task = SyntheticTask("segmentation", size=preset.data.size, region=cfg.region,
                         channels=cfg.in_chans, seed=TEST_SEED, length=test_images,
                         **preset.data.params)
    idle_mb = _memory_mb("VmRSS")
    meter = SegmentationMeter(2)
    start = time.monotonic()
    mask = None
    for i in range(test_images):
        sample = task[i]
        pred = predictor.predict(sample["image"])
        meter.update(torch.from_numpy(pred.mask.astype(np.int64))[None], sample["mask"][None])
        if i == picture:
            mask = pred.mask
    seconds = time.monotonic() - start
    scores = meter.compute()
    peak_mb = _memory_mb("VmHWM")
    return {
        "foreground_iou": float(meter.foreground_iou()),
        "miou": float(scores["miou"]),
        "params": sum(p.numel() for p in predictor.model.parameters()),
        "seconds_per_image": seconds / test_images,
        "peak_mb": peak_mb - idle_mb,
        "mask": mask,
    }


def _memory_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process (Linux), MiB; 0
    where unknown. Not ``ru_maxrss``: that keeps the parent's size from before the spawned
    child's exec, so a child of a large trainer would report the trainer's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _in_fresh_process(fn, *args):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Train or load the three models, score them, write the report; returns metrics."""
    out = settings.out
    if out.exists() and any(out.iterdir()):
        if not settings.force:
            raise ConfigError(f"{out} exists and is not empty; pass --force to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not settings.from_scratch and not (WEIGHTS_DIR / "training.json").exists():
        log.warning("no shipped weights in %s: training the three models from scratch", WEIGHTS_DIR)
        settings.from_scratch = True
    start = time.monotonic()
    stages = tqdm(total=2 * len(MODELS) + 1, desc="demo", unit="stage")

    training: dict[str, dict[str, Any]] = {}
    for model in MODELS:
        if settings.from_scratch:
            training[model] = _train(settings, model, stages)
        else:
            stages.set_postfix_str(f"load {model}")
            training[model] = _shipped(model)
        stages.update()

    picture = 0
    results: dict[str, dict[str, Any]] = {}
    for model in MODELS:
        stages.set_postfix_str(f"evaluate {model}")
        results[model] = _in_fresh_process(
            _evaluate, training[model]["best"]["checkpoint"], settings.test_images, picture
        )
        stages.update()

    stages.set_postfix_str("report")
    metrics = _write_report(settings, training, results, picture, time.monotonic() - start)
    stages.update()
    stages.close()
    return metrics


def _write_report(settings, training, results, picture, seconds) -> dict[str, Any]:
    from xtimage.data.synthetic import SyntheticTask

    out = settings.out
    cfg = _config("xt", [])
    task = SyntheticTask("segmentation", size=cfg.data.size, region=cfg.model.region,
                         channels=cfg.model.in_chans, seed=TEST_SEED,
                         length=settings.test_images, **cfg.data.params)
    sample = task.sample(picture)
    ceilings = task.ceilings(n=settings.test_images)  # on the very images scored
    image = sample.image[0]

    # The zoom: a window on the target objects, at full resolution and as the
    # downsampled model sees it (area-averaged to one region, shown back at full size).
    fg = np.argwhere(sample.mask > 0)
    cy, cx = fg[len(fg) // 2] if len(fg) else (image.shape[0] // 2, image.shape[1] // 2)
    zoom = 48
    top = int(np.clip(cy - zoom // 2, 0, image.shape[0] - zoom))
    left = int(np.clip(cx - zoom // 2, 0, image.shape[1] - zoom))
    factor = image.shape[0] // cfg.model.region
    shrunk = image.reshape(cfg.model.region, factor, -1, factor).mean((1, 3))
    seen = np.kron(shrunk, np.ones((factor, factor)))
    crop = (slice(top, top + zoom), slice(left, left + zoom))

    box = (top, left, zoom, zoom)
    panels = [("input (red: the zoom)", image), ("ground truth", sample.mask.astype(float))]
    panels += [(f"{LABELS[m]} mask", results[m]["mask"].astype(float)) for m in MODELS]
    save_panels(out / "predictions.png", panels, cmap="gray", boxes={0: box}, columns=3)
    save_panels(
        out / "zoom.png",
        [("input (red: the zoom)", image), ("zoom at full resolution", image[crop]),
         ("zoom as downsample sees it", seen[crop])],
        cmap="gray", boxes={0: box}, frame=(1, 2),
    )  # fmt: skip
    figures = [
        Figure("predictions.png", "A held-out image, its ground truth and each model's mask "
               "(white: the objects to find)."),
        Figure("zoom.png", f"The {zoom} x {zoom} px red box: the 1-px textures at full "
               "resolution (middle), and the same area after shrinking the image to one "
               "region (right), all the downsample model has to go on."),
    ]
    source = "trained from scratch in this run" if settings.from_scratch else (
        "shipped weights (xtimage/assets/demo), trained by the project with "
        "xt demo --from-scratch")
    table = [["model", "foreground IoU", "mIoU", "ceiling", "parameters", "lr",
              "train steps", "train min", "eval peak MB", "s / image"]]
    models: dict[str, dict[str, Any]] = {}
    for m in MODELS:
        r, best = results[m], training[m]["best"]
        ceiling = 1.0 if m == "xt" else ceilings["crop" if m == "crop" else "downsample"]
        models[m] = {k: v for k, v in r.items() if k != "mask"}
        models[m].update(
            lr=best["lr"], steps=best["steps"], train_minutes=best["minutes"],
            ceiling=ceiling, sweep=training[m]["runs"],
        )
        table.append([LABELS[m], f"{r['foreground_iou']:.3f}", f"{r['miou']:.3f}",
                      f"{ceiling:.3f}", f"{r['params']:,}", f"{best['lr']:g}",
                      str(best["steps"]), f"{best['minutes']:.1f}", f"{r['peak_mb']:.0f}",
                      f"{r['seconds_per_image']:.2f}"])
    sweep = [["model", "learning rate", "validation foreground IoU", "kept"]]
    for m in MODELS:
        for run in training[m]["runs"]:
            kept = "best" if run["lr"] == training[m]["best"]["lr"] else ""
            sweep.append([LABELS[m], f"{run['lr']:g}", f"{run['val_foreground_iou'] or 0:.3f}",
                          kept])  # fmt: skip
    commands = "```\n" + "\n".join(
        f"xt train {RECIPE} model.baseline={m} train.lr={training[m]['best']['lr']:g} "
        f"train.out=runs/demo_{m}\nxt eval runs/demo_{m}/checkpoints/best.safetensors"
        for m in MODELS) + "\n```"
    metrics = {
        "models": models,
        "source": source,
        "test_images": settings.test_images,
        "ceilings": ceilings,
        "wall_seconds": seconds,
    }
    Report(
        title="xtimage demo: context pays on large images",
        intro=[
            "Task: segment the objects whose 1-pixel texture matches the key shape, which "
            "usually lies in another region. Crop-only cannot see the key's texture from "
            "most regions; downsampling erases every texture. xT sees both.",
            f"Weights: {source}. Scores are pooled over {settings.test_images} held-out "
            f"images, each answer averaged over {VIEW_NAMES[cfg.model.tta]} "
            f"(model.tta); the ceiling is the best score possible for what each model sees.",
        ],
        table=table,
        figures=figures,
        sections=[
            ("Learning-rate sweep (validation foreground IoU)", sweep),
            ("Reproduce each model", commands),
        ],
        metrics=metrics,
    ).write(out)
    return metrics
