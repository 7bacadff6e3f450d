"""One preprocessing: for the same file, training, evaluation and prediction give the
model the same tensor (folder and iNaturalist data), greyscale photos are matched to an
RGB model everywhere, and the model's own normalisation is the one it was built with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xtimage.build import build_model
from xtimage.config import load_config
from xtimage.data.preprocess import resize_image
from xtimage.data.registry import build_datasets
from xtimage.errors import InputError
from xtimage.io import open_reader
from xtimage.predict import Predictor
from xtimage.window import Window

from .inat_fixture import write_inat_fixture

TINY = [
    "model.region=32",
    "model.dim=16",
    "model.backbone_kwargs={depths: [1, 1, 1, 1], dims: [8, 8, 16, 16]}",
    "model.context_kwargs={depth: 1, heads: 2}",
    "model.decoder_channels=8",
]


def predictor_for(config):
    return Predictor(build_model(config.model, load_pretrained=False).eval(), config.model)


def whole(source):
    return source.read(Window(0, 0, source.height, source.width))


def test_folder_train_eval_and_predict_see_the_same_tensor(tmp_path):
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"{i}.png"
        )
        Image.fromarray(rng.integers(0, 2, (40, 56), dtype=np.uint8)).save(
            tmp_path / "masks" / f"{i}.png"
        )
    config = load_config(None, [*TINY, "data.kind=folder", f"data.root={tmp_path}",
                                f"data.val_root={tmp_path}", "data.augment=false"])  # fmt: skip
    data = build_datasets(config)
    predictor = predictor_for(config)
    for i in range(3):
        reader = open_reader(data.val.records[i].image)
        try:
            predicted = whole(predictor.source(reader))
        finally:
            reader.close()
        assert torch.equal(data.train[i]["image"], data.val[i]["image"])
        assert torch.equal(predicted, data.val[i]["image"])


def test_inaturalist_evaluation_and_prediction_agree(tmp_path):
    fx = write_inat_fixture(tmp_path)
    config = load_config("inat_tiny", [f"data.root={fx.root}"])
    data = build_datasets(config)
    predictor = predictor_for(config)
    for i, (path, _) in enumerate(data.val.samples):
        reader = open_reader(path)
        try:
            predicted = whole(predictor.source(reader))
        finally:
            reader.close()
        assert predicted.shape == (3, 64, 64)
        torch.testing.assert_close(predicted, data.val[i]["image"], atol=0, rtol=0)
        scores_file = predictor.predict(path).scores
        scores_eval = predictor.predict(data.val[i]["image"]).scores
        np.testing.assert_allclose(scores_file, scores_eval, atol=1e-6)
    assert any(open_reader(p).channels == 1 for p, _ in data.val.samples + data.train.samples)


def test_greyscale_photo_is_read_as_rgb_and_other_mismatches_are_named(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, (1, 40, 56), dtype=np.uint8)
    config = load_config(None, TINY)
    predictor = predictor_for(config)
    as_grey = predictor.predict(grey).mask
    as_rgb = predictor.predict(np.repeat(grey, 3, 0)).mask
    assert np.array_equal(as_grey, as_rgb)
    with pytest.raises(InputError, match="in_chans"):
        predictor.predict(np.zeros((5, 40, 56), np.uint8))


def test_model_normalises_with_its_configured_statistics():
    mean, std = [0.2, 0.4, 0.6], [0.5, 0.25, 0.125]
    plain = build_model(load_config(None, TINY).model).eval()
    norm = build_model(
        load_config(None, [*TINY, f"model.pixel_mean={mean}", f"model.pixel_std={std}"]).model
    ).eval()
    norm.load_state_dict(plain.state_dict())  # statistics are not weights
    x = torch.rand(1, 3, 64, 64)
    shifted = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(norm(x), plain(shifted))


def test_resize_image_keeps_uint8_and_float_inputs_consistent():
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    out = resize_image(image, 32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    close = resize_image(image.float() / 255, 32)
    assert (out - close).abs().mean() < 0.02


def test_a_normalising_model_still_names_a_wrong_channel_count():
    stats = ["model.pixel_mean=[0.5, 0.5, 0.5]", "model.pixel_std=[0.2, 0.2, 0.2]"]
    model = build_model(load_config(None, [*TINY, *stats]).model).eval()
    with pytest.raises(InputError, match="model.in_chans"):
        model.region_encoder(torch.rand(1, 2, 32, 32))
