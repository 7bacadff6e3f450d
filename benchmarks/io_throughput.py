"""Regions per second read from large tiled TIFFs, against the raw tile decode rate.

Two RGB files of ``--size`` pixels a side, tiled 256 x 256, one JPEG- and one
deflate-compressed, are written into a temporary folder (never committed). For each:

- *raw*: the compressed bytes of the distinct tiles the regions need, already in memory,
  decoded once each by imagecodecs on ``--workers`` threads: the limit a reader can
  approach (a reader decoding a shared tile twice falls below it);
- *reader*: `TiffReader` windows one after another (no read-ahead);
- *read-ahead*: the same windows through `Prefetcher` with ``--workers`` threads.

Regions are ``--region`` pixels, tile-aligned (each region is whole tiles) and unaligned
(shifted by a third of a tile, so each region touches 4 tiles, each shared with its
neighbours), reported apart. Each number is the best of ``--repeat`` runs; contenders are
interleaved, so a busy machine slows them alike. On a shared machine wall-clock rates
swing with the neighbours' load, so the CPU time each region costs (all threads, best of
the runs) is reported beside them: its ratio is the rate ratio a quiet machine with
``--workers`` free cores would show. One reader serves all runs of a case, its tile
cache emptied before each but paged in once beforehand (a one-time 32 MiB, amortised
over a whole image).

Peak memory: for each side in ``--memory-sizes``, a fresh process opens a JPEG tiled TIFF
of that side and reads every region with read-ahead; the peak resident memory above the
idle process (after imports) is reported. Flat means bounded by the read-ahead depth,
not the image.

    python benchmarks/io_throughput.py             # 16k files, memory at 4k..32k
    python benchmarks/io_throughput.py --quick     # time 1024 regions a case, not all

Prints a table and writes JSON rows to benchmarks/results/io_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "io_throughput.json"
TILE = 256


def synthetic_tiles(side: int, seed: int = 0):
    """Row-major (TILE, TILE, 3) uint8 tiles of a photo-like image: gradients, waves, noise.

    16 distinct tiles are made once and cycled with per-tile shifts, so writing a 32k image
    costs little CPU while each tile still decodes like a photograph.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:TILE, 0:TILE].astype(np.float32)
    pool = []
    for k in range(16):
        bands = [
            120
            + 60 * np.sin(xx / (9 + k + c) + yy / (13 + 2 * c))
            + 0.2 * yy
            + rng.normal(0, 6, xx.shape)
            for c in range(3)
        ]
        pool.append(np.clip(np.stack(bands, -1), 0, 255).astype(np.uint8))
    n = side // TILE
    for i in range(n * n):
        yield np.roll(pool[i % 16], i % 7, axis=1)


def write_tiff(path: Path, side: int, compression: str) -> Path:
    import tifffile

    options = {"compression": "jpeg", "compressionargs": {"level": 90}}
    if compression == "deflate":
        options = {"compression": "zlib", "compressionargs": {"level": 6}}
    tifffile.imwrite(
        path, synthetic_tiles(side), shape=(side, side, 3), dtype=np.uint8, tile=(TILE, TILE),
        photometric="rgb", bigtiff=True, metadata=None, **options,
    )  # fmt: skip
    return path


def region_windows(side: int, region: int, shift: int, count: int | None):
    """Regions in raster order, shifted by ``shift`` px, all inside the image."""
    from xtimage.window import Window

    starts = range(shift, side - region + 1, region)
    windows = [Window(top, left, region, region) for top in starts for left in starts]
    return windows if count is None else windows[:count]


def tiles_touched(windows) -> list[tuple[int, int]]:
    """(row, col) of the tiles each window touches, concatenated (repeats included)."""
    out = []
    for w in windows:
        for ty in range(w.top // TILE, (w.bottom - 1) // TILE + 1):
            for tx in range(w.left // TILE, (w.right - 1) // TILE + 1):
                out.append((ty, tx))
    return out


def raw_decode_rate(path: Path, windows, workers: int) -> tuple[float, float, float]:
    """(tiles/s, regions/s, CPU ms/region): the distinct tiles the windows touch, their
    compressed bytes already in memory, decoded by imagecodecs on ``workers`` threads."""
    import imagecodecs
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        grid = page.imagewidth // TILE
        blobs = []
        with open(path, "rb") as f:
            for ty, tx in sorted(set(tiles_touched(windows))):
                index = ty * grid + tx
                f.seek(page.dataoffsets[index])
                blobs.append(f.read(page.databytecounts[index]))
        tables = page.jpegtables
        jpeg = page.compression == 7
    size = TILE * TILE * 3

    def decode(blob: bytes):
        if jpeg:
            return imagecodecs.jpeg8_decode(blob, tables=tables)
        return imagecodecs.deflate_decode(blob, out=size)  # libdeflate, as tifffile uses

    with ThreadPoolExecutor(workers) as pool:
        start, cpu = time.perf_counter(), time.process_time()
        for _ in pool.map(decode, blobs):
            pass
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return len(blobs) / seconds, len(windows) / seconds, 1e3 * cpu / len(windows)


def reader_rate(reader, windows, workers: int | None) -> tuple[float, float]:
    """(regions/s, CPU ms/region) through an open TiffReader, sequential (workers None) or
    with read-ahead. The tile cache starts empty but already paged in, as in a long run."""
    from xtimage.io import Prefetcher, read_padded

    reader.forget_tiles()
    start, cpu = time.perf_counter(), time.process_time()
    if workers is None:
        for w in windows:
            read_padded(reader, w)
    else:
        for _ in Prefetcher(reader, windows, workers=workers, depth=4 * workers):
            pass
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return len(windows) / seconds, 1e3 * cpu / len(windows)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1])


def memory_child(path: str, region: int, workers: int) -> None:
    """Fresh-process peak memory: read every region of ``path``, print JSON.

    The idle size is the resident memory after imports; the kernel's peak (VmHWM) is reset
    there (``/proc/self/clear_refs``), so the peak counts the reading only.
    """
    from xtimage.io import Prefetcher, TiffReader
    from xtimage.window import Window

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident size to the current one
    idle = _status_kib("VmRSS")
    reader = TiffReader(path)
    windows = (
        Window(top, left, region, region)
        for top in range(0, reader.height, region)
        for left in range(0, reader.width, region)
    )
    count, checksum = 0, 0
    start = time.perf_counter()
    for _, array in Prefetcher(reader, windows, workers=workers, depth=4 * workers):
        checksum += int(array[:, 0, 0].sum())
        count += 1
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {"regions": count, "seconds": seconds, "idle_kb": idle, "peak_kb": _status_kib("VmHWM")}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="side of the throughput files")
    parser.add_argument("--region", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--regions", type=int, default=None, help="regions timed (default all)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--quick", action="store_true", help="time 1024 regions, not all")
    parser.add_argument("--folder", default=None, help="where the test files go (a temp dir)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.region, args.workers)
        return
    if args.quick:
        args.regions = args.regions or 1024
    from xtimage.io import TiffReader

    rows = []
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        files = {}
        for compression in ("jpeg", "deflate"):
            start = time.perf_counter()
            files[compression] = write_tiff(
                Path(folder) / f"{compression}.tif", args.size, compression
            )
            mib = os.path.getsize(files[compression]) / 2**20
            seconds = time.perf_counter() - start
            print(
                f"wrote {args.size}^2 {compression}: {mib:.0f} MiB in {seconds:.1f} s",
                file=sys.stderr,
            )
        for compression, path in files.items():
            for alignment, shift in (("aligned", 0), ("unaligned", TILE // 3)):
                windows = region_windows(args.size, args.region, shift, args.regions)
                best = {"raw": 0.0, "raw_tiles": 0.0, "reader": 0.0, "read_ahead": 0.0}
                cpu = {"raw": np.inf, "reader": np.inf, "read_ahead": np.inf}
                reader = TiffReader(path)
                reader_rate(reader, windows[:256], None)  # page the cache slots in, once
                for _ in range(args.repeat):
                    tiles_s, raw, raw_cpu = raw_decode_rate(path, windows, args.workers)
                    seq, seq_cpu = reader_rate(reader, windows, None)
                    ahead, ahead_cpu = reader_rate(reader, windows, args.workers)
                    for name, rate, ms in (
                        ("raw", raw, raw_cpu),
                        ("reader", seq, seq_cpu),
                        ("read_ahead", ahead, ahead_cpu),
                    ):
                        best[name] = max(best[name], rate)
                        cpu[name] = min(cpu[name], ms)
                    best["raw_tiles"] = max(best["raw_tiles"], tiles_s)
                reader.close()
                rows.append({
                    "benchmark": "throughput", "compression": compression, "windows": alignment,
                    "size": args.size, "region": args.region, "tile": TILE, "workers": args.workers,
                    "regions": len(windows),
                    "tiles_per_region": len(tiles_touched(windows)) / len(windows),
                    "distinct_tiles_per_region": len(set(tiles_touched(windows))) / len(windows),
                    "raw_tiles_per_s": round(best["raw_tiles"], 1),
                    "raw_regions_per_s": round(best["raw"], 1),
                    "reader_regions_per_s": round(best["reader"], 1),
                    "read_ahead_regions_per_s": round(best["read_ahead"], 1),
                    "read_ahead_vs_raw": round(best["read_ahead"] / best["raw"], 3),
                    "raw_cpu_ms_per_region": round(cpu["raw"], 3),
                    "read_ahead_cpu_ms_per_region": round(cpu["read_ahead"], 3),
                    "read_ahead_vs_raw_cpu": round(cpu["raw"] / cpu["read_ahead"], 3),
                    "machine": machine,
                })  # fmt: skip
        for side in args.memory_sizes:
            path = (
                files["jpeg"]
                if side == args.size
                else write_tiff(Path(folder) / f"m{side}.tif", side, "jpeg")
            )
            child = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(path),
                 "--region", str(args.region), "--workers", str(args.workers)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            result = json.loads(child.stdout)
            rows.append({
                "benchmark": "peak_memory", "size": side, "region": args.region,
                "workers": args.workers, "regions": result["regions"],
                "file_mib": round(os.path.getsize(path) / 2**20, 1),
                "peak_increase_mib": round((result["peak_kb"] - result["idle_kb"]) / 1024, 1),
                "regions_per_s": round(result["regions"] / result["seconds"], 1),
                "machine": machine,
            })  # fmt: skip
            if path != files["jpeg"]:
                path.unlink()

    print(f"\nI/O throughput, {args.size}^2 RGB tiled TIFF, {args.region} px regions, "
          f"{args.workers} threads ({machine})")  # fmt: skip
    print(f"{'compression':<12}{'windows':<10}{'tiles/reg':>10}{'raw reg/s':>10}{'reader':>8}"
          f"{'read-ahead':>11}{'vs raw':>7}{'CPU ms/reg raw':>16}{'read-ahead':>11}"
          f"{'vs raw':>7}")  # fmt: skip
    for r in (r for r in rows if r["benchmark"] == "throughput"):
        print(f"{r['compression']:<12}{r['windows']:<10}{r['tiles_per_region']:>10.2f}"
              f"{r['raw_regions_per_s']:>10.0f}{r['reader_regions_per_s']:>8.0f}"
              f"{r['read_ahead_regions_per_s']:>11.0f}{r['read_ahead_vs_raw']:>7.2f}"
              f"{r['raw_cpu_ms_per_region']:>16.3f}{r['read_ahead_cpu_ms_per_region']:>11.3f}"
              f"{r['read_ahead_vs_raw_cpu']:>7.2f}")  # fmt: skip
    print(f"\nPeak memory reading every {args.region} px region with read-ahead (fresh process)")
    print(f"{'side':>7}{'regions':>9}{'file MiB':>10}{'peak +MiB':>11}{'regions/s':>11}")
    for r in (r for r in rows if r["benchmark"] == "peak_memory"):
        print(f"{r['size']:>7}{r['regions']:>9}{r['file_mib']:>10.0f}{r['peak_increase_mib']:>11.1f}"
              f"{r['regions_per_s']:>11.0f}")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
