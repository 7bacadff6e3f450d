"""User mistakes and damaged files that once gave a raw traceback or were silently
accepted: each is now a one-line `XTError` (exit 2 from the CLI) naming the file or value
and the fix, or a tested behaviour. One test per row of docs/reliability.md's table."""

import errno
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from xtimage.build import build_model
from xtimage.checkpoint import load_model, read_checkpoint, save_checkpoint
from xtimage.cli import main, one_line
from xtimage.config import load_config
from xtimage.data.folder import FolderDataset
from xtimage.errors import ConfigError, InputError
from xtimage.io.atomic import AtomicPath, output_dir, remove_stale, remove_stale_in

TINY = [
    "model.region=64",
    "model.dim=32",
    "model.backbone_kwargs={depths: [1, 1, 1, 1], dims: [8, 8, 16, 16]}",
    "model.context_kwargs={depth: 1, heads: 2}",
    "model.decoder_channels=8",
]


def xt(capsys, *args):
    """Run `xt ARGS`; (exit code, stderr), stderr checked to be at most one line."""
    code = main([str(a) for a in args])
    err = re.sub(r"\r[^\r\n]*", "", capsys.readouterr().err).lstrip("\n")  # progress bars
    assert err.count("\n") <= 1, err
    return code, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = load_config(None, TINY)
    path = tmp_path_factory.mktemp("ckpt") / "good.safetensors"
    return save_checkpoint(path, build_model(config.model), config, step=3)


def rewrite(src, dst, *, meta=None, change=None):
    """Copy a checkpoint with its metadata replaced or a tensor changed."""
    with safe_open(str(src), "pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if change:
        change(tensors)
    save_file(tensors, str(dst), metadata={"xtimage": header["xtimage"] if meta is None else meta})
    return dst


# ---------------------------------------------------------------------------- data


def test_csv_row_with_too_few_fields(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("image,label\na.png,cat\na.png\n")
    with pytest.raises(InputError, match=r"labels.csv, line 3: 1 fields where the header has 2"):
        FolderDataset(tmp_path)


def test_nan_point_coordinates_are_a_bad_row(tmp_path):
    for name in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "points.csv").write_text("image,x,y\na.png,1,2\na.png,nan,3\nb.png,1,1\n")
    with pytest.raises(InputError, match=r"points.csv, row 3: coordinates .* not all finite"):
        FolderDataset(tmp_path)
    (tmp_path / "points.csv").write_text("image,x,y\na.png,1,2\na.png,inf,3\nb.png,1,1\n")
    assert len(FolderDataset(tmp_path, skip_bad=True)) == 1  # a.png's rows are dropped


def test_mask_value_above_the_classes_names_the_mask_and_leaves_no_run(tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    for name in ("a", "b"):
        (data / "images").mkdir(parents=True, exist_ok=True)
        (data / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(data / "images" / f"{name}.png")
        Image.fromarray(np.full((64, 64), 5, np.uint8)).save(data / "masks" / f"{name}.png")
    code, err = xt(capsys, "train", "folder_template", *TINY, "model.backbone=convnext_atto",
                   f"data.root={data}", "data.window=null", "data.val_fraction=0.5",
                   "model.num_classes=2", "train.steps=1", "train.batch_size=1",
                   "train.workers=0", "train.progress=false", f"train.out={run}")  # fmt: skip
    assert code == 2
    assert "png: mask value 5 is not a class index 0..1 (model.num_classes=2)" in err
    assert "raise model.num_classes" in err
    assert not run.exists()  # not a folder holding only config.yaml


def test_an_error_from_a_loader_worker_is_one_line():
    text = (
        "Caught InputError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        "call last):\n  File \"x.py\", line 1, in f\n    raise X\n"
        "xtimage.errors.InputError: m.png: mask value 5 is not a class index 0..1\n"
    )
    assert one_line(text) == "m.png: mask value 5 is not a class index 0..1"
    assert one_line("a\n  b") == "a b"


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", ".nan"])
def test_non_finite_numbers_in_a_config_are_refused(value, capsys):
    with pytest.raises(ConfigError, match=r"train.lr: .* is not a finite number"):
        load_config(None, [f"train.lr={value}"])
    code, err = xt(capsys, "train", "synthetic_seg", f"train.lr={value}")
    assert code == 2 and "not a finite number" in err


def test_yaml_syntax_error_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  region: 64\n  dim: [32\ntrain:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line \d+, column \d+: "):
        load_config(path)
    code, _ = xt(capsys, "train", path)
    assert code == 2


# ---------------------------------------------------------------------------- checkpoints


def test_checkpoint_metadata_that_is_not_json(checkpoint, tmp_path, capsys):
    bad = rewrite(checkpoint, tmp_path / "bad.safetensors", meta="{not json")
    with pytest.raises(InputError, match="bad.safetensors: the checkpoint's metadata is not JSON"):
        read_checkpoint(bad)
    assert xt(capsys, "eval", bad)[0] == 2


def test_checkpoint_metadata_without_its_config(checkpoint, tmp_path):
    with safe_open(str(checkpoint), "pt") as f:
        meta = json.loads(f.metadata()["xtimage"])
    del meta["config"]
    bad = rewrite(checkpoint, tmp_path / "noconfig.safetensors", meta=json.dumps(meta))
    with pytest.raises(InputError, match=r"noconfig.safetensors: .* lacks \['config'\]"):
        read_checkpoint(bad)
    meta_bad = {**json.loads(json.dumps(meta)), "config": {"model": {"region": "big"}}}
    bad = rewrite(checkpoint, tmp_path / "badconfig.safetensors", meta=json.dumps(meta_bad))
    with pytest.raises(InputError, match=r"badconfig.safetensors: the checkpoint's config"):
        read_checkpoint(bad)


def test_checkpoint_of_another_architecture_is_one_line(checkpoint, tmp_path, capsys):
    with safe_open(str(checkpoint), "pt") as f:
        meta = json.loads(f.metadata()["xtimage"])
    meta["config"]["model"]["dim"] = 48
    other = rewrite(checkpoint, tmp_path / "other.safetensors", meta=json.dumps(meta))
    with pytest.raises(InputError, match=r"other.safetensors: \d+ weight tensor\(s\) do not fit"):
        load_model(other)
    image = tmp_path / "x.npy"
    np.save(image, np.zeros((3, 64, 64), np.float32))
    code, err = xt(capsys, "predict", other, image, "-o", tmp_path / "out")
    assert code == 2 and "do not fit the model" in err and " vs " in err


def test_flipped_bytes_in_a_checkpoint_are_an_error(checkpoint, tmp_path, capsys):
    data = bytearray(checkpoint.read_bytes())
    for i in range(len(data) - 1000, len(data) - 800):  # 200 bytes inside the tensors
        data[i] ^= 0xFF
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match="flipped.safetensors: the tensors do not match"):
        read_checkpoint(bad)
    assert xt(capsys, "eval", bad)[0] == 2


def test_non_finite_weights_are_refused_at_load(checkpoint, tmp_path):
    def poison(tensors):
        name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
        tensors[name] = torch.full_like(tensors[name], float("nan"))

    with safe_open(str(checkpoint), "pt") as f:
        meta = json.loads(f.metadata()["xtimage"])
    meta.pop("digest")  # as an older checkpoint without one, so only finiteness can tell
    bad = rewrite(checkpoint, tmp_path / "nan.safetensors", meta=json.dumps(meta), change=poison)
    with pytest.raises(InputError, match="nan.safetensors: 1 weight tensor.* NaN or infinite"):
        read_checkpoint(bad)


def test_checkpoint_that_is_not_safetensors(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(300))
    with pytest.raises(InputError, match="junk.safetensors: not a readable safetensors"):
        read_checkpoint(tmp_path / "junk.safetensors")


# ---------------------------------------------------------------------------- outputs


def test_output_folder_that_is_a_file(checkpoint, tmp_path, capsys):
    image, out = tmp_path / "x.npy", tmp_path / "out.txt"
    np.save(image, np.zeros((3, 64, 64), np.float32))
    out.write_text("not a folder")
    code, err = xt(capsys, "predict", checkpoint, image, "-o", out)
    assert code == 2 and "out.txt: the output folder names an existing file" in err
    code, err = xt(capsys, "train", "synthetic_seg", *TINY, "train.steps=1", f"train.out={out}")
    assert code == 2 and "out.txt: the run folder (train.out) names an existing file" in err


def test_output_folder_that_is_not_writable(tmp_path, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: then the check itself is exercised
        folder.chmod(0o500)
    else:
        monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(InputError, match="locked: the output folder is not writable"):
        output_dir(folder)


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(checkpoint, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    import xtimage.checkpoint as module

    config = load_config(None, TINY)
    model = build_model(config.model)
    path = save_checkpoint(tmp_path / "last.safetensors", model, config, step=1)
    before = path.read_bytes()

    def full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, "_save_file", full)
    with pytest.raises(InputError, match="last.safetensors: no space left while writing it"):
        save_checkpoint(path, model, config, step=2)
    assert path.read_bytes() == before and read_checkpoint(path).step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # no .partial


def test_debris_of_dead_writers_is_removed_by_the_next_write(tmp_path):
    final = tmp_path / "mask.tif"
    host = AtomicPath(final).temp.name.split(".")[3].rpartition("-")[0]
    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale = [f".mask.tif.{host}-{dead}.0badc0de.{end}" for end in ("partial", "level0", "level3")]
    kept = [f".mask.tif.{host}-{os.getpid()}.12345678.partial",  # a live writer
            f".mask.tif.otherhost-{dead}.12345678.partial",  # another machine's
            ".mask.tif.abcdef12.partial", ".other.tif.x-1.y.partial"]  # new, or not ours
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"debris")
    removed = remove_stale(final)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    old = tmp_path / ".mask.tif.abcdef12.partial"
    os.utime(old, (0, 0))  # a nameless temporary from long ago
    assert remove_stale(final) == [old]


def test_debris_of_every_name_in_a_folder_is_removed_at_once(tmp_path):
    host = AtomicPath(tmp_path / "x").temp.name.split(".")[2].rpartition("-")[0]
    dead = 2**22 + 12345
    stale = [f".{name}.{host}-{dead}.0badc0de.partial"
             for name in ("last.safetensors", "best.safetensors", "config.yaml")]
    kept = [f".best.safetensors.{host}-{os.getpid()}.12345678.partial", ".hidden", "a.txt"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"debris")
    assert sorted(p.name for p in remove_stale_in(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
