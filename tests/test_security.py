"""No path in xtimage unpickles code: hostile files that would create a marker file if
they were unpickled are passed everywhere weights, checkpoints, caches or arrays are
loaded; each is refused (or, for a cache, recomputed) and the marker never appears."""

import os
import pickle

import numpy as np
import pytest
import torch

from xtimage.cli import main
from xtimage.errors import InputError


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a hostile pickle ran code"


def test_the_payload_does_run_when_unpickled(tmp_path):
    """The control: plain pickle does create the marker, so its absence below means
    the hostile files were never unpickled."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def hostile_torch_file(path, marker):
    import timm

    state = timm.create_model("convnext_atto").state_dict()
    torch.save({"state_dict": state, "args": Payload(marker)}, path)
    return path


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".ckpt"])
def test_pretrained_weights_are_loaded_without_code(tmp_path, marker, suffix):
    from xtimage.encoders.region import RegionEncoder

    path = hostile_torch_file(tmp_path / f"weights{suffix}", marker)
    with pytest.raises(InputError, match=rf"weights{suffix}"):
        RegionEncoder("convnext_atto", region=64, pretrained=path)


def test_pretrained_weights_through_the_config(tmp_path, marker):
    path = hostile_torch_file(tmp_path / "weights.pth", marker)
    code = main(["train", "synthetic_tiny", f"train.out={tmp_path / 'run'}", "train.steps=1",
                 f"model.pretrained={path}"])  # fmt: skip
    assert code == 2


@pytest.mark.parametrize("name", ["best.safetensors", "model.pth", "last.ckpt"])
def test_checkpoints_are_loaded_without_code(tmp_path, marker, name):
    from xtimage.checkpoint import read_checkpoint

    path = tmp_path / name
    path.write_bytes(pickle.dumps({"model": Payload(marker)}))
    with pytest.raises(InputError, match=name):
        read_checkpoint(path)
    image = tmp_path / "image.npy"
    np.save(image, np.zeros((3, 32, 32), np.float32))
    assert main(["predict", str(path), str(image), "-o", str(tmp_path / "out")]) == 2
    assert main(["eval", str(path)]) == 2
    assert main(["train", "--resume", str(path)]) == 2


def test_shoreline_object_arrays_admit_only_numpy(tmp_path, marker):
    from xtimage.metrics.xview3 import load_shoreline

    hostile = np.empty(2, dtype=object)
    hostile[0], hostile[1] = np.zeros((3, 2)), Payload(marker)
    np.save(tmp_path / "s1_shoreline.npy", hostile, allow_pickle=True)
    with pytest.raises(InputError, match=r"s1_shoreline.npy: not loaded.*posix.system"):
        load_shoreline(tmp_path, "s1")
    (tmp_path / "s2_shoreline.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match="s2_shoreline.npy: not a readable .npy file"):
        load_shoreline(tmp_path, "s2")


def test_image_npy_with_objects_is_refused(tmp_path, marker):
    from xtimage.io import open_reader

    hostile = np.empty((1, 2, 2), dtype=object)
    hostile[0, 0, 0] = Payload(marker)
    np.save(tmp_path / "scene.npy", hostile, allow_pickle=True)
    with pytest.raises(InputError, match="scene.npy"):
        open_reader(tmp_path / "scene.npy")
    assert main(["info", str(tmp_path / "scene.npy")]) == 2
