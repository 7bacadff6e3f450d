"""Memory proportional to work: sizes declared by a file or the command line never make
xtimage allocate per pixel, per token or per region of the whole image; what must be
allocated is checked against the cap of `xtimage.limits`."""

import json
import math
import resource
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
import torch

from xtimage.errors import ConfigError, InputError
from xtimage.limits import DEFAULT_MAX_ALLOC, check_alloc, max_alloc, parse_bytes
from xtimage.tiling import RegionPlan, TokenLayout

GB = 10**9


def run_xt(args, data_limit=2 * GB, env=None, timeout=120):
    """`xt ARGS` in a fresh process whose heap is capped at ``data_limit`` bytes."""

    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))

    return subprocess.run(
        [sys.executable, "-m", "xtimage.cli", *args],
        capture_output=True, text=True, timeout=timeout, preexec_fn=limit, env=env,
    )  # fmt: skip


def write_sparse_tiff(path, side=1_000_000, tile=1024, written=(0, 1, 5000)):
    """A BigTIFF of ``side`` x ``side`` px, deflate tiles, only ``written`` tiles stored."""
    count = math.ceil(side / tile) ** 2
    written = {*written, count - 1}
    tiles = (np.full((tile, tile), 77, np.uint8) if i in written else None for i in range(count))
    tifffile.imwrite(path, tiles, shape=(side, side), dtype=np.uint8, tile=(tile, tile),
                     compression="deflate", bigtiff=True)  # fmt: skip
    return path


def declare_size(src, dst, height, width, rows_per_strip=None):
    """Copy a one-page TIFF, rewriting the size its header declares (a size bomb)."""
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        tags = tif.pages[0].tags
        values = {"ImageLength": height, "ImageWidth": width, "RowsPerStrip": rows_per_strip}
        for name, value in values.items():
            if value is not None and name in tags:
                tag = tags[name]
                struct.pack_into("<I" if int(tag.dtype) == 4 else "<H", data, tag.valueoffset,
                                 value)  # fmt: skip
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="module")
def sparse_tiff(tmp_path_factory):
    return write_sparse_tiff(tmp_path_factory.mktemp("huge") / "sparse.tif")


@pytest.fixture(scope="module")
def strip_bomb(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bomb")
    src = folder / "small.tif"
    tifffile.imwrite(src, np.arange(64 * 64, dtype=np.uint8).reshape(64, 64),
                     compression="deflate", rowsperstrip=64)  # fmt: skip
    return declare_size(src, folder / "bomb.tif", 1_000_000, 1_000_000, 1_000_000)


# ---------------------------------------------------------------------------- the cap


def test_parse_bytes():
    assert parse_bytes("4GB") == 4 * GB
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes(1e9) == GB
    for bad in ("lots", "-1GB", 0, float("nan"), float("inf")):
        with pytest.raises(ConfigError):
            parse_bytes(bad)


def test_cap_from_the_environment(monkeypatch):
    monkeypatch.delenv("XT_MAX_ALLOC", raising=False)
    assert max_alloc() == DEFAULT_MAX_ALLOC
    monkeypatch.setenv("XT_MAX_ALLOC", "1MB")
    assert max_alloc() == 10**6
    check_alloc(10**6, "fine")
    with pytest.raises(InputError, match=r"f.tif: a thing would take .* of 1 MiB.*XT_MAX_ALLOC"):
        check_alloc(10**6 + 1, "a thing", "f.tif")
    monkeypatch.setenv("XT_MAX_ALLOC", "many")
    with pytest.raises(ConfigError, match="XT_MAX_ALLOC='many'"):
        max_alloc()


# ---------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("height", "width", "region", "margin", "stride"),
    [(100, 70, 64, 0, 16), (64, 64, 64, 0, 32), (300, 129, 64, 16, 16), (1, 1, 32, 8, 8)],
)
def test_closed_form_valid_count_matches_the_tokens(height, width, region, margin, stride):
    layout = TokenLayout(RegionPlan(height, width, region, margin), stride)
    assert layout.num_valid == int(layout.valid().sum())


def test_positions_of_a_range_match_a_list():
    layout = TokenLayout(RegionPlan(500, 300, 64, 16), 16)
    for regions in (range(0, 5), range(7, 12), [3, 1, 9]):
        expected = layout.positions()[
            torch.cat([torch.arange(r * 4, r * 4 + 4) for r in regions])
        ]
        assert torch.equal(layout.positions(regions), expected)


def test_positions_of_a_huge_image_are_cut_by_the_cap():
    layout = TokenLayout(RegionPlan(10**6, 10**6, 64), 32)
    assert layout.num_valid == 31250**2  # no tensor made
    assert layout.positions(range(10**6 // 64 * 100, 10**6 // 64 * 100 + 2)).shape == (8, 2)
    with pytest.raises(InputError, match="token positions of a 1000000 x 1000000 px image"):
        layout.positions()


# ---------------------------------------------------------------------------- xt info


def test_info_of_a_sparse_million_pixel_square_tiff(sparse_tiff):
    """A legit 10^6 x 10^6 file with 4 tiles written: under 1 s of CPU, under 100 MB."""
    script = textwrap.dedent(f"""
        import contextlib, io, json, resource, time
        from xtimage.cli import main
        import xtimage.commands.info, xtimage.io, xtimage.tiling  # noqa: the idle process
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cpu = time.process_time()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["info", {str(sparse_tiff)!r}, "--json"])
        print(json.dumps({{"code": code, "cpu": time.process_time() - cpu,
            "rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024,
            "info": json.loads(out.getvalue())}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    result = json.loads(done.stdout)
    assert result["code"] == 0
    assert result["info"]["file"]["size"] == [10**6, 10**6]
    assert result["info"]["tokens"]["valid"] == 31250**2
    assert result["cpu"] < 1.0, result
    assert result["rss_mb"] < 100, result


def test_info_of_a_million_pixel_square_size_with_small_regions():
    done = run_xt(["info", "--size", "1000000x1000000", "--region", "64", "--json"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["plan"]["regions"] == 15625**2


def test_declared_size_bomb_is_refused_in_one_line(strip_bomb):
    done = run_xt(["info", str(strip_bomb)])
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # no tifffile log lines beside it
    assert "decoding one strip of 1000000 x 1000000 px" in done.stderr
    assert "XT_MAX_ALLOC=" in done.stderr


def test_bomb_region_read_is_refused(strip_bomb, monkeypatch):
    from xtimage.io import open_reader

    with pytest.raises(InputError, match="bomb.tif: decoding one strip"):
        open_reader(strip_bomb)


def test_sparse_tiff_streams_its_regions(sparse_tiff):
    from xtimage.io import open_reader
    from xtimage.window import Window

    with open_reader(sparse_tiff) as reader:
        assert reader.read_region(Window(0, 1000, 8, 48)).tolist() == [[[77] * 48] * 8]
        far = reader.read_region(Window(500_000, 500_000, 4, 4))
        assert far.shape == (1, 4, 4) and not far.any()  # empty tiles read as zeros


# ---------------------------------------------------------------------------- the engine


def test_engine_never_lists_every_region():
    from xtimage.engine.runner import Engine, _Groups

    groups = _Groups(range(10**12), 16)
    assert len(groups) == 62_500_000_000 and groups[3] == range(48, 64)
    kept = Engine._kept(None, TokenLayout(RegionPlan(10**7, 10**7, 64), 32), None)
    assert isinstance(kept, range) and len(kept) == 156250**2  # not a list of 2.4e10 ints
    layout = TokenLayout(RegionPlan(128, 192, 64), 32)
    assert Engine._kept(None, layout, [True, False, True, False, False, True]) == [0, 2, 5]
