"""`xt predict`: run a checkpoint over image files or folders, writing the outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from xtimage.errors import InputError

EXAMPLE = """examples:
  xt predict runs/seg/checkpoints/best.safetensors scene.tif -o out/
  xt predict runs/seg slides/ -o out/ --heatmap        # a run folder uses its last checkpoint
  xt predict best.safetensors a.png b.svs -o out/ --overwrite
  torchrun --nproc_per_node 4 -m xtimage.cli predict best.safetensors tiles/ -o out/

Writes per input: NAME.json (classification), NAME.mask.tif [+ NAME.heatmap.tif]
(segmentation; GeoTIFF with the input's CRS for a GeoTIFF input), NAME.boxes.csv and
NAME.boxes.geojson (detection); for an xView3 model, whose inputs are scene folders (or
folders of them), SCENE.xview3.csv per scene and predictions.csv, the challenge's file.
Inputs whose outputs exist are skipped unless --overwrite.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict image files (TIFF, OME-TIFF, GeoTIFF/COG, slides, PNG...) with a checkpoint",
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


def expand_inputs(inputs: list[str], out: Path) -> list[Path]:
    """Files as given, and every readable image file under each folder (sorted)."""
    from xtimage.io.open import READERS

    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not p.name.startswith(".")
                and out.resolve() not in p.resolve().parents
                and (p.suffix.lower() in READERS or "".join(p.suffixes[-2:]).lower() in READERS)
            )
            if not found:
                raise InputError(f"{path}: no image files found in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    return files


def expand_scenes(inputs: list[str]) -> list[Path]:
    """xView3 scene folders: each input is a scene folder (holding VV_dB.tif) or a folder
    of them."""
    from xtimage.data.xview3 import list_scenes

    scenes: list[Path] = []
    for name in inputs:
        path = Path(name)
        if (path / "VV_dB.tif").is_file():
            scenes.append(path)
        elif path.is_dir() and list_scenes(path):
            scenes += [path / s for s in list_scenes(path)]
        else:
            raise InputError(f"{path}: neither an xView3 scene folder nor a folder of them")
    return scenes


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
        xview3 = predictor.kind == "xview3"
        files = expand_scenes(args.inputs) if xview3 else expand_inputs(args.inputs, out)
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
    if xview3 and world.size == 1:
        _merge_scenes(files, out)
    if world.main:
        print(
            f"predicted {counts['done']} file(s), skipped {counts['skipped']} already done"
            + (f" (this process of {world.size})" if world.size > 1 else "")
            + f"; outputs in {out}"
        )
    return 0


def _merge_scenes(scenes: list[Path], out: Path) -> None:
    """Every scene's ``SCENE.xview3.csv`` as one challenge file, ``predictions.csv``."""
    import pandas as pd

    from xtimage.metrics.xview3 import write_predictions_csv

    tables = [pd.read_csv(out / f"{scene.name}.xview3.csv") for scene in scenes]
    table = pd.concat(tables, ignore_index=True).astype({"scene_id": str})
    write_predictions_csv(out / "predictions.csv", table)
