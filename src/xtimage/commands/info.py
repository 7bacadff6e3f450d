"""`xt info`: describe a file or an image size and the region plan xT would use."""

from __future__ import annotations

import argparse
import json

from xtimage.errors import ConfigError

ABOUT = """Describe an image file (size, levels, storage, pixel size, nodata, CRS) or a size,
the region plan and token sequence xT would use; with --backbone the memory plan (e.g.
--size 32768x32768 --backbone convnext_atto --context xl --max-memory 4GB [--train],
--device cuda to plan for a GPU from any machine);
with --presets [NAME] the presets with their parameter counts.
"""

EXAMPLE = """examples:
  xt info --size 30000x24000 --region 256
  xt info slide.svs --region 128um --json
  xt info --presets                       # every preset, its size and the paper's number
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="describe an image and its region plan",
        description=ABOUT,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", nargs="?", help="image file to describe")
    p.add_argument("--size", help="image size as HxW, instead of a file")
    p.add_argument(
        "--region",
        default="256",
        help="region side in pixels, or a length for a file with a pixel size (e.g. 128um)",
    )
    p.add_argument("--margin", type=int, default=0, help="context pixels read around a core")
    p.add_argument("--subregion", type=int, default=None, help="sub-region side in pixels")
    p.add_argument("--token-stride", type=int, default=32, help="pixels per token side")
    p.add_argument("--pool", type=int, default=None, help="pool to N x N tokens per region")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument(
        "--presets",
        nargs="*",
        metavar="NAME",
        help="list presets (all, or those named): region, context, parameters, paper row",
    )
    mem = p.add_argument_group("memory plan (needs --backbone)")
    mem.add_argument("--backbone", help="timm region encoder, e.g. convnext_atto")
    mem.add_argument("--context", default="xl", help="context encoder (default xl)")
    mem.add_argument("--dim", type=int, default=768, help="context width (default 768)")
    mem.add_argument("--max-memory", help="budget of the whole process, e.g. 4GB")
    mem.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="plan for CPU memory (default) or a GPU's (needs none here; CUDA constants "
        "are unfitted estimates, see docs/performance.md)",
    )
    mem.add_argument(
        "--lean-memory",
        action="store_true",
        help="plan for the lean host allocator (train.lean_memory, predict --lean-memory)",
    )
    mem.add_argument(
        "--train",
        nargs="?",
        const="auto",
        choices=["auto", "exact", "streaming"],
        help="plan a training step (default mode: exact, else streaming)",
    )
    p.set_defaults(func=run)


def parse_size(text: str) -> tuple[int, int]:
    """``"3000x2000"`` -> (3000, 2000)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"size '{text}' is not HxW, e.g. --size 4096x3072") from None
    return height, width


def region_pixels(text: str, reader) -> int:
    """``--region`` in pixels: an integer, or a length converted with the file's pixel size."""
    if text.strip().isdigit():
        return int(text)
    if reader is None:
        raise ConfigError(f"--region {text}: a length in units needs an image FILE, not --size")
    from xtimage.io.physical import to_pixels

    return to_pixels(text, reader)


def describe_reader(reader, path: str) -> dict:
    """A reader's file as plain values: geometry, backend, storage, pixel size, georeference."""
    px = reader.pixel_size
    geo = reader.geo
    return {
        "path": path,
        "size": [reader.height, reader.width],
        "channels": reader.channels,
        "dtype": str(reader.dtype),
        "levels": [[lv.height, lv.width, lv.downsample] for lv in reader.levels],
        "backend": reader.backend,
        "format": reader.metadata.get("format"),
        "tile": reader.metadata.get("tile"),
        "compression": reader.metadata.get("compression"),
        "pixel_size": None if px is None else {"y": px.y, "x": px.x, "unit": px.unit},
        "nodata": reader.nodata,
        "georeference": None
        if geo is None
        else {"epsg": geo.epsg, "transform": list(geo.transform), "crs_wkt": geo.crs_wkt},
        "metadata": reader.metadata,
    }


def describe(args: argparse.Namespace) -> dict:
    from xtimage.tiling import RegionPlan, TokenLayout

    info: dict = {}
    if args.file and args.size:
        raise ConfigError("give a FILE or --size, not both")
    if args.file:
        from xtimage.io import open_reader

        reader = open_reader(args.file)
        height, width = reader.height, reader.width
        info["file"] = describe_reader(reader, str(args.file))
        region = region_pixels(args.region, reader)
        channels = reader.channels
        reader.close()
    elif args.size:
        height, width = parse_size(args.size)
        region = region_pixels(args.region, None)
        channels = 3
    else:
        raise ConfigError("give an image FILE or --size HxW (e.g. xt info --size 4096x4096)")

    plan = RegionPlan(height, width, region, args.margin, args.subregion)
    layout = (
        TokenLayout.pooled(plan, args.pool) if args.pool else TokenLayout(plan, args.token_stride)
    )
    info["plan"] = plan.describe()
    info["tokens"] = {
        "stride": layout.stride,
        "per_region": layout.tokens_per_region,
        "sequence_length": layout.num_tokens,
        "valid": layout.num_valid,
        "grid": list(layout.grid),
    }
    if args.backbone:
        info["memory"] = memory_plan(args, height, width, region, channels)
    elif args.max_memory or args.train:
        raise ConfigError("--max-memory and --train plan memory for a model: add --backbone NAME")
    return info


def memory_plan(args: argparse.Namespace, height: int, width: int, region: int, channels: int):
    """The engine's memory plan for a model built from the options (a classification head)."""
    from xtimage.allocator import lean_host_memory
    from xtimage.encoders.context import create_context_encoder
    from xtimage.encoders.region import RegionEncoder
    from xtimage.engine.planner import estimate_memory, plan_memory
    from xtimage.heads import ClassificationHead
    from xtimage.model import XT

    if args.lean_memory:
        lean_host_memory()

    encoder = RegionEncoder(args.backbone, region=region, in_chans=channels)
    context = create_context_encoder(args.context, dim=args.dim)
    head = ClassificationHead(args.dim, 2)
    model = XT(encoder, context, head, region=region, margin=args.margin, pool=args.pool)
    mode = None if args.train in (None, "auto") else args.train
    if args.max_memory:
        plan = plan_memory(model, height, width, args.max_memory, training=bool(args.train),
                           mode=mode, channels=channels, device=args.device)  # fmt: skip
    else:
        mode = mode or ("exact" if args.train else "inference")
        plan = estimate_memory(model, height, width, region_batch=16, mode=mode, channels=channels,
                               device=args.device)  # fmt: skip
    return plan.describe()


def list_presets(args: argparse.Namespace) -> int:
    """``--presets``: each preset's region, image, context and parameters, and the paper's
    reported top-1 and parameters where the preset is one of its rows."""
    from xtimage.paper import preset_names, preset_summary

    rows = [preset_summary(name) for name in (args.presets or preset_names())]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'preset':<34} {'region':>6} {'image':>5} {'context':<9} {'params':>8}  "
        f"{'paper row':<22} {'res':>7} {'top-1':>6} {'params':>6}"
    )
    for r in rows:
        paper = r["paper"] or {}
        top1 = f"{paper['top1']:.2f}" if paper.get("top1") is not None else "-"
        pm = f"{paper['params_m']:g}M" if paper.get("params_m") is not None else "-"
        print(
            f"{r['preset']:<34} {r['region']:>6} {r['image'] or '-':>5} {r['context']:<9} "
            f"{r['params'] / 1e6:>7.2f}M  {paper.get('model', '-'):<22} "
            f"{paper.get('resolution', '-'):>7} {top1:>6} {pm:>6}"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.presets is not None:
        return list_presets(args)
    info = describe(args)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    if "file" in info:
        f = info["file"]
        print(f"file        {f['path']}")
        print(
            f"size        {f['size'][0]} x {f['size'][1]} px, {f['channels']} channel(s), "
            f"{f['dtype']}, {len(f['levels'])} level(s)"
        )
        print(f"backend     {f['backend']} ({f['format'] or 'unknown format'})")
        tile = f"tiles {f['tile'][0]} x {f['tile'][1]}" if f["tile"] else "not tiled"
        print(f"storage     {tile}, compression {f['compression'] or 'unknown'}")
        for k, (h, w, down) in enumerate(f["levels"]):
            print(f"level {k:<5} {h} x {w} px, downsample {down:g}")
        px = f["pixel_size"]
        print(
            "pixel size  "
            + (f"{px['y']:g} x {px['x']:g} {px['unit']} (y x)" if px else "unknown (no metadata)")
        )
        if f["nodata"] is not None:
            print(f"nodata      {f['nodata']:g}")
        if f["georeference"]:
            g = f["georeference"]
            crs = f"EPSG:{g['epsg']}" if g["epsg"] else g["crs_wkt"][:60]
            print(f"crs         {crs}, transform {', '.join(f'{v:.10g}' for v in g['transform'])}")
    p, t = info["plan"], info["tokens"]
    print(f"image       {p['image'][0]} x {p['image'][1]} px")
    print(
        f"regions     {p['regions']} = {p['grid'][0]} x {p['grid'][1]} of {p['region']} px "
        f"(core {p['core']}, margin {p['margin']}"
        + (f", sub-regions {p['subregion']} px" if p["subregion"] else "")
        + ")"
    )
    print(f"padding     {p['padding'][0]} px bottom, {p['padding'][1]} px right")
    print(
        f"tokens      {t['per_region']} per region at {t['stride']} px, sequence "
        f"{t['sequence_length']} ({t['valid']} valid), grid {t['grid'][0]} x {t['grid'][1]}"
    )
    if "memory" in info:
        m, gib = info["memory"], 2**30
        budget = m["budget_bytes"]
        verdict = ""
        if budget is not None:
            fit = "fits" if m["fits"] else "does NOT fit even one region at a time"
            verdict = f" of {budget / gib:.2f} GiB, {fit}"
        k, regions = m["region_batch"], "regions" if m["region_batch"] > 1 else "region"
        print(
            f"memory      {m['mode']} on {m['device']}, {k} {regions} at once: peak "
            f"{m['estimate_bytes'] / gib:.2f} GiB{verdict}"
        )
        parts = ", ".join(f"{k} {v / gib:.2f}" for k, v in m["breakdown"].items() if v)
        print(f"            GiB: {parts}")
        if m["allocator"] == "glibc default":
            print("            allocator: glibc default; large backbones can peak up to 1.5x "
                  "above this at mid region batches (--lean-memory plans for the lean one)")
        else:
            print(f"            allocator: {m['allocator']}")
    return 0
