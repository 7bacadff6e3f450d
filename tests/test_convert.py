"""`xt convert`: the xT release's checkpoints load into xtimage and compute the same.

The fixtures under ``fixtures/release`` are the authors' own models (their code, from
github.com/bair-climate-initiative/xT) in tiny configurations with random weights, saved
as their trainer saves checkpoints, with their logits on a fixed input; they are written
by ``tools/make_parity_fixtures.py`` (see there for the configurations and how Mamba ran
without CUDA).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xtimage.checkpoint import load_model, read_checkpoint
from xtimage.cli import main
from xtimage.config import load_config
from xtimage.convert import convert_checkpoint, guess_preset, read_release_checkpoint
from xtimage.errors import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "release"
# The tiny backbones of tools/make_parity_fixtures.py, as xtimage model sections.
SWIN = {
    "backbone": "swinv2_tiny_window16_256",
    "backbone_kwargs": {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]},
}
HIERA = {
    "backbone": "hiera_base_224",
    "backbone_kwargs": {"embed_dim": 8, "num_heads": 1, "stages": [1, 1, 1, 1]},
}
FAMILIES = {
    "swin_hyper": (SWIN, {"backbone": "swin", "head": "hyper"}),
    "swin_mamba": (SWIN, {"backbone": "swin", "head": "mamba"}),
    "swin_naive": (SWIN, {"backbone": "swin", "head": "naive"}),
    "hiera_hyper": (HIERA, {"backbone": "hiera", "head": "hyper"}),
}
TOLERANCE = 1e-5  # float32; measured max |difference| 0 to 9e-7


def tiny_config(backbone: dict):
    model = {**backbone, "region": 64, "head": "classification", "num_classes": 7}
    return load_config({"model": model, "data": {"kind": "synthetic"}})


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_release_checkpoint_matches_their_forward(family: str, tmp_path: Path) -> None:
    backbone, expected = FAMILIES[family]
    out = tmp_path / f"{family}.safetensors"
    report = convert_checkpoint(FIXTURES / f"{family}.ckpt", out, tiny_config(backbone))
    assert report.family == expected
    assert report.unused == [] and report.unfilled == []
    model, ckpt = load_model(out)
    assert ckpt.config.model.release and ckpt.state["release_epoch"] == 3
    io = load_file(str(FIXTURES / f"{family}.io.safetensors"))
    with torch.no_grad():
        logits = model(io["image"])
    assert logits.shape == io["logits"].shape
    torch.testing.assert_close(logits, io["logits"], atol=TOLERANCE, rtol=0)


def test_release_windows_path_matches_theirs(tmp_path: Path) -> None:
    """Their in-context-patches path (the XL rows' code, memory never carried) with
    windows of 6 tokens: swin_hyper's weights, model.release_chunk=6."""
    out = tmp_path / "w.safetensors"
    config = tiny_config(SWIN)
    config.model.release_chunk = 6
    convert_checkpoint(FIXTURES / "swin_hyper.ckpt", out, config)
    model, ckpt = load_model(out)
    assert ckpt.config.model.release_chunk == 6
    io = load_file(str(FIXTURES / "swin_hyper_windows.io.safetensors"))
    with torch.no_grad():
        logits = model(io["image"])
    torch.testing.assert_close(logits, io["logits"], atol=TOLERANCE, rtol=0)
    model.release_chunk = None  # the whole sequence at once: another number
    with torch.no_grad():
        assert (model(io["image"]) - io["logits"]).abs().max() > 1e-3


def test_release_options_matter(tmp_path: Path) -> None:
    """Without the release's token order and channel layout the numbers differ: the
    options are what makes the parity, not an accident of the fixture."""
    out = tmp_path / "m.safetensors"
    convert_checkpoint(FIXTURES / "swin_hyper.ckpt", out, tiny_config(SWIN))
    model, _ = load_model(out)
    io = load_file(str(FIXTURES / "swin_hyper.io.safetensors"))
    model.release = False  # region-major order, row-first codes
    with torch.no_grad():
        assert (model(io["image"]) - io["logits"]).abs().max() > 1e-3


def test_streamed_engine_matches_release(tmp_path: Path) -> None:
    """The engine's chunked encoding (non-streaming context) gives the same logits."""
    from xtimage.engine import Engine

    out = tmp_path / "m.safetensors"
    convert_checkpoint(FIXTURES / "swin_mamba.ckpt", out, tiny_config(SWIN))
    model, _ = load_model(out)
    io = load_file(str(FIXTURES / "swin_mamba.io.safetensors"))
    runner = Engine(model, region_batch=1)
    logits = runner.classify([io["image"][0].numpy()])
    torch.testing.assert_close(logits, io["logits"], atol=TOLERANCE, rtol=0)


def test_cli_convert_reports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(SWIN).to_dict()))
    out = tmp_path / "out.safetensors"
    code = main(["convert", str(FIXTURES / "swin_naive.ckpt"), str(out), str(cfg)])
    assert code == 0
    text = capsys.readouterr().out
    assert "swin" in text and "naive" in text and "unused: none" in text
    assert read_checkpoint(out).config.model.class_mlp_ratio == 2


def test_a_full_payload_with_numpy_metrics_and_optimizer_state_loads(tmp_path: Path) -> None:
    """Their trainer also saves the optimizer and metrics, which may be numpy scalars."""
    import numpy as np

    payload = torch.load(FIXTURES / "swin_naive.ckpt", weights_only=True)
    params = [torch.nn.Parameter(v.clone()) for v in list(payload["state_dict"].values())[:3]]
    opt = torch.optim.AdamW(params, lr=1e-4)
    sum(p.sum() for p in params).backward()
    opt.step()
    payload["optimizer_state_dict"] = opt.state_dict()
    payload["metrics"] = {"top1": np.float64(0.61), "epoch": np.int64(3), "best": np.float32(2)}
    src = tmp_path / "swin-t-nonxl-256-top1.ckpt"
    torch.save(payload, src)
    ckpt = read_release_checkpoint(src)
    assert ckpt.epoch == 3 and ckpt.family == {"backbone": "swin", "head": "naive"}


def test_wrong_preset_names_the_tensor(tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    with pytest.raises(InputError, match="shape"):
        convert_checkpoint(FIXTURES / "swin_hyper.ckpt", out, tiny_config(HIERA))
    assert not out.exists()


def test_guess_preset_needs_a_release_width() -> None:
    ckpt = read_release_checkpoint(FIXTURES / "swin_hyper.ckpt")
    with pytest.raises(Exception, match="matches no release preset"):
        guess_preset(ckpt)
    ckpt.state["encoder.model.patch_embed.proj.weight"] = torch.zeros(96, 3, 4, 4)
    assert guess_preset(ckpt) == "inat_reptilia_swin_t_hyper"
    assert guess_preset(ckpt, "swin-t-hyper-256-256-top1.ckpt") == "inat_reptilia_swin_t_hyper_256"


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("container", ["pickle", "torch.save"])
def test_hostile_pickle_runs_nothing(tmp_path: Path, container: str, capsys) -> None:
    marker = tmp_path / "ran"
    src = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"encoder.x": _Hostile(marker)}}
    if container == "pickle":
        src.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, src)
    pickle.loads(pickle.dumps(_Hostile(marker)))  # the payload does run when unpickled...
    assert marker.exists()
    marker.unlink()
    out = tmp_path / "out.safetensors"
    code = main(["convert", str(src), str(out), "inat_reptilia_swin_t_hyper"])
    assert code == 2  # ...but not here: refused with one line
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused" in err
    assert not marker.exists() and not out.exists()
    assert os.listdir(tmp_path) == ["evil.ckpt"]  # no temporary file left either


def test_unrecognised_files_are_refused(tmp_path: Path, capsys) -> None:
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"backbone.w": torch.zeros(2)}}, plain)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    for src in (plain, junk, tmp_path / "missing.ckpt"):
        code = main(["convert", str(src), str(tmp_path / "o.safetensors")])
        assert code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "o.safetensors").exists()
