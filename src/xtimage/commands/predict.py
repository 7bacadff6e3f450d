"""`xt predict`: run a checkpoint over image files or folders, writing the outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

ABOUT = """Predict image files with a checkpoint. Writes per input: NAME.json
(classification), NAME.mask.tif [+ NAME.heatmap.tif] (segmentation; GeoTIFF with the
input's CRS for a GeoTIFF input), NAME.boxes.csv and NAME.boxes.geojson (detection); for an
xView3 model, whose inputs are scene folders (or folders of them), SCENE.xview3.csv per
scene and predictions.csv, the challenge's file. Inputs whose outputs exist are skipped
unless --overwrite. Several GPUs: torchrun --nproc_per_node 4 -m xtimage.cli predict ...
"""

EXAMPLE = """examples:
  xt predict runs/seg/checkpoints/best.safetensors scene.tif -o out/
  xt predict runs/seg slides/ -o out/ --heatmap        # a run folder uses its last checkpoint
  xt view out/scene.mask.tif                           # look at the result in a browser
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict image files (TIFF, OME-TIFF, GeoTIFF/COG, slides, PNG...) with a checkpoint",
        description=ABOUT,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="redo inputs already done")
    p.add_argument("--heatmap", action="store_true", help="also write a probability map")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1...")
    p.add_argument("--amp", default="auto", help="auto, none, bf16, fp16")
    p.add_argument("--region-batch", type=int, default=16, help="regions encoded at once")
    p.add_argument("--threshold", type=float, default=0.3, help="detection score threshold")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xtimage.distributed import cleanup, init_distributed
    from xtimage.predict import Predictor
    from xtimage.runtime import resolve_device

    out = Path(args.out)
    world = init_distributed(resolve_device(args.device).type)
    try:
        predictor = Predictor.from_checkpoint(
            args.checkpoint,
            device=args.device,
            region_batch=args.region_batch,
            amp=args.amp,
            threshold=args.threshold,
        )
        files = predictor.task.expand_inputs(args.inputs, out)
        counts = predictor.predict_files(
            files,
            out,
            overwrite=args.overwrite,
            heatmap=args.heatmap,
            progress=not args.quiet,
            world=world,
        )
    finally:
        cleanup()
    if world.size == 1:
        predictor.task.finish_outputs(files, out)
    if world.main:
        print(
            f"predicted {counts['done']} file(s), skipped {counts['skipped']} already done"
            + (f" (this process of {world.size})" if world.size > 1 else "")
            + f"; outputs in {out}"
        )
    return 0
