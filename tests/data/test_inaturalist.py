"""iNaturalist 2018: the fixture read by pycocotools and by our loader; class maps; recipe."""

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from pycocotools.coco import COCO

from xtimage.build import build_model
from xtimage.config import CONFIG_DIR, load_config
from xtimage.data.inaturalist import (
    IMAGENET_MEAN,
    INaturalist,
    inat_transform,
    posterize,
    read_class_map,
)
from xtimage.errors import ConfigError, InputError
from xtimage.train import Trainer

from .inat_fixture import CATEGORIES, COUNTS, REPTILIA, write_inat_fixture


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return write_inat_fixture(tmp_path_factory.mktemp("inat"))


@pytest.mark.parametrize("split", ["train", "val"])
def test_fixture_is_read_by_pycocotools(fx, split, capsys):
    coco = COCO(str(fx.root / f"{split}2018.json"))
    capsys.readouterr()
    assert len(coco.getImgIds()) == sum(COUNTS[split].values())
    assert sorted(coco.getCatIds()) == sorted(c[0] for c in CATEGORIES)  # all, in both
    for category, n in COUNTS[split].items():
        assert len(coco.getImgIds(catIds=[category])) == n
    reptiles = [
        c["id"] for c in coco.loadCats(coco.getCatIds()) if c["supercategory"] == "Reptilia"
    ]
    assert reptiles == REPTILIA
    for img in coco.loadImgs(coco.getImgIds()):
        with Image.open(fx.root / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"])


def test_names_come_from_categories_json_as_the_release_ships_them(fx):
    listed = json.loads((fx.root / "train2018.json").read_text())["categories"]
    assert "Crotalus atrox" not in {c["name"] for c in listed}  # obfuscated there
    data = INaturalist(fx.root, "val", supercategory="Reptilia")
    assert data.classes[0] == "Crotalus atrox" and data.categories[0]["genus"] == "Crotalus"


def test_taxonomy_only_in_categories_json(tmp_path):
    bare = write_inat_fixture(tmp_path / "bare", bare_categories=True)
    data = INaturalist(bare.root, "train", supercategory="Reptilia")
    assert [c["id"] for c in data.categories] == REPTILIA
    assert len(data) == sum(COUNTS["train"][c] for c in REPTILIA)
    (bare.root / "categories.json").rename(tmp_path / "elsewhere.json")
    again = INaturalist(
        bare.root, "train", supercategory="Reptilia", categories_file=tmp_path / "elsewhere.json"
    )
    assert again.classes == data.classes
    with pytest.raises(InputError, match="no supercategory; the release ships them in categor"):
        INaturalist(bare.root, "train", supercategory="Reptilia")


def test_without_categories_json_the_annotation_file_is_used(tmp_path):
    plain = write_inat_fixture(tmp_path / "plain", obfuscated_taxonomy=False, categories_json=False)
    data = INaturalist(plain.root, "train", supercategory="Reptilia")
    assert data.classes == ["Crotalus atrox", "Chelonia mydas", "Anolis carolinensis"]


def test_reptilia_subset_and_labels(fx):
    data = INaturalist(fx.root, "train", supercategory="Reptilia")
    assert data.num_classes == 3 and data.classes == [
        "Crotalus atrox",
        "Chelonia mydas",
        "Anolis carolinensis",
    ]
    assert len(data) == sum(COUNTS["train"][c] for c in REPTILIA)
    for i, (path, _) in enumerate(data.samples):
        name = path.relative_to(fx.root).as_posix()
        sample = data[i]
        assert REPTILIA[sample["label"].item()] == fx.labels["train"][name]
        image = sample["image"]
        with Image.open(path) as im:
            expected = np.asarray(im.convert("RGB")).transpose(2, 0, 1) / 255
        assert image.dtype == torch.float32 and image.shape == expected.shape
        np.testing.assert_allclose(image.numpy(), expected, atol=1e-6)
        if name == fx.greyscale:
            assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_no_supercategory_keeps_everything(fx):
    data = INaturalist(fx.root, "train")
    assert data.num_classes == len(CATEGORIES) and len(data) == sum(COUNTS["train"].values())
    ids = [c["id"] for c in data.categories]
    assert ids == sorted(ids)


def test_class_map_round_trip_keeps_train_and_val_aligned(fx, tmp_path):
    train = INaturalist(fx.root, "train", supercategory="Reptilia")
    path = train.save_class_map(tmp_path / "classes.json")
    supercategory, classes = read_class_map(path)
    assert supercategory == "Reptilia" and [c["id"] for c in classes] == REPTILIA
    assert classes[0]["genus"] == "Crotalus" and classes[1]["order"] == "Testudines"
    val = INaturalist(fx.root, "val", class_map=path)
    assert val.supercategory == "Reptilia" and val.classes == train.classes
    for path_, label in val.samples:
        assert REPTILIA[label] == fx.labels["val"][path_.relative_to(fx.root).as_posix()]


def test_class_map_order_is_obeyed(fx, tmp_path):
    train = INaturalist(fx.root, "train", supercategory="Reptilia")
    path = train.save_class_map(tmp_path / "classes.json")
    data = json.loads(path.read_text())
    data["classes"] = [dict(c, index=i) for i, c in enumerate(reversed(data["classes"]))]
    path.write_text(json.dumps(data))
    reordered = INaturalist(fx.root, "train", class_map=path)
    assert [s[1] for s in reordered.samples] == [2 - s[1] for s in train.samples]


def test_the_xt_release_class_map_format(fx, tmp_path):
    path = tmp_path / "category_label_reptilia_map.json"
    path.write_text(json.dumps({"1010": 0, "1002": 1, "1005": 2}))
    data = INaturalist(fx.root, "train", class_map=path)
    assert data.supercategory is None
    assert data.classes == ["Anolis carolinensis", "Crotalus atrox", "Chelonia mydas"]
    assert len(data) == sum(COUNTS["train"][c] for c in REPTILIA)
    for file, label in data.samples:
        assert [1010, 1002, 1005][label] == fx.labels["train"][file.relative_to(fx.root).as_posix()]
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(InputError, match="not a class map"):
        INaturalist(fx.root, "train", class_map=path)


def test_errors_name_the_value_and_the_fix(fx, tmp_path):
    with pytest.raises(ConfigError, match="'Reptiles' is not in .*known: Aves, Plantae, Reptilia"):
        INaturalist(fx.root, "train", supercategory="Reptiles")
    with pytest.raises(ConfigError, match="unknown iNaturalist split 'test'"):
        INaturalist(fx.root, "test")
    path = INaturalist(fx.root, "train", supercategory="Reptilia").save_class_map(
        tmp_path / "c.json"
    )
    with pytest.raises(ConfigError, match="differs from the class map's 'Reptilia'"):
        INaturalist(fx.root, "val", supercategory="Aves", class_map=path)
    data = json.loads(path.read_text())
    data["classes"] = data["classes"][:2]
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="category 1010, which the class map"):
        INaturalist(fx.root, "train", class_map=path)


def edited(fx, tmp_path, edit):
    data = json.loads((fx.root / "train2018.json").read_text())
    edit(data)
    path = tmp_path / "train2018.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["annotations"].append({"id": 99, "image_id": 0, "category_id": 205}),
            r"annotations\[9\] \(id 99\): image 0 is labelled both 200 and 205",
        ),
        (
            lambda d: d["annotations"][3].update(image_id=1234),
            r"annotations\[3\] \(id 3\): image_id 1234 is not in images",
        ),
        (
            lambda d: d["categories"].append({"id": 4242, "name": "x"}),
            r"categories.json lacks categories \[4242\] of",
        ),
        (lambda d: d["images"][4].update(file_name=7), r"images\[4\] has file_name=7"),
    ],
)
def test_bad_entries_name_the_file_and_the_entry(fx, tmp_path, edit, message):
    path = edited(fx, tmp_path, edit)
    with pytest.raises(InputError, match=message) as info:
        INaturalist(fx.root, annotation_file=path)
    assert str(path) in str(info.value)


def test_recipe_transforms():
    grey = torch.full((3, 40, 60), 128, dtype=torch.uint8)
    evaluate = inat_transform(32, train=False)
    out = evaluate(grey)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    expected = torch.full((3,), 128 / 255)  # ImageNet's statistics are the model's
    torch.testing.assert_close(out.mean((1, 2)), expected, atol=1e-5, rtol=0)
    image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    assert torch.equal(evaluate(image), evaluate(image))
    train = inat_transform(32, train=True)
    torch.manual_seed(0)
    a = train(image)
    b = train(image)
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)


def test_posterize_to_zero_bits_is_black_not_an_error():
    image = Image.fromarray(np.full((4, 4, 3), 200, np.uint8))
    assert np.asarray(posterize(image, 0)).max() == 0
    assert np.asarray(posterize(image, 2)).tolist() == np.full((4, 4, 3), 192).tolist()
    assert posterize(image, 8) is image
    ops = [
        op
        for step in inat_transform(16, True).pipeline.transforms
        for op in getattr(step, "ops", [])
    ]
    assert [op.aug_fn for op in ops if op.name.startswith("Posterize")] == [posterize]


def test_transform_is_applied_to_uint8(fx):
    seen = []
    data = INaturalist(
        fx.root,
        "val",
        supercategory="Reptilia",
        transform=lambda x: seen.append(x.dtype) or x.float(),
    )
    assert data[0]["image"].shape[0] == 3 and seen == [torch.uint8]


# ------------------------------------------------------------------------- presets

PRESETS = sorted(  # the 512/256 ones (the others: tests/test_paper.py)
    p
    for p in CONFIG_DIR.glob("inat_reptilia_*.yaml")
    if p.stem.endswith(("_hyper", "_xl", "_mamba"))
)
# the xT release's README: parameters (millions) of its Reptilia models at 512/256
RELEASE_PARAMS = {
    "swin_t_hyper": 47,
    "swin_t_mamba": 44,
    "swin_s_hyper": 69,
    "swin_b_hyper": 107,
    "swin_b_mamba": 103,
    "swin_l_hyper": 215,
    "swin_l_mamba": 212,
}


def test_presets_hold_the_release_recipe():
    assert len(PRESETS) == 15  # Swin-V2 T/S/B/L and Hiera-B, each with hyper, xl, mamba
    for path in PRESETS:
        config = load_config(path)
        m, d, t = config.model, config.data, config.train
        family, context = path.stem.removeprefix("inat_reptilia_").rsplit("_", 1)
        assert m.context == context and timm.is_model(m.backbone), path
        assert (m.pixel_mean, m.input_size) == (list(IMAGENET_MEAN), d.size), path
        assert (d.size, m.region) == ((448, 224) if family == "hiera_b" else (512, 256)), path
        assert t.lr == (1e-5 if family in ("swin_b", "swin_l") else 1e-4), path
        assert (t.optimizer, t.weight_decay, t.clip, t.warmup, t.min_lr_ratio, t.epochs) == (
            "adamw",
            1e-4,
            5.0,
            0,
            0.01,
            100,
        ), path
        assert (m.num_classes, m.label_smoothing, m.dim) == (284, 0.3, 768), path
        assert m.backbone_kwargs["drop_path_rate"] == 0.2, path
        assert (d.kind, d.params, d.augment) == (
            "inaturalist",
            {"supercategory": "Reptilia"},
            False,
        )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RELEASE_PARAMS))
def test_preset_models_have_the_release_parameter_counts(name):
    model = build_model(load_config(f"inat_reptilia_{name}").model, load_pretrained=False)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(millions - RELEASE_PARAMS[name]) < 1.0


def test_tiny_preset_trains_on_the_fixture(fx, tmp_path):
    config = load_config("inat_tiny", [f"data.root={fx.root}", f"train.out={tmp_path}"])
    result = Trainer(config).fit()
    losses = [
        json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").open() if '"loss"' in line
    ]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.05
    assert result["metrics"]["top1"] == 1.0  # 3 reptiles told apart, chance 1/3
    assert config.model.classes == ["Crotalus atrox", "Chelonia mydas", "Anolis carolinensis"]
