"""Does far context pay? xT against crop-only and downsample, one recipe, several seeds.

Every run goes through the public `Trainer` with the ``demo`` preset and one of the
recipes below (``--recipe``); only the task (and the head it needs) and ``model.baseline``
change between runs of a recipe:

- ``demo``: the demo preset as shipped: ``film_max`` below (``film_scale`` in sessions
  29-31), the 8 scenes' 128 regions trained at once (``train.mode=auto`` with
  ``region_batch=128``), answers averaged over the eight flips and turns (``model.tta=d4``);
  so on the demo task, whose 1,200 steps end before the partners join, it is
  ``film_max_partners_late_tta`` without the partners that never moved;
  ``demo_upright`` and ``demo_upright_lr1``: session 30's preset (``film_scale``, no
  views) without flips or turns, the jitter kept (``data.turns=false``), at the demo
  sweep's two rates;
- ``demo_batch``: the demo preset of sessions 11-28: a batch-norm decoder of width 32 fed
  the tokens by concatenation, tokens read from all five backbone maps, 1,200 steps of 8
  scenes; trains only all at once (no ``key_large``). Every recipe but the ``demo`` ones
  spells out the keys that preset set (`PRESET_UNTIL_28`), so that its rows keep their meaning;
- ``film``: a per-pixel (layer-norm) decoder of width 64 that the contextualised tokens
  scale and shift (FiLM), tokens from all five maps, 600 steps of 4 scenes; trains in
  every mode;
- ``batch``: the demo preset until session 10: the batch-norm decoder at width 64, tokens
  from the deepest map only, 600 steps of 4 scenes; all at once only.
- ``film_scale``: the ``film`` head with everything else of ``demo_batch`` (width 32,
  1,200 steps of 8 scenes);
- ``film_scale_still``: ``film_scale`` without flips, turns or jitter (session 28: the
  streamable head tried as the demo's recipe); ``film_scale_lr1`` and
  ``film_scale_still_lr1`` the same at the demo sweep's other learning rate, 1e-3;
- ``film_max``: ``film_scale`` with tokens that read each shallower map's maximum over
  the token's cell, not its mean (``model.token_reduce=max``);
- ``film_max_partners``: ``film_max`` with each token also reading the tokens at its
  left-right, top-bottom and point mirrors (``model.partners``,
  `xtimage.encoders.context.partners`; the crop baseline has no context, so none).
  Its partner projections start at zero since session 18; session 17's rows,
  whose projections PyTorch drew at random, are kept as ``film_max_partners_random``.
- ``film_max_partners_slow``: the partner projections learn at a tenth of the rate
  (``train.lr_scale``; not the baselines', which have no partner to slow); with
  ``--steps 4800`` it meets the target on every ``key`` and ``pairs`` seed run
  (docs/context_pays.md, sessions 21-22); ``_slow3`` at three tenths;
- ``film_max_partners_late``: ``_slow`` with the partner projections held at zero for the
  first 1,200 steps (``train.join_at``): until then the run is ``film_max``'s exactly;
- ``film_max_partners_late_still``: ``_late`` without flips, turns or jitter
  (``data.augment=false``): trained in the one view it is scored in (session 25);
- ``film_max_partners_late_upright``: ``_late`` without flips or turns, the photometric
  jitter kept (``data.turns=false``, session 26);
- ``film_max_partners_late_lr1``: ``_late`` at the demo sweep's other rate, 1e-3;
- ``film_max_partners_late_tta``: ``_late`` validated and tested on the average of the
  class probabilities of its eight flips and turns (``model.tta=d4``, session 31); the
  baselines' ceilings hold for them too (a view of a crop is a crop of the view);
  ``_tta_lr1`` the same at 1e-3;
- ``film_max_partners_gate``: a per-channel gate on a fixed random rotation of each
  partner in place of the D x D projection (``model.partner_proj=gate``);
- ``film_instance`` and ``film_max_partners_instance``: the decoder normalised per
  channel over each region's pixels (``model.decoder_norm=instance``).

Tasks (`xtimage.data.synthetic`, docs/synthetic.md), each built so that both baselines
provably lack what it needs:

- ``key``: segment the objects textured like a far key (the demo's task);
- ``demo``: the same task at the demo's own size (256 px images, regions of 64 px);
- ``pairs``: segment both objects of a point-symmetric twin pair when their textures
  agree; no object is special on its own;
- ``sum``: classify by the sum of two far keys' textures modulo 4 (attention pooling and
  a linear classifier); ``sum_mlp`` the same with mean pooling and an MLP;
- ``match``: classify by the texture of the candidate as bright as a far key;
- ``present``: is the key's texture among the objects' (classification, two classes);
  ``present2`` the same with two textures: the objects all wear one; does the key?
- ``agree``: which of two far keys, a bright and a dim one, wear the objects' texture
  (classification, four classes, two textures; no sum of per-region terms is right on
  more than 5 of its 8 layouts);
- ``locate``: which quadrant's object wears the key's texture (classification, four
  classes; no sum of per-region terms is right on more than 5 of its 8 layouts);
- ``key_large``: the key task on 512 px images, 16 x 16 regions, trained in exact mode
  (the regions of an image never on the autograd tape at once) with a global context;
- ``key_512``: the key task on 512 px images, 16 x 16 regions of 32 px, fine-tuned in
  exact mode from the same recipe, model and seed's run on ``key`` (``--init-steps``
  names that run's steps), as ``demo_large`` below;
- ``demo_large``: the demo task on 1024 px images, 16 x 16 regions of 64 px, one
  segment of Transformer-XL over all 1,024 tokens, fine-tuned in exact mode
  (``train.init``) from the same recipe, model and seed's run on ``demo``, the backbone's
  batch norms frozen (``model.frozen_norm``): the way a large-image model is trained when
  its scenes are too costly to learn from scratch.

``key``, ``pairs`` and ``sum`` run on 128 px images of 4 x 4 regions of 32 px (a quarter
of the demo's pixels, so that three seeds of everything fit in an hour of a 2-core CPU).
Each run trains on the task's seed-0 scenes, keeps the checkpoint with the best
validation score (seed-1 scenes), and is scored on held-out seed-1000 scenes. The
baselines' ceilings (the best scores any crop-only or downsample predictor can reach)
are computed from the scenes (`SyntheticTask.ceilings`). Runs are resumable: a row
already in the results is not run again unless ``--force``, and a finished run folder
(``runs/context_pays/RECIPE/TASK-MODEL-sSEED-STEPS``) is scored without training again.

    python benchmarks/context_pays.py                       # everything (hours on a CPU)
    python benchmarks/context_pays.py --tasks key pairs --seeds 0 1 2

Two at once on a 2-core machine: give each one thread (``OMP_NUM_THREADS=1``); two runs
of two threads each took about 7 s a step on the 128 px pairs task, one thread each
0.4 s.

Prints a table and writes JSON rows to benchmarks/results/context_pays.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, print_table, save_rows  # noqa: E402
from xtimage.config import load_config  # noqa: E402  (no torch)

PRESET = "demo"
# what the demo preset set until session 28 (and its views, none until session 31, and
# its token reduction, the mean until session 31); every recipe but the demo ones starts
# from it
PRESET_UNTIL_28 = ["model.decoder_norm=batch", "model.decoder_fusion=concat",
                   "data.augment=true", "train.region_batch=64", "model.tta=none",
                   "model.token_reduce=mean"]  # fmt: skip
SESSION_10 = ["model.decoder_channels=64", "train.batch_size=4", "train.steps=600"]
# the film head at the demo's scale; direct mode gives exact mode's gradients, faster
# (a later override of the same key wins: the instance-norm recipes below rely on it)
FILM_SCALE = ["model.decoder_norm=layer", "model.decoder_fusion=film", "train.mode=direct"]
# the same, the shallower maps reduced to the token grid by their maxima, not means
FILM_MAX = [*FILM_SCALE, "model.token_reduce=max"]
# the same, each token also reading its left-right, top-bottom and point mirrors
PARTNERS = [*FILM_MAX, "model.partners=[hflip, vflip, rot180]"]
SLOW = "train.lr_scale={context.proj: 0.1}"  # the partner projections at a tenth of the rate
# the same, the partner projections held at zero for the first 1,200 steps
LATE = [*PARTNERS, SLOW, "train.join_at={context.proj: 1200}"]
RECIPES_UNTIL_28: dict[str, list[str]] = {
    "demo_batch": [],
    "film": [*SESSION_10, "model.token_maps=5", "model.decoder_norm=layer",
             "model.decoder_fusion=film"],  # fmt: skip
    "batch": [*SESSION_10, "model.token_maps=1"],
    "film_scale": FILM_SCALE,
    "film_scale_still": [*FILM_SCALE, "data.augment=false"],
    # the demo's other learning rate (xt demo --from-scratch sweeps 1e-3 and 2e-3)
    "film_scale_lr1": [*FILM_SCALE, "train.lr=1e-3"],
    "film_scale_still_lr1": [*FILM_SCALE, "data.augment=false", "train.lr=1e-3"],
    "film_max": FILM_MAX,
    "film_max_partners": PARTNERS,
    "film_max_partners_slow": [*PARTNERS, SLOW],
    "film_max_partners_late": LATE,
    # the same without flips, turns or jitter: every scene in the one view it is tested in
    # (session 25: trained models knew the textures in some views only; a stem pooling the
    # phases, tried as film_max_partners_late_stem, did not learn them and is not kept)
    "film_max_partners_late_still": [*LATE, "data.augment=false"],
    # the same with the photometric jitter kept: flips and turns alone off
    "film_max_partners_late_upright": [*LATE, "data.turns=false"],
    # the demo sweep's other rate: augmented _late as one recipe for both sizes (session 31)
    "film_max_partners_late_lr1": [*LATE, "train.lr=1e-3"],
    # _late validated and tested on the mean of the eight flips and turns (model.tta=d4)
    "film_max_partners_late_tta": [*LATE, "model.tta=d4"],
    "film_max_partners_late_tta_lr1": [*LATE, "model.tta=d4", "train.lr=1e-3"],
    # the partner projections learning at three tenths of the rate
    "film_max_partners_slow3": [*PARTNERS, "train.lr_scale={context.proj: 0.3}"],
    # at the full rate, each partner rotated at random once, then gated per channel
    "film_max_partners_gate": [*PARTNERS, "model.partner_proj=gate"],
    # film_scale with each block normalised per channel over each region's pixels
    "film_instance": [*FILM_SCALE, "model.decoder_norm=instance"],
    # film_max_partners with instance norms
    "film_max_partners_instance": [*PARTNERS, "model.decoder_norm=instance"],
}  # fmt: skip
# the demo preset as it is (the film head since session 29, answers averaged over 8 views
# since 31, max-reduced tokens since 32), and session 30's preset (mean-reduced tokens, no
# views) without flips and turns, the jitter kept, at either rate of its sweep
UPRIGHT_30 = ["data.turns=false", "model.tta=none", "model.token_reduce=mean"]
DEMO_RECIPES: dict[str, list[str]] = {
    "demo": [],
    "demo_upright": UPRIGHT_30,
    "demo_upright_lr1": [*UPRIGHT_30, "train.lr=1e-3"],
}
RECIPES = {**DEMO_RECIPES, **{k: [*PRESET_UNTIL_28, *v] for k, v in RECIPES_UNTIL_28.items()}}
ALL_AT_ONCE = ("demo_batch", "batch")  # batch-norm decoders: no exact or streaming training
MODELS = ("xt", "crop", "downsample")
TEST_SEED = 1000
SMALL = ["data.size=128", "model.region=32"]  # 4 x 4 regions: a quarter of the demo's pixels
TASKS: dict[str, list[str]] = {
    "key": [*SMALL],
    "demo": [],  # the key task at the demo's own size: 256 px, 4 x 4 regions of 64 px
    "pairs": [*SMALL, "data.params={textures: 4, task: pairs}"],
    "sum": [
        *SMALL,
        "model.head=classification",
        "model.num_classes=4",
        "model.outputs=[]",
        "model.class_pool=attention",
        "data.params={textures: 4}",
    ],
    # the same with the xT release's classifier: mean pooling, then an MLP (a DeepSets
    # model for crop-only: it sees every region's content, only not their interactions)
    "sum_mlp": [
        *SMALL,
        "model.head=classification",
        "model.num_classes=4",
        "model.outputs=[]",
        "model.class_pool=mean",
        "model.class_mlp_ratio=4",
        "data.params={textures: 4}",
    ],
    # the texture of the candidate as bright as a far key (docs/synthetic.md): one region,
    # or the downsampled image, is blind to it; a pooled linear crop classifier is not
    "match": [
        *SMALL,
        "model.head=classification",
        "model.num_classes=4",
        "model.outputs=[]",
        "model.class_pool=attention",
        "data.params={textures: 4, task: match}",
    ],
    # is the key's texture among the objects' (half of the textures, drawn per scene)?
    # every region alone and the downsampled image see a yes half the time
    "present": [
        *SMALL,
        "model.head=classification",
        "model.num_classes=2",
        "model.outputs=[]",
        "model.class_pool=attention",
        "data.params={textures: 4, task: present}",
    ],
    # the same with two textures: all objects wear one, and the question is whether the
    # key wears it too (an exclusive or of two far places)
    "present2": [
        *SMALL,
        "model.head=classification",
        "model.num_classes=2",
        "model.outputs=[]",
        "model.class_pool=attention",
        "data.params={textures: 2, task: present}",
    ],
    # which of two far keys (a bright and a dim one) wear the objects' texture? (two
    # textures: two exclusive ors at once; a pooled linear crop classifier is right on at
    # most 5 of 8 layouts)
    "agree": [
        *SMALL,
        "model.head=classification",
        "model.num_classes=4",
        "model.outputs=[]",
        "model.class_pool=attention",
        "data.params={textures: 2, task: agree}",
    ],
    # which quadrant's object wears the key's texture? (two textures: the odd one out of
    # four far places; a pooled linear crop classifier is right on at most 5 of 8 layouts)
    "locate": [
        *SMALL,
        "model.head=classification",
        "model.num_classes=4",
        "model.outputs=[]",
        "model.class_pool=attention",
        "data.params={textures: 2, task: locate}",
    ],
    "key_large": [
        "data.size=512",
        "model.region=32",
        "model.context=hyper",
        "model.context_kwargs={depth: 2, heads: 4}",
        "train.mode=exact",
        "train.batch_size=1",
        "train.region_batch=64",
    ],
    # the key task at 512 px, 16 x 16 regions of 32 px, fine-tuned in exact mode from the
    # recipe's run on key, as demo_large is from demo's
    "key_512": [
        "data.size=512",
        "model.region=32",
        "data.val_samples=8",
        "model.context_kwargs.segment_len=256",  # every token sees every other
        "model.context_kwargs.mem_len=0",
        "model.frozen_norm=true",
        "train.mode=exact",
        "train.batch_size=2",
        "train.steps=150",
        "train.warmup=15",
        "train.lr=5e-4",
    ],
    "demo_large": [
        "data.size=1024",
        "data.val_samples=8",
        "model.context_kwargs.segment_len=1024",  # every token sees every other
        "model.context_kwargs.mem_len=0",
        "model.frozen_norm=true",  # the backbone's batch norms keep the demo run's statistics
        "train.mode=exact",
        "train.batch_size=2",
        "train.steps=150",
        "train.warmup=15",
        "train.lr=5e-4",
    ],
}
# fine-tuned from the run on this task (same recipe, model, seed; a recipe's train.join_at
# counts the fine-tune's own steps: the partners of the late recipe stay as trained)
INIT = {"demo_large": "demo", "key_512": "key"}
RUNS = Path("runs/context_pays")
# the rest: foreground IoU
METRIC = dict.fromkeys(
    ("sum", "sum_mlp", "match", "present", "present2", "agree", "locate"), "top1"
)
# segment the objects textured like a key
KEYED = ("key", "demo", "key_large", "demo_large", "key_512")
GROUP = ("recipe", "task", "steps", "seed")  # with the model: a row's key


def overrides(recipe: str, task: str, model: str, seed: int, steps: int | None,
              out: Path, init_steps: int | None = None) -> list[str]:  # fmt: skip
    """The recipe's overrides for one run (``init_steps``: the steps of the run it starts
    from, for a task in `INIT`; default the recipe's)."""
    extra = [f"train.steps={steps}", f"train.eval_every={max(steps // 4, 1)}"] if steps else []
    if model == "downsample" and needs_exact(task):
        extra += ["train.mode=direct"]  # one region per image
    if model == "downsample" and task == "key_large":
        extra += ["train.batch_size=4"]
    if task in INIT:
        extra += [f"train.init={run_folder(recipe, INIT[task], model, seed, init_steps)}"]
    recipe_overrides = RECIPES[recipe]
    if model != "xt":
        # no partner to slow: crop-only has no context, downsample's one token is its own mirror
        recipe_overrides = [
            o for o in recipe_overrides if not o.startswith(("train.lr_scale=", "train.join_at="))
        ]
    return [*recipe_overrides, *TASKS[task], f"model.baseline={model}", f"train.seed={seed}",
            *extra, f"train.out={out}"]  # fmt: skip


def needs_exact(task: str) -> bool:
    """Whether the task trains xT in exact mode (too large to train all at once)."""
    return "train.mode=exact" in TASKS[task]


def task_steps(recipe: str, task: str) -> int:
    """The recipe's training steps for the task."""
    return load_config(PRESET, [*RECIPES[recipe], *TASKS[task]]).train.steps


def run_folder(recipe: str, task: str, model: str, seed: int, steps: int | None) -> Path:
    """Where a run trains and stays (so that a later task can start from it)."""
    return RUNS / recipe / f"{task}-{model}-s{seed}-{steps or task_steps(recipe, task)}"


def finished(config: Any) -> bool:
    """Whether ``train.out`` holds this config's run, trained to its last step."""
    from xtimage.checkpoint import read_checkpoint

    run = Path(config.train.out)
    if not (run / "checkpoints" / "last.safetensors").exists():
        return False
    same = ("progress", "out")  # what does not change the trained weights
    saved = load_config(run / "config.yaml")
    if replace(saved.train, **{k: getattr(config.train, k) for k in same}) != config.train:
        return False
    done = read_checkpoint(run).step == config.train.steps
    return done and (saved.model, saved.data) == (config.model, config.data)


def run_one(recipe: str, task: str, model: str, seed: int, steps: int | None,
            test_images: int, init_steps: int | None = None) -> dict:  # fmt: skip
    """Train (unless done before) and score one (task, model, seed); runs in its own
    process."""
    import torch

    from xtimage.data.synthetic import synthetic
    from xtimage.evaluate import evaluate
    from xtimage.predict import Predictor
    from xtimage.train import Trainer

    run = run_folder(recipe, task, model, seed, steps)
    config = load_config(PRESET, overrides(recipe, task, model, seed, steps, run, init_steps))
    if not finished(config):
        Trainer(config, overwrite=True).fit()
    predictor = Predictor.from_checkpoint(str(run / "checkpoints" / "best.safetensors"),
                                          device="cpu", amp="none")  # fmt: skip
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    minutes = max(r.get("time_s", 0) for r in logged) / 60  # training, as the run logged it
    metric = METRIC.get(task, "foreground_iou")
    validation = [[r["step"], round(r[metric], 4)] for r in logged if metric in r]
    # the training data set's task, on held-out scenes
    held_out = replace(config.data, seed=TEST_SEED, train_samples=test_images, val_samples=0)
    test = synthetic(config.model, held_out).train
    scores = evaluate(predictor, test)
    marked = marked_by_key(predictor, test) if task in KEYED else None
    return {
        "recipe": recipe,
        "task": task,
        "model": model,
        "seed": seed,
        "steps": config.train.steps,
        "init": INIT.get(task),  # the task whose run it started from
        "init_steps": init_steps or (task_steps(recipe, INIT[task]) if task in INIT else None),
        "metric": metric,
        "score": float(scores[metric]),
        "ceilings": test.ceilings(200),
        "train_minutes": round(minutes, 2),
        "threads": torch.get_num_threads(),
        "mode": config.train.mode,
        "test_images": test_images,
        "validation": validation,  # [step, score] of each evaluation
        "marked": marked,  # key tasks: see marked_by_key
    }


def marked_by_key(predictor: Any, test: Any) -> list[list[float | None]]:
    """Row k, column t: the fraction of the pixels of objects of texture t that the model
    marks when the key's texture is k. The diagonal is recall; off it, the textures the
    model takes for the key's (a model that tells only two pairs of textures apart marks
    two columns a row, and sits near half the ceiling's IoU)."""
    import numpy as np

    k = test.textures
    marked, count = np.zeros((k, k)), np.zeros((k, k))
    for i in range(len(test)):
        (key, *_), objects = test.texture_layout(i)
        fg = predictor.predict(test[i]["image"]).mask > 0  # (H, W), the argmax as scored
        for t in range(k):
            on = objects == t
            marked[key, t] += fg[on].sum()
            count[key, t] += on.sum()
    rows = np.where(count > 0, marked / np.maximum(count, 1), np.nan).round(3)
    return [[None if np.isnan(v) else float(v) for v in row] for row in rows]


def _in_child(*args: Any) -> dict:
    """`run_one(*args)` in a fresh process (no state shared between runs)."""
    cmd = [sys.executable, __file__, "--child", json.dumps(args)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict]) -> list[dict]:
    """Per recipe, task, steps and seed: xT's margin over the better baseline."""
    by = {(*(r[k] for k in GROUP), r["model"]): r["score"] for r in rows}
    out = []
    for group in sorted({tuple(r[k] for k in GROUP) for r in rows}):
        s = {m: by.get((*group, m)) for m in MODELS}
        if None in s.values():
            continue
        margin = s["xt"] - max(s["crop"], s["downsample"])  # type: ignore[type-var]
        out.append({**dict(zip(GROUP, group, strict=True)), **s, "margin": margin,
                    "met": margin >= 0.3})  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="demo", choices=list(RECIPES))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--test-images", type=int, default=48)
    parser.add_argument("--init-steps", type=int, default=None,
                        help="fine-tuned tasks: the steps of the run they start from "
                             "(default: the recipe's)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="rerun rows already saved")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(*json.loads(args.child))))
        return
    path = RESULTS / "context_pays.json"
    key = (*GROUP, "model")
    done = {tuple(r[k] for k in key) for r in json.loads(path.read_text())} \
        if path.exists() and not args.force else set()  # fmt: skip
    for task in args.tasks:
        if needs_exact(task) and args.recipe in ALL_AT_ONCE:
            print(f"skipping {task}: the {args.recipe} recipe trains only all at once, "
                  "it needs exact mode")  # fmt: skip
            continue
        steps = args.steps or task_steps(args.recipe, task)
        for seed in args.seeds:
            for model in args.models:
                if (args.recipe, task, steps, seed, model) in done:
                    continue
                run = (args.recipe, task, model, seed, args.steps, args.test_images,
                       args.init_steps)  # fmt: skip
                row = {**_in_child(*run), **machine()}
                save_rows("context_pays", [row], key)
                score = f"{row['metric']} {row['score']:.3f} ({row['train_minutes']:.1f} min)"
                print(f"{args.recipe:5s} {task:10s} {model:10s} seed {seed}: {score}", flush=True)
    rows: list[Any] = json.loads(path.read_text())
    print_table(
        "xT against its baselines (test score; margin = xT - the better baseline)",
        summarise(rows),
        [
            ("recipe", "recipe", ""),
            ("task", "task", ""),
            ("steps", "steps", "d"),
            ("seed", "seed", "d"),
            ("xT", "xt", ".3f"),
            ("crop-only", "crop", ".3f"),
            ("downsample", "downsample", ".3f"),
            ("margin", "margin", "+.3f"),
            ("met", "met", ""),
        ],  # fmt: skip
    )


if __name__ == "__main__":
    main()
