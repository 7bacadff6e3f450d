"""Write the fuzz corpus: mutants of small valid files, with fixed seeds.

Bases: a tiled deflate TIFF pyramid (OME), a tiled JPEG TIFF, a deflate strip TIFF, a
GeoTIFF (rasterio, when installed), a PNG, an Aperio-style SVS, and an xtimage checkpoint
(safetensors). Each base gets mutants of these kinds:

- ``flip``: 1 to 16 random bytes flipped, in the first 1 KiB (header and first IFD)
  or anywhere;
- ``cut``: truncated at a random length;
- ``tag``: one TIFF tag (size, tile size, offsets, byte counts, samples, bits,
  compression, rows per strip) given an extreme value (0, 1, 2^16-1, 2^31-1, 2^32-1, a
  random one), which declares huge or impossible sizes and offsets past the file;
- ``png``: IHDR width/height set huge with a correct CRC (a size bomb), or the CRC left
  wrong;
- ``header``: the safetensors header length or JSON changed (offsets, dtypes, shapes).

Usage: ``python tests/io/fuzz_corpus.py OUT_DIR [--per-base N]``; prints the count.
The same seed always writes the same files (`make_corpus`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from io_fixtures import sar_scene, smooth_image, write_geotiff, write_svs, write_tiff_pyramid

TIFF_TAGS = {
    256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample", 259: "Compression",
    273: "StripOffsets", 277: "SamplesPerPixel", 278: "RowsPerStrip", 279: "StripByteCounts",
    322: "TileWidth", 323: "TileLength", 324: "TileOffsets", 325: "TileByteCounts",
}  # fmt: skip
EXTREMES = (0, 1, 2**16 - 1, 2**31 - 1, 2**32 - 1)


def write_bases(folder: Path) -> dict[str, Path]:
    """The valid files the mutants are made from."""
    import tifffile
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rgb = smooth_image(150, 200, 3)
    bases = {
        "deflate.tif": write_tiff_pyramid(folder / "deflate.tif", smooth_image(150, 200, 1),
                                          tile=64, levels=2),
        "jpeg.tif": write_tiff_pyramid(folder / "jpeg.tif", rgb, tile=64, compression="jpeg",
                                       levels=2, ome=False),
        "strips.tif": folder / "strips.tif",
        "scene.png": folder / "scene.png",
        "slide.svs": write_svs(folder / "slide.svs", smooth_image(256, 320, 3), tile=64),
        "model.safetensors": write_checkpoint(folder / "model.safetensors"),
    }  # fmt: skip
    tifffile.imwrite(bases["strips.tif"], rgb.transpose(1, 2, 0), compression="zlib",
                     rowsperstrip=16, photometric="rgb")  # fmt: skip
    Image.fromarray(rgb.transpose(1, 2, 0)).save(bases["scene.png"])
    with contextlib.suppress(ImportError):  # rasterio is optional
        bases["geo.tif"] = write_geotiff(folder / "geo.tif", sar_scene(150, 200), tile=64)
    return bases


def write_checkpoint(path: Path) -> Path:
    from xtimage.build import build_model
    from xtimage.checkpoint import save_checkpoint
    from xtimage.config import load_config

    config = load_config(None, [
        "model.region=64", "model.dim=16", "model.decoder_channels=8",
        "model.backbone_kwargs={depths: [1, 1, 1, 1], dims: [8, 8, 16, 16]}",
        "model.context_kwargs={depth: 1, heads: 2}",
    ])  # fmt: skip
    return save_checkpoint(path, build_model(config.model), config)


def tiff_tags(data: bytes) -> list[tuple[int, int, int, int]]:
    """(tag, type, count, offset of the value field) of every IFD entry of a classic or
    big TIFF, walking the IFD chain of the top-level pages."""
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(order + "H", data[2:4])[0] == 43
    if big:
        offset, entry, count_fmt, value_size = struct.unpack(order + "Q", data[8:16])[0], 20, "Q", 8
    else:
        offset, entry, count_fmt, value_size = struct.unpack(order + "I", data[4:8])[0], 12, "I", 4
    found, seen = [], set()
    while 0 < offset < len(data) and offset not in seen:
        seen.add(offset)
        n_fmt = "Q" if big else "H"
        n = struct.unpack_from(order + n_fmt, data, offset)[0]
        start = offset + (8 if big else 2)
        for i in range(min(n, 500)):
            at = start + i * entry
            if at + entry > len(data):
                break
            tag, kind = struct.unpack_from(order + "HH", data, at)
            count = struct.unpack_from(order + count_fmt, data, at + 4)[0]
            value_at = at + 4 + (8 if big else 4)
            size = {3: 2, 4: 4, 16: 8}.get(kind, 1) * count
            if size > value_size:  # the field holds an offset to the values
                value_at = struct.unpack_from(order + ("Q" if big else "I"), data, value_at)[0]
            found.append((tag, kind, count, value_at))
        next_at = start + n * entry
        if next_at + value_size > len(data):
            break
        offset = struct.unpack_from(order + ("Q" if big else "I"), data, next_at)[0]
    return found


def mutate_tag(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    order = "<" if data[:2] == b"II" else ">"
    tags = [t for t in tiff_tags(data) if t[0] in TIFF_TAGS and t[1] in (3, 4, 16)]
    tag, kind, count, at = tags[rng.integers(len(tags))]
    fmt = {3: "H", 4: "I", 16: "Q"}[kind]
    limit = 2 ** (8 * struct.calcsize(fmt)) - 1
    value = int(rng.choice([*EXTREMES, int(rng.integers(0, 2**31))])) & limit
    index = int(rng.integers(count)) if count > 1 else 0
    out = bytearray(data)
    where = at + index * struct.calcsize(fmt)
    if where + struct.calcsize(fmt) > len(out):
        return bytes(out), f"tag-{TIFF_TAGS[tag]}-out-of-file"
    struct.pack_into(order + fmt, out, where, value)
    return bytes(out), f"tag-{TIFF_TAGS[tag]}[{index}]={value}"


def mutate_png(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    out = bytearray(data)
    width, height = (int(rng.choice([2**16, 2**24, 2**31 - 1, 0, 1])) for _ in range(2))
    struct.pack_into(">II", out, 16, width, height)  # IHDR data starts at byte 16
    fix = bool(rng.integers(2))
    if fix:
        struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])))
    return bytes(out), f"png-{width}x{height}-{'crc' if fix else 'badcrc'}"


def mutate_safetensors(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    length = struct.unpack_from("<Q", data)[0]
    header = json.loads(data[8 : 8 + length])
    choice = int(rng.integers(4))
    if choice == 0:
        new_length = int(rng.choice([0, 1, length - 1, length + 1, 2**40, 2**63]))
        return struct.pack("<Q", new_length) + data[8:], f"header-length={new_length}"
    names = [k for k in header if k != "__metadata__"]
    name = names[int(rng.integers(len(names)))]
    entry = header[name]
    if choice == 1:
        entry["data_offsets"][int(rng.integers(2))] = int(rng.choice([0, 2**31, 2**62, -1]))
        what = "offsets"
    elif choice == 2:
        entry["shape"] = [int(rng.choice([0, 2**20, 2**40]))] + entry["shape"][1:]
        what = "shape"
    else:
        entry["dtype"] = str(rng.choice(["F64", "U8", "BOOL", "X9"]))
        what = "dtype"
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + length :], f"header-{what}-{name}"


def mutants(name: str, data: bytes, count: int, seed: int) -> list[tuple[str, bytes]]:
    """``count`` mutants of one base file, the same for the same seed."""
    rng = np.random.default_rng(seed)
    kinds = ["flip-head", "flip", "cut"]
    if name.endswith((".tif", ".svs")):
        kinds += ["tag", "tag"]
    elif name.endswith(".png"):
        kinds += ["png"]
    elif name.endswith(".safetensors"):
        kinds += ["header", "header"]
    out = []
    for i in range(count):
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind.startswith("flip"):
            buf = bytearray(data)
            span = min(len(buf), 1024) if kind == "flip-head" else len(buf)
            for _ in range(int(rng.integers(1, 17))):
                buf[int(rng.integers(span))] ^= int(rng.integers(1, 256))
            mutant, what = bytes(buf), kind
        elif kind == "cut":
            at = int(rng.integers(0, len(data)))
            mutant, what = data[:at], f"cut-{at}"
        elif kind == "tag":
            mutant, what = mutate_tag(data, rng)
        elif kind == "png":
            mutant, what = mutate_png(data, rng)
        else:
            mutant, what = mutate_safetensors(data, rng)
        stem, suffix = name.rsplit(".", 1)
        out.append((f"{stem}-{i:03d}-{what.replace('/', '_')[:60]}.{suffix}", mutant))
    return out


def make_corpus(folder: str | Path, per_base: int = 50, seed: int = 25) -> list[Path]:
    """Write the bases and ``per_base`` mutants of each into ``folder``; the mutants."""
    folder = Path(folder)
    bases = write_bases(folder / "bases")
    written = []
    for k, (name, path) in enumerate(sorted(bases.items())):
        for mutant_name, data in mutants(name, path.read_bytes(), per_base, seed * 1000 + k):
            target = folder / mutant_name
            target.write_bytes(data)
            written.append(target)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--per-base", type=int, default=50)
    args = parser.parse_args()
    print(len(make_corpus(args.out, args.per_base)))
