import os
import sys
import time

import numpy as np
import pytest
import tifffile
from io_fixtures import smooth_image, tiff_levels, write_tiff_pyramid

from xtimage.errors import InputError
from xtimage.io import PixelSize, Prefetcher, Reader, TiffReader, open_reader, read_padded
from xtimage.window import Window


def random_windows(rng, height, width, n=25):
    """Random windows inside a level, including ones touching each edge and corner."""
    windows = [
        Window(0, 0, height, width),
        Window(height - 1, width - 1, 1, 1),
        Window(0, width - 37, 29, 37),
        Window(height - 50, 0, 50, 61),
    ]
    for _ in range(n):
        top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
        h = int(rng.integers(1, height - top + 1))
        w = int(rng.integers(1, width - left + 1))
        windows.append(Window(top, left, h, w))
    return windows


@pytest.mark.parametrize(
    ("compression", "tile", "channels", "dtype", "bigtiff"),
    [
        ("jpeg", 128, 3, "uint8", False),
        ("zlib", 128, 3, "uint8", True),
        ("lzw", 64, 1, "uint16", False),
        ("zstd", 96, 4, "float32", True),
        (None, 64, 2, "int16", False),  # uncompressed tiles
        ("zlib", None, 1, "uint8", False),  # deflate strips
        (None, None, 3, "uint8", False),  # uncompressed contiguous: memory-mapped
    ],
)
def test_read_region_equals_slicing_the_decoded_levels(
    tmp_path, compression, tile, channels, dtype, bigtiff
):
    image = smooth_image(333, 410, channels, dtype)
    path = write_tiff_pyramid(
        tmp_path / "a.ome.tif", image, tile=tile, compression=compression, bigtiff=bigtiff,
        rowsperstrip=23 if tile is None else None,
    )  # fmt: skip
    truth = tiff_levels(path)  # tifffile's own whole-page decode, an independent path
    reader = TiffReader(path)
    assert isinstance(reader, Reader)
    assert (reader.channels, reader.height, reader.width, reader.dtype) == (
        channels, 333, 410, np.dtype(dtype),
    )  # fmt: skip
    assert [(lv.height, lv.width) for lv in reader.levels] == [a.shape[1:] for a in truth]
    assert [lv.downsample for lv in reader.levels[:2]] == [1.0, pytest.approx(2.0, rel=0.01)]
    if compression in ("zlib", "lzw", "zstd", None):
        assert np.array_equal(truth[0], image)  # lossless: the file holds the image
    rng = np.random.default_rng(0)
    for level, array in enumerate(truth):
        for window in random_windows(rng, *array.shape[1:], n=8):
            rows, cols = window.slices()
            assert np.array_equal(reader.read_region(window, level), array[:, rows, cols]), (
                level,
                window,
            )
    reader.close()


def test_pages_as_channels_and_planar_samples_are_read_as_channels(tmp_path):
    image = smooth_image(200, 260, 4, "uint16")
    tifffile.imwrite(
        tmp_path / "cyx.ome.tif", image, tile=(64, 64), compression="zlib",
        photometric="minisblack", metadata={"axes": "CYX"},
    )  # fmt: skip
    tifffile.imwrite(
        tmp_path / "planar.tif", image[:3], tile=(64, 64), compression="zlib",
        photometric="rgb", planarconfig="separate",
    )  # fmt: skip
    window = Window(30, 50, 100, 150)
    rows, cols = window.slices()
    cyx = TiffReader(tmp_path / "cyx.ome.tif")
    assert cyx.channels == 4
    assert np.array_equal(cyx.read_region(window), image[:, rows, cols])
    planar = TiffReader(tmp_path / "planar.tif")
    assert planar.channels == 3
    assert np.array_equal(planar.read_region(window), image[:3, rows, cols])


def test_pixel_size_from_ome_and_centimetre_resolution_but_not_from_dpi(tmp_path, jpeg_pyramid):
    assert TiffReader(jpeg_pyramid).pixel_size == PixelSize(0.5, 0.5, "um")
    image = np.zeros((64, 64), np.uint8)
    tifffile.imwrite(
        tmp_path / "cm.tif", image, resolution=(4000, 2000), resolutionunit="CENTIMETER"
    )
    assert TiffReader(tmp_path / "cm.tif").pixel_size == PixelSize(5.0, 2.5, "um")
    tifffile.imwrite(tmp_path / "dpi.tif", image, resolution=(72, 72), resolutionunit="INCH")
    assert TiffReader(tmp_path / "dpi.tif").pixel_size is None


def test_metadata_describes_storage(jpeg_pyramid):
    reader = open_reader(jpeg_pyramid)
    assert reader.backend == "tiff"
    assert reader.metadata["tile"] == [128, 128]
    assert reader.metadata["compression"] == "jpeg"
    assert reader.metadata["format"] == "OME-TIFF"


def _rchar() -> int:
    """Bytes this process has read through read()/pread() system calls (Linux)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])


def test_a_window_reads_only_the_tiles_it_touches(tmp_path):
    image = smooth_image(2048, 2048, 1, "uint8")
    path = write_tiff_pyramid(tmp_path / "big.tif", image, tile=256, compression="zlib", levels=1)
    reader = TiffReader(path)
    offsets = np.array(reader._pages[0][0].offsets)
    counts = np.array(reader._pages[0][0].counts)
    file_size = os.path.getsize(path)
    reader.read_region(Window(0, 0, 1, 1))  # warm up lazy imports before counting

    # tiles of the 8 x 8 grid that the window overlaps: rows 1-2, columns 3-4
    window = Window(300, 800, 300, 400)
    touched = [ty * 8 + tx for ty in (1, 2) for tx in (3, 4)]
    before, rchar_before = reader.bytes_read, _rchar() if sys.platform == "linux" else 0
    region = reader.read_region(window)
    read = reader.bytes_read - before
    assert np.array_equal(region, image[:, 300:600, 800:1200])
    assert read == counts[touched].sum()
    assert read < file_size / 10
    if sys.platform == "linux":  # the operating system's count agrees (+ reading /proc itself)
        assert 0 <= _rchar() - rchar_before - read < 1024
    assert offsets[touched].min() > 0


def test_read_padded_and_levels_past_the_border(jpeg_pyramid):
    reader = TiffReader(jpeg_pyramid)
    truth = tiff_levels(jpeg_pyramid)[1]
    out = read_padded(reader, Window(-10, 300, 40, 100), level=1)
    assert out.shape == (3, 40, 100)
    assert np.array_equal(out[:, 10:, :50], truth[:, :30, 300:350])
    assert not out[:, :10].any() and not out[:, :, 50:].any()
    edge = read_padded(reader, Window(-10, 300, 40, 100), level=1, mode="edge")
    rows, cols = np.clip(np.arange(-10, 30), 0, 299), np.clip(np.arange(300, 400), 0, 349)
    assert truth.shape[1:] == (300, 350)
    assert np.array_equal(edge, truth[:, rows[:, None], cols[None, :]])
    with pytest.raises(InputError, match="level 3 does not exist"):
        reader.read_region(Window(0, 0, 5, 5), level=3)
    with pytest.raises(InputError, match="outside level 1"):
        reader.read_region(Window(290, 0, 20, 5), level=1)


def test_tile_cache_decodes_each_tile_once_within_its_budget(tmp_path):
    image = smooth_image(512, 512, 3, "uint8")
    path = write_tiff_pyramid(tmp_path / "c.tif", image, tile=128, compression="zlib", levels=1)
    window = Window(100, 100, 200, 200)  # 3 x 3 tiles
    cached, uncached = TiffReader(path), TiffReader(path, cache_mb=0)
    for reader in (cached, uncached):
        first = reader.read_region(window)
        once = reader.bytes_read
        assert np.array_equal(reader.read_region(window), first)
        assert np.array_equal(first, image[:, 100:300, 100:300])
    assert cached.bytes_read == once and uncached.bytes_read == 2 * once
    cached.forget_tiles()
    assert np.array_equal(cached.read_region(window), first)
    assert cached.bytes_read == 2 * once
    tile_bytes = 128 * 128 * 3
    small = TiffReader(path, cache_mb=4.5 * tile_bytes / 2**20)  # room for 4 tiles
    small.read_region(Window(0, 0, 512, 512))
    assert len(small._cache) == 4 and small._cache.nbytes == 4 * tile_bytes
    before = small.bytes_read
    small.read_region(Window(384, 384, 128, 128))  # the last tile read: still cached
    assert small.bytes_read == before
    small.read_region(Window(0, 0, 128, 128))  # the first: evicted long ago
    assert small.bytes_read > before


def test_threads_wanting_the_same_tile_decode_it_once(tmp_path):
    """Read-ahead threads on neighbouring windows share each tile's decode (they used to
    race: each missed the cache and decoded the shared tile again)."""
    image = smooth_image(512, 512, 3, "uint8")
    path = write_tiff_pyramid(tmp_path / "t.tif", image, tile=128, compression="zlib", levels=1)
    reader = TiffReader(path)
    decode, decoded = reader._decode, []

    def slow_decode(page, index, level):
        decoded.append(index)
        time.sleep(0.05)  # the other threads reach the same tile meanwhile
        return decode(page, index, level)

    reader._decode = slow_decode
    windows = [Window(100, 100 + 50 * k, 100, 100) for k in range(6)]  # all touch tile column 1
    for window, pixels in Prefetcher(reader, windows, workers=4):
        rows, cols = window.slices()
        assert np.array_equal(pixels, image[:, rows, cols])
    assert sorted(decoded) == list(range(8)), decoded  # 2 tile rows x 4 columns, once each
