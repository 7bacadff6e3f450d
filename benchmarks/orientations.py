"""Does a trained model answer the same in every orientation? One run, eight views.

The built-in tasks' textures have a period of 2 px, the stride of a region encoder's
stem, so a flip or a quarter turn changes which phase of a texture the stem's sampling
grid sees (stripes on the even rows become stripes on the odd ones). The tasks' answers
do not change, and training turns and flips its scenes (`xtimage.data.sampling.Augment`),
so a model that has learnt a texture should know it in all eight views. This scores a
`context_pays.py` run's best checkpoint on its held-out test scenes in each of the eight
views of the dihedral group (each answer turned back), and on the average of the eight
views' class probabilities (test-time augmentation), so that a failure can be told apart:
a model that cannot tell two textures apart fails in every view; one that learnt a
shortcut through the phase fails in some.

    python benchmarks/orientations.py runs/context_pays/film_max_partners_late/key-xt-s3-6000

Prints a table and writes JSON rows to benchmarks/results/orientations.json.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, print_table, save_rows  # noqa: E402
from context_pays import TEST_SEED  # noqa: E402

VIEWS = [(turns, flip) for turns in range(4) for flip in (False, True)]


def view(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """Turn the last two axes by ``turns`` quarters (counter-clockwise), then mirror."""
    x = torch.rot90(x, turns, (-2, -1))
    return x.flip(-1) if flip else x


def unview(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """The inverse of `view`."""
    x = x.flip(-1) if flip else x
    return torch.rot90(x, -turns, (-2, -1))


def score(probs: torch.Tensor, target: torch.Tensor) -> float:
    """Top-1 of (N, K) probabilities, or pooled foreground IoU of (N, K, H, W) ones, by
    the meters the trainer scores with."""
    from xtimage.metrics.classification import ClassificationMeter
    from xtimage.metrics.segmentation import SegmentationMeter

    if probs.dim() == 2:
        meter = ClassificationMeter(probs.shape[1], topk=(1,))
        meter.update(probs, target)
        return meter.compute()["top1"]
    meter = SegmentationMeter(probs.shape[1])
    meter.update(probs, target)
    return meter.foreground_iou()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", nargs="+", type=Path, help="context_pays.py run folders or checkpoint files"
    )
    parser.add_argument(
        "--test-images",
        type=int,
        default=None,
        help="default: 200 for a label, 48 for a mask (as context_pays.py)",
    )
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"],
                        help="of a run folder")  # fmt: skip
    args = parser.parse_args()

    from xtimage.checkpoint import read_checkpoint, resolve_checkpoint
    from xtimage.data.synthetic import synthetic
    from xtimage.predict import Predictor

    rows = []
    for run in args.runs:
        checkpoint = resolve_checkpoint(run, best=args.checkpoint == "best")
        config = read_checkpoint(checkpoint).config
        label = config.model.head == "classification"
        n = args.test_images or (200 if label else 48)
        held_out = replace(config.data, seed=TEST_SEED, train_samples=n, val_samples=0)
        test = synthetic(config.model, held_out).train
        model = Predictor.from_checkpoint(str(checkpoint), device="cpu", amp="none").model
        model.eval()
        images = torch.stack([test[i]["image"] for i in range(n)])  # (N, C, H, W)
        target = torch.stack([test[i]["label" if label else "mask"] for i in range(n)])
        total, by_view = 0, {}
        for turns, flip in VIEWS:
            with torch.no_grad():
                out = torch.cat([model(view(b, turns, flip)) for b in images.split(8)])
            probs = out.softmax(1) if label else unview(out.softmax(1), turns, flip)
            by_view[f"rot{90 * turns}{'+flip' if flip else ''}"] = round(score(probs, target), 4)
            total = total + probs
        task = config.data.params.get("task", config.model.head)
        row = {"run": str(run), "task": task, "test_images": n,
               "checkpoint": args.checkpoint,
               "metric": "top1" if label else "foreground_iou", "views": by_view,
               "identity": by_view["rot0"], "worst": min(by_view.values()),
               "mean_of_views": round(sum(by_view.values()) / len(by_view), 4),
               "averaged": round(score(total / len(VIEWS), target), 4), **machine()}  # fmt: skip
        save_rows("orientations", [row], ("run", "checkpoint", "test_images"))
        rows.append(row)
        print(f"{run}: {by_view}", flush=True)
    print_table(
        "Test score in each of the eight views, and of their averaged probabilities",
        rows,
        [
            ("run", "run", ""),
            ("identity", "identity", ".3f"),
            ("worst view", "worst", ".3f"),
            ("mean of views", "mean_of_views", ".3f"),
            ("8 views averaged", "averaged", ".3f"),
        ],
    )


if __name__ == "__main__":
    main()
