"""`xt predict`: run a checkpoint over image files or folders, writing the outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

ABOUT = """Predict image files with a checkpoint. Writes per input: NAME.json
(classification), NAME.mask.tif [+ NAME.heatmap.tif] (segmentation; GeoTIFF with the
input's CRS for a GeoTIFF input), NAME.boxes.csv and NAME.boxes.geojson (detection); for an
xView3 model, whose inputs are scene folders (or folders of them), SCENE.xview3.csv per
scene and predictions.csv, the challenge's file. Inputs whose outputs exist are skipped
unless --overwrite (a rerun resumes); a failing input is recorded and the rest go on;
xt_index.csv / .json list every input's outputs, status, error and seconds
(xtimage.archive). Several GPUs or nodes: torchrun ... -m xtimage.cli predict ...
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
    p.add_argument("--channels-last", action="store_true", help="NHWC convolutions (CPU speed)")
    p.add_argument("--lean-memory", action="store_true",
                   help="return freed memory to the system at once: a lower peak, slower")
    p.add_argument("--region-batch", type=int, default=16, help="regions encoded at once")
    p.add_argument("--threshold", type=float, default=0.3, help="detection score threshold")
    p.add_argument("--tta", choices=["none", "flips", "d4"], default=None,
                   help="test-time views to average (default: the model's model.tta)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xtimage.allocator import lean_host_memory
    from xtimage.archive import predict_archive
    from xtimage.distributed import cleanup, init_distributed
    from xtimage.predict import Predictor
    from xtimage.runtime import resolve_device

    if args.lean_memory:
        lean_host_memory()
    out = Path(args.out)
    world = init_distributed(resolve_device(args.device).type)
    try:
        predictor = Predictor.from_checkpoint(
            args.checkpoint,
            device=args.device,
            region_batch=args.region_batch,
            amp=args.amp,
            channels_last=args.channels_last,
            threshold=args.threshold,
            tta=args.tta,
        )
        files = predictor.task.expand_inputs(args.inputs, out)
        result = predict_archive(
            predictor,
            files,
            out,
            overwrite=args.overwrite,
            heatmap=args.heatmap,
            progress=not args.quiet,
            world=world,
        )
    finally:
        cleanup()
    if not world.main:
        return 0
    written = [f for f, row in zip(files, result.rows, strict=True) if row["outputs"]]
    predictor.task.finish_outputs(written, out)  # e.g. xView3's predictions.csv
    counts = result.counts
    print(
        f"predicted {counts['done']} file(s), skipped {counts['skipped']} already done"
        + (f" (this process of {world.size})" if world.size > 1 else "")
        + f"; {len(result.failed)} of {len(result.rows)} input(s) failed; outputs in {out}, "
        f"index {result.index[0].name}"
    )
    for row in result.failed:
        print(f"  {row['input']}: {row['error']}")
    return 1 if result.failed else 0
