"""`xt train`: train a model from a config preset or file, or resume a run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xtimage.errors import ConfigError

ABOUT = """Train a model from a preset or YAML file. Overrides are KEY=VALUE with dotted keys
(values read as YAML); an unknown key lists the allowed ones. The run folder (train.out)
gets config.yaml, metrics.jsonl and checkpoints/{last,best}.safetensors. Several GPUs (or
CPU processes): torchrun --nproc_per_node 4 -m xtimage.cli train my.yaml
"""

EXAMPLE = """examples:
  xt train synthetic_seg                          # a preset (xtimage/presets/)
  xt train my.yaml train.steps=200 model.context=hyper model.context_kwargs.depth=2
  xt train --resume runs/seg train.steps=400      # continue (more steps)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (config preset or YAML file, KEY=VALUE overrides)",
        description=ABOUT,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="preset name or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.lr=3e-4")
    p.add_argument("--resume", metavar="RUN", help="run folder or checkpoint to continue")
    p.add_argument("--overwrite", action="store_true", help="start again in a used run folder")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.set_defaults(func=run)


def resolve(args: argparse.Namespace):
    """The run config: a preset/file (or the resumed run's own config) plus overrides."""
    from xtimage.config import load_config

    overrides = list(args.overrides)
    source = args.config
    if source is not None and "=" in source:  # an override, not a config
        overrides.insert(0, source)
        source = None
    if args.resume:
        from xtimage.checkpoint import read_checkpoint

        if source is not None:
            raise ConfigError(
                "--resume continues the run's own config; give overrides only, not a config"
            )
        if Path(args.resume).is_dir() and not any(o.startswith("train.out=") for o in overrides):
            overrides.insert(0, f"train.out={args.resume}")  # go on writing where it was
        return load_config(read_checkpoint(args.resume).config.to_dict(), overrides)
    if source is None:
        raise ConfigError("give a config (e.g. xt train synthetic_seg) or --resume RUN")
    return load_config(source, overrides)


def run(args: argparse.Namespace) -> int:
    config = resolve(args)  # config errors are reported before torch is imported

    from xtimage.distributed import cleanup
    from xtimage.train import Trainer

    trainer = Trainer(config, resume=args.resume, overwrite=args.overwrite)
    try:
        result = trainer.fit()
    finally:
        cleanup()
    if not trainer.world.main:
        return 0
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    loss = result["loss"]
    last = f", last loss {loss:.4f}" if loss is not None else ""
    steps, why = f"{result['step']}", ""
    if result["stopped"] == "time":
        steps = f"{result['step']} of {trainer.total_steps}"
        why = (
            f"; stopped by the time limit (train.max_minutes="
            f"{trainer.config.train.max_minutes}), the last model evaluated"
        )
    print(f"trained {steps} steps (epoch {result['epoch']}){last}{why}")
    for key, value in result["metrics"].items():
        if isinstance(value, int | float):
            print(f"  val {key:<16} {value:.4f}")
    print(f"run folder: {result['run_dir']} (checkpoints/best.safetensors, last.safetensors)")
    return 0
