"""Rasters `xt predict` writes carry a digest of their pixels (`xtimage.io.digest`): the
digest hashed while a writer streams equals the digest of the whole array; a changed
pixel is redone by `xt predict` (with a line saying so) and refused by `xt eval
--predictions` (one line, exit 2); an untouched file and a file without a digest (another
tool's) pass."""

import logging
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from tiny import TINY_MODEL
from xtimage.cli import main
from xtimage.errors import InputError
from xtimage.integrity import PixelDigest, digest_pixels
from xtimage.io import GeoTiffWriter, TiffWriter
from xtimage.io.digest import MISMATCH, stored_digest
from xtimage.io.open import output_problem, read_output
from xtimage.window import Window

_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8 offsets and byte counts


def flip_pixel(path, tile=0):
    """Change level 0's pixels in one deflate tile of a TIFF, keeping the file valid: the
    tile is inflated, one byte flipped, deflated again and appended to the file, and the
    tile's offset and byte count pointed at it (the stored digest is left as it was)."""
    with tifffile.TiffFile(path) as tif:
        page, order = tif.pages[0], tif.byteorder
        assert page.compression == 8, "a deflate TIFF"
        entries = [page.tags["TileOffsets"], page.tags["TileByteCounts"]]
    raw = bytearray(path.read_bytes())
    slots = [(f"{order}{_TYPES[t.dtype]}", t.valueoffset) for t in entries]
    slots = [(f, at + tile * struct.calcsize(f)) for f, at in slots]  # this tile's entries
    offset, count = (struct.unpack_from(f, raw, at)[0] for f, at in slots)
    pixels = bytearray(zlib.decompress(bytes(raw[offset : offset + count])))
    pixels[0] ^= 0x01  # the first pixel of the tile (or, with a predictor, its row)
    new = zlib.compress(bytes(pixels))
    for (f, at), value in zip(slots, (len(raw), len(new)), strict=True):
        struct.pack_into(f, raw, at, value)
    path.write_bytes(bytes(raw) + new)


def windows(height, width, step):
    for top in range(0, height, step):
        for left in range(0, width, step):
            yield Window(top, left, min(step, height - top), min(step, width - left))


# ---------------------------------------------------------------------- writers


@pytest.mark.parametrize("dtype,channels", [("uint8", 1), ("float32", 1), ("uint16", 3)])
def test_digest_streamed_by_the_tiff_writer_equals_the_whole_arrays(tmp_path, dtype, channels):
    rng = np.random.default_rng(0)
    pixels = (rng.random((channels, 300, 500)) * 200).astype(dtype)
    path = tmp_path / "map.tif"
    with TiffWriter(path, 300, 500, channels, dtype, tile=64) as writer:
        for window in reversed(list(windows(300, 500, 90))):  # any order, not tile-aligned
            writer.write(window, pixels[(slice(None), *window.slices())])
    assert stored_digest(path) == (digest_pixels(pixels, 64), 64)
    assert output_problem(path) is None
    assert np.array_equal(read_output(path), pixels)


@pytest.mark.parametrize("cog", [False, True])
def test_digest_of_the_geotiff_writer_equals_the_whole_arrays(tmp_path, cog):
    pytest.importorskip("rasterio")
    from xtimage.io.base import GeoInfo

    pixels = np.random.default_rng(1).random((1, 200, 130)).astype(np.float32)
    geo = GeoInfo((10.0, 0.0, 500000.0, 0.0, -10.0, 4100000.0), 'LOCAL_CS["x"]', None)
    path = tmp_path / "map.tif"
    with GeoTiffWriter(path, 200, 130, 1, "float32", geo=geo, tile=32, cog=cog) as writer:
        for window in windows(200, 130, 50):
            writer.write(window, pixels[(slice(None), *window.slices())])
    assert stored_digest(path) == (digest_pixels(pixels, 32), 32)
    assert output_problem(path) is None


def test_the_digest_is_the_same_for_any_order_of_the_same_tiles_only():
    pixels = np.arange(2 * 70 * 90, dtype=np.int16).reshape(2, 70, 90)
    streamed = PixelDigest(2, 70, 90, np.int16, 32)
    for top in range(0, 70, 32):
        for left in range(0, 90, 32):
            streamed.update(pixels[:, top : top + 32, left : left + 32])
    assert streamed.hexdigest() == digest_pixels(pixels, 32)
    assert digest_pixels(pixels.astype(">i2"), 32) == digest_pixels(pixels, 32)  # byte order
    assert digest_pixels(pixels, 16) != digest_pixels(pixels, 32)  # the tile side is stored
    wrong = PixelDigest(2, 70, 90, np.int16, 32)
    with pytest.raises(ValueError, match="expected the tile at"):
        wrong.update(pixels[:, :32, 32:64][:, :, :10])


def test_a_lossy_codec_gets_no_digest(tmp_path):
    path = tmp_path / "rgb.tif"
    with TiffWriter(path, 64, 64, 3, "uint8", tile=32, compression="jpeg") as writer:
        writer.write(Window(0, 0, 64, 64), np.full((3, 64, 64), 100, np.uint8))
    assert stored_digest(path) is None and output_problem(path) is None


# ---------------------------------------------------------------------- damage


def test_a_flipped_pixel_fails_the_check_and_an_untouched_or_foreign_file_passes(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 4, (1, 300, 300), dtype=np.uint8)
    path = tmp_path / "mask.tif"
    with TiffWriter(path, 300, 300, 1, "uint8", tile=128) as writer:
        writer.write(Window(0, 0, 300, 300), pixels)
    assert output_problem(path) is None  # untouched
    flip_pixel(path, tile=4)
    changed = tifffile.imread(path)
    assert (changed != pixels[0]).sum() >= 1  # still a valid file, one pixel differs
    assert output_problem(path) == MISMATCH
    with pytest.raises(InputError, match=r"mask.tif: its pixels do not match .*rerun xt predict"):
        read_output(path)
    foreign = tmp_path / "foreign.tif"  # another tool's file: no digest, read unchecked
    tifffile.imwrite(foreign, changed, tile=(128, 128), compression="zlib")
    assert stored_digest(foreign) is None and output_problem(foreign) is None
    assert np.array_equal(read_output(foreign)[0], changed)


def test_a_damaged_deflate_stream_is_an_error_naming_the_fix(tmp_path):
    path = tmp_path / "mask.tif"
    with TiffWriter(path, 100, 100, 1, "uint8", tile=64, levels=1) as writer:
        writer.write(Window(0, 0, 100, 100), np.ones((1, 100, 100), np.uint8))
    with tifffile.TiffFile(path) as tif:
        offset = int(tif.pages[0].dataoffsets[0])
    raw = bytearray(path.read_bytes())
    raw[offset + 2 : offset + 6] = b"\xde\xad\xbe\xef"
    path.write_bytes(bytes(raw))
    assert output_problem(path).startswith("it does not read (InputError")
    with pytest.raises(InputError, match=r"could not be decoded.*rerun xt predict"):
        read_output(path)


# ---------------------------------------------------------------------- xt


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """A 1-step segmentation run on a folder of 3 images, and its predictions."""
    tmp = tmp_path_factory.mktemp("digest")
    rng = np.random.default_rng(0)
    (tmp / "data/images").mkdir(parents=True)
    (tmp / "data/masks").mkdir()
    for i in range(3):
        image = rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp / f"data/images/im{i}.png")
        Image.fromarray((image[..., 0] > 128).astype(np.uint8)).save(tmp / f"data/masks/im{i}.png")
    config = [*TINY_MODEL, "data.kind=folder", "data.params={}", f"data.root={tmp / 'data'}",
              "data.val_fraction=0", "train.steps=1", "train.batch_size=3",
              "train.progress=false", f"train.out={tmp / 'run'}"]  # fmt: skip
    assert main(["train", "synthetic_seg", *config]) == 0
    ckpt = str(tmp / "run/checkpoints/last.safetensors")
    return tmp, ckpt


def test_predict_redoes_a_changed_mask_and_eval_refuses_it(seg, tmp_path, capsys, caplog):
    tmp, ckpt = seg
    out = tmp_path / "out"
    predict = ["predict", ckpt, str(tmp / "data/images"), "-o", str(out), "--quiet"]
    score = ["eval", ckpt, f"data.val_root={tmp / 'data'}", "--predictions", str(out), "--json"]
    assert main(predict) == 0
    assert main(score) == 0  # untouched files pass
    capsys.readouterr()
    mask = out / "im1.mask.tif"
    good = tifffile.imread(mask)
    flip_pixel(mask)
    assert not np.array_equal(tifffile.imread(mask), good)

    assert main(score) == 2  # refused, one line naming the file and the fix
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{mask}: its pixels do not match" in err
    assert "rerun xt predict" in err

    with caplog.at_level(logging.WARNING, logger="xtimage.predict"):
        assert main(predict) == 0  # the changed mask is never trusted as done
    assert "predicted 1 file(s), skipped 2 already done" in capsys.readouterr().out
    said = [r.getMessage() for r in caplog.records if r.name == "xtimage.predict"]
    assert said == [f"{mask}: {MISMATCH}; predicting {tmp / 'data/images/im1.png'} again"]
    assert np.array_equal(tifffile.imread(mask), good) and output_problem(mask) is None
    assert main(score) == 0


def test_eval_reads_a_mask_written_by_another_tool(seg, tmp_path, capsys):
    tmp, ckpt = seg
    out = tmp_path / "out"
    out.mkdir()
    for i in range(3):  # the reference masks themselves, written without a digest
        mask = np.asarray(Image.open(tmp / f"data/masks/im{i}.png"))
        tifffile.imwrite(out / f"im{i}.mask.tif", mask)
    score = ["eval", ckpt, f"data.val_root={tmp / 'data'}", "--predictions", str(out), "--json"]
    assert main(score) == 0
    assert '"foreground_iou": 1.0' in capsys.readouterr().out

