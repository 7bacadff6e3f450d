"""Where does a key-task model lose the key's texture? Linear probes on its tokens.

A model trained on the built-in key task (the demo's; `benchmarks/context_pays.py`,
docs/context_pays.md) must carry the key's texture from the key's region to every far
pixel. This fits a 4-way linear classifier (softmax regression on standardised features)
of the key's texture on three sets of a checkpoint's tokens, each region's tokens
averaged:

- ``raw, key region``: the key region's tokens from the region encoder, before context;
- ``context, key region``: the same after the context encoder;
- ``context, far regions``: every other region's tokens after the context encoder;

and, for the other side of the comparison, the *object's* texture from

- ``pixels, objects``: the decoder's last-block features at object pixels (200 a scene).

A texture pair at chance in the first set is lost before any context runs; one separable
there and at chance in the third is lost by the context; one separable in the third and
the fourth but still confused in the model's masks (`context_pays.marked_by_key`) is lost
by the decoder's comparison. Held-out scenes (seed 1000), 70% to fit, 30% to score.

    python benchmarks/key_probes.py runs/demo/checkpoints/best.safetensors --label demo

Prints each set's held-out accuracy and confusion (rows: true texture, columns:
predicted) and writes JSON rows to benchmarks/results/key_probes.json.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, save_rows  # noqa: E402

SETS = ("raw, key region", "context, key region", "context, far regions", "pixels, objects")
PIXELS_A_SCENE = 200


def forward_features(model, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass, read by hooks: each region's mean token before and after the
    context, (regions, D) twice, and the dense head's last-block features (the input of
    its output convolution), stitched and resampled to the image, (C, H, W)."""
    from xtimage.tiling import stitch_regions

    seen = {}
    hooks = [
        model.tokenizer.register_forward_hook(lambda m, i, o: seen.update(raw=o)),  # (k, T, D)
        model.context.register_forward_hook(lambda m, i, o: seen.update(ctx=o[0])),  # (1, N, D)
        model.head.out.register_forward_hook(lambda m, i, o: seen.update(pixels=i[0])),
    ]
    try:
        model(image[None])
    finally:
        for hook in hooks:
            hook.remove()
    layout = model.layout(*image.shape[-2:])
    t, d = layout.tokens_per_region, model.dim
    raw = seen["raw"].reshape(-1, t, d).mean(1)
    ctx = seen["ctx"][0, : layout.num_tokens].reshape(-1, t, d).mean(1)
    full = stitch_regions(seen["pixels"][None], layout.plan)  # (1, C, H / s, W / s)
    size = image.shape[-2:]
    return raw, ctx, F.interpolate(full, size=size, mode="bilinear", align_corners=False)[0]


def probe(x: torch.Tensor, y: torch.Tensor, fit: int, classes: int) -> tuple[float, np.ndarray]:
    """Held-out accuracy and row-normalised confusion of softmax regression fitted on
    the first ``fit`` rows."""
    x = ((x - x.mean(0)) / (x.std(0) + 1e-6)).double()
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=500)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x[:fit] @ w + b, y[:fit]) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (x[fit:] @ w + b).argmax(1)
    confusion = np.zeros((classes, classes))
    np.add.at(confusion, (y[fit:].numpy(), predicted.numpy()), 1)
    confusion /= np.maximum(confusion.sum(1, keepdims=True), 1)
    return float((predicted == y[fit:]).double().mean()), confusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a key-task model's checkpoint (.safetensors)")
    parser.add_argument("--images", type=int, default=400, help="held-out scenes probed")
    parser.add_argument("--label", help="names the model in the JSON rows (default: its path)")
    args = parser.parse_args()

    from xtimage.checkpoint import load_model
    from xtimage.data.synthetic import synthetic

    model, ckpt = load_model(args.checkpoint, torch.device("cpu"))
    model.eval()
    config = ckpt.config
    if config.model.margin or config.data.params.get("task") not in (None, "segmentation"):
        sys.exit("key_probes needs a key segmentation model without region margins")
    held_out = replace(config.data, seed=1000, train_samples=args.images, val_samples=0)
    data = synthetic(config.model, held_out).train
    r, columns = config.model.region, data.width // config.model.region
    features: dict[str, list[torch.Tensor]] = {name: [] for name in SETS}
    labels: dict[str, list[int]] = {name: [] for name in SETS}
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for i in range(len(data)):
            sample = data[i]
            (key, *_), objects = data.texture_layout(i)
            ys, xs = np.nonzero((sample["texture"].numpy() > 0) & (objects == -1))  # the keys
            cell = int(ys.mean()) // r * columns + int(xs.mean()) // r
            raw, ctx, pixels = forward_features(model, sample["image"])
            far = [j for j in range(len(raw)) if j != cell]
            for name, rows in zip(SETS, (raw[[cell]], ctx[[cell]], ctx[far]), strict=False):
                features[name].append(rows)
                labels[name] += [key] * len(rows)
            ys, xs = np.nonzero(objects >= 0)
            pick = rng.choice(len(ys), size=min(PIXELS_A_SCENE, len(ys)), replace=False)
            features[SETS[3]].append(pixels[:, ys[pick], xs[pick]].T)
            labels[SETS[3]] += objects[ys[pick], xs[pick]].tolist()
    fit_images = int(0.7 * args.images)
    rows = []
    for name in SETS:
        x, y = torch.cat(features[name]), torch.tensor(labels[name])
        fit = int(0.7 * len(x)) if name == SETS[3] else fit_images * (len(x) // args.images)
        accuracy, confusion = probe(x, y, fit, data.textures)
        print(f"{name}: held-out accuracy {accuracy:.3f}\n{confusion.round(2)}")
        rows.append({"model": args.label or str(args.checkpoint), "set": name,
                     "images": args.images, "accuracy": accuracy,
                     "confusion": confusion.round(3).tolist(), **machine()})  # fmt: skip
    save_rows("key_probes", rows, ("model", "set"))


if __name__ == "__main__":
    main()
