"""End to end through the `xt` command: a tiny model overfits a tiny folder data set for
each task family; `xt predict` on a tiled TIFF and a GeoTIFF; `xt eval` of a checkpoint
and of prediction files; help, errors and exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from xtimage.cli import main
from xtimage.commands import bench

TINY = [
    "model.region=64",
    "model.dim=32",
    "model.backbone_kwargs={depths: [1, 1, 1, 1], dims: [8, 8, 16, 16]}",
    "model.context_kwargs={depth: 1, heads: 2}",
    "model.decoder_channels=16",
    "data.kind=folder",
    "data.params={}",
    "data.val_fraction=0",
    "data.augment=false",
    "train.batch_size=4",
    "train.warmup=0",
    "train.log_every=1",
    "train.progress=false",
]
PRESET = {"segmentation": "synthetic_seg", "classification": "synthetic_cls",
          "detection": "synthetic_det"}  # fmt: skip


def square_image(rng, size, color):
    """A dark noisy RGB image with one bright red or green square, and its mask and box."""
    image = (rng.random((size, size, 3)) * 60).astype(np.uint8)
    side = int(rng.integers(16, 32))
    y, x = (int(v) for v in rng.integers(0, size - side, 2))
    image[y : y + side, x : x + side, 0 if color == "red" else 1] = 220
    mask = np.zeros((size, size), np.uint8)
    mask[y : y + side, x : x + side] = 1
    return image, mask, (x, y, x + side, y + side)


def make_folder(root: Path, head: str, n: int = 4, size: int = 96) -> Path:
    """A user's folder: PNG images of 96 px (2 x 2 regions of 64, padded), one square
    each; masks/, labels.csv (its colour) or boxes.csv, by task."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = {
        "segmentation": [],
        "classification": ["image,label"],
        "detection": ["image,x0,y0,x1,y1"],
    }
    for i in range(n):
        color = ("red", "green")[i % 2]
        image, mask, box = square_image(rng, size, color)
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        if head == "segmentation":
            (root / "masks").mkdir(exist_ok=True)
            Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
        rows["classification"].append(f"images/im{i}.png,{color}")
        rows["detection"].append(f"images/im{i}.png,{','.join(map(str, box))}")
    name = {"classification": "labels.csv", "detection": "boxes.csv"}.get(head)
    if name:
        (root / name).write_text("\n".join(rows[head]) + "\n")
    return root


def train(tmp: Path, head: str, *overrides: str) -> list[dict]:
    data = make_folder(tmp / "data", head)
    classes = "1" if head == "detection" else "2"
    args = [*TINY, f"data.root={data}", f"model.num_classes={classes}", f"train.out={tmp / 'run'}"]
    assert main(["train", PRESET[head], *args, *overrides]) == 0
    rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    # the loss sits near the constant predictor for 10 to 90 steps, by seed: 100 to escape
    rows = train(tmp, "segmentation", "train.steps=100", "train.lr=1e-2", "train.warmup=3")
    return tmp, rows


def test_segmentation_overfits_below_the_best_constant_predictor(seg_run):
    tmp, rows = seg_run
    masks = [np.asarray(Image.open(p)) for p in sorted((tmp / "data" / "masks").iterdir())]
    f = np.mean(masks)  # foreground share: a constant predictor's best loss is its entropy
    entropy = -(f * np.log(f) + (1 - f) * np.log(1 - f))
    assert rows[-1]["step"] == 100
    assert rows[-1]["loss"] < 0.6 * entropy < rows[0]["loss"]


def test_classification_overfits(tmp_path):
    rows = train(tmp_path, "classification", "train.steps=30", "train.lr=3e-3",
                 "model.label_smoothing=0")  # fmt: skip
    assert rows[0]["loss"] > 0.6 and rows[-1]["loss"] < 0.35  # ln 2 = 0.69: chance


def test_detection_overfits(tmp_path):
    rows = train(tmp_path, "detection", "train.steps=80", "train.lr=3e-2", "train.warmup=3")
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]


def test_predict_tiff_and_geotiff_keep_size_and_georeference(seg_run, tmp_path, capsys):
    rasterio = pytest.importorskip("rasterio")
    run, _ = seg_run
    rng = np.random.default_rng(7)
    image, mask, _ = square_image(rng, 150, "red")  # unseen, 3 x 3 regions
    tifffile.imwrite(tmp_path / "tiled.tif", image, tile=(32, 32), photometric="rgb")
    transform = rasterio.Affine(10.0, 0.0, 399960.0, 0.0, -10.0, 4500000.0)
    with rasterio.open(tmp_path / "geo.tif", "w", driver="GTiff", height=150, width=150,
                       count=3, dtype="uint8", crs="EPSG:32631", transform=transform,
                       tiled=True, blockxsize=32, blockysize=32) as ds:  # fmt: skip
        ds.write(image.transpose(2, 0, 1))
    ckpt = run / "run" / "checkpoints" / "last.safetensors"
    out = tmp_path / "out"
    for name in ("tiled.tif", "geo.tif"):
        assert main(["predict", str(ckpt), str(tmp_path / name), "-o", str(out), "--quiet"]) == 0
    assert "predicted 1 file(s)" in capsys.readouterr().out
    predicted = tifffile.imread(out / "tiled.mask.tif")
    assert predicted.shape == (150, 150)
    iou = (predicted & mask).sum() / (predicted | mask).sum()
    assert iou > 0.5  # the trained model finds the square in an image it never saw
    with rasterio.open(tmp_path / "geo.tif") as src, rasterio.open(out / "geo.mask.tif") as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert np.array_equal(dst.read(1), predicted)
    assert main(["predict", str(ckpt), str(tmp_path / "tiled.tif"), "-o", str(out)]) == 0
    assert "skipped 1 already done" in capsys.readouterr().out


def test_eval_of_checkpoint_equals_eval_of_its_prediction_files(seg_run, tmp_path, capsys):
    run, _ = seg_run
    ckpt, data = str(run / "run" / "checkpoints" / "last.safetensors"), run / "data"
    assert main(["predict", ckpt, str(data / "images"), "-o", str(tmp_path), "--quiet"]) == 0
    capsys.readouterr()
    common = [f"data.val_root={data}", "--json"]
    assert main(["eval", ckpt, *common]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert main(["eval", ckpt, *common, "--predictions", str(tmp_path)]) == 0
    from_files = json.loads(capsys.readouterr().out)
    assert direct["iou"] == pytest.approx(from_files["iou"]) and direct["images"] == 4
    assert direct["foreground_iou"] > 0.5 and "rule" in direct["thresholds"]
    # the CPU speed options: channels-last to float32 rounding, bf16 to a few pixels
    assert main(["eval", ckpt, *common, "--channels-last"]) == 0
    assert json.loads(capsys.readouterr().out)["iou"] == pytest.approx(direct["iou"], abs=1e-4)
    assert main(["eval", ckpt, *common, "--amp", "bf16"]) == 0
    assert json.loads(capsys.readouterr().out)["iou"] == pytest.approx(direct["iou"], abs=0.02)


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["train", "synthetic_seg", "train.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "allowed under train: accumulate" in err
    np.save(tmp_path / "a.npy", np.zeros((3, 8, 8), np.uint8))
    missing = str(tmp_path / "none.safetensors")
    assert main(["predict", missing, str(tmp_path / "a.npy"), "-o", str(tmp_path)]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["train"]) == 2 and "give a config" in capsys.readouterr().err


def test_bench_runs_the_quick_benchmarks_and_reports_failures(tmp_path, monkeypatch, capsys):
    parse = 'import argparse\nargparse.ArgumentParser().add_argument("--quick")\n'
    (tmp_path / "fast.py").write_text(
        f'"""A fake benchmark."""\n{parse}import sys\nassert sys.argv[1:] == ["--quick"]\n'
        'print("| size | rate |")\n'
    )
    (tmp_path / "broken.py").write_text(f'"""Fails."""\n{parse}raise SystemExit(3)\n')
    (tmp_path / "helper.py").write_text('"""Shared code: no quick mode, not a benchmark."""\n')
    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path)
    monkeypatch.chdir(tmp_path)  # a benchmarks/ folder in the working directory comes first
    assert main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "fast" in listed and "A fake benchmark." in listed and "helper" not in listed
    assert main(["bench", "fast"]) == 0
    assert main(["bench"]) == 1
    assert "failed: broken" in capsys.readouterr().err
    assert main(["bench", "nope"]) == 2


@pytest.mark.slow
def test_torchrun_two_processes_train_and_predict(tmp_path):
    data = make_folder(tmp_path / "data", "segmentation")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", "29531", "-m", "xtimage.cli"]  # fmt: skip
    args = [*TINY, f"data.root={data}", "train.steps=4", f"train.out={tmp_path / 'run'}"]
    subprocess.run([*torchrun, "train", "synthetic_seg", *args], check=True, timeout=600)
    ckpt = tmp_path / "run" / "checkpoints" / "last.safetensors"
    subprocess.run([*torchrun, "predict", str(ckpt), str(data / "images"), "-o",
                    str(tmp_path / "out"), "--quiet"], check=True, timeout=600)  # fmt: skip
    assert len(list((tmp_path / "out").glob("*.mask.tif"))) == 4
    index = json.loads((tmp_path / "out" / "xt_index.json").read_text())  # merged by rank 0
    assert [r["status"] for r in index] == ["done"] * 4 and {r["rank"] for r in index} == {0, 1}


def test_resume_through_the_cli_continues_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiny = [a for a in TINY if not a.startswith("data.")]  # synthetic data
    args = [*tiny, "data.size=128", "data.train_samples=2", "data.val_samples=0",
            "train.batch_size=1", "train.out=run"]  # fmt: skip
    assert main(["train", "synthetic_seg", *args, "train.steps=2"]) == 0
    assert main(["train", "--resume", "run", "train.steps=4"]) == 0
    assert "trained 4 steps" in capsys.readouterr().out
    rows = [json.loads(line) for line in Path("run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    from xtimage.checkpoint import read_checkpoint

    assert read_checkpoint("run").step == 4
    assert main(["train", "synthetic_seg", *args, "train.steps=2"]) == 2  # the folder is used
