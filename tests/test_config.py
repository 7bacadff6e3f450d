"""Configs: YAML presets, typed overrides, errors that list what is allowed, round trips."""

import pytest
import yaml

from xtimage.config import CONFIG_DIR, RunConfig, load_config, save_config
from xtimage.errors import ConfigError, InputError


def test_overrides_are_typed_and_reach_inside_mappings():
    config = load_config(
        None,
        [
            "train.lr=3e-4",  # YAML 1.1 would read this as text
            "train.steps=10",
            "train.clip=null",
            "model.context_kwargs.depth=2",
            "model.context_kwargs.heads=4",
            "model.classes=[sea, ship]",
            "model.backbone=123",  # a text field keeps the text
            "data.params.textures=4",
        ],
    )
    assert config.train.lr == 3e-4 and isinstance(config.train.lr, float)
    assert config.train.steps == 10 and config.train.clip is None
    assert config.model.context_kwargs == {"depth": 2, "heads": 4}
    assert config.model.classes == ["sea", "ship"]
    assert config.model.backbone == "123"
    assert config.data.params == {"textures": 4}
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0  # int widens to float


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "train.lrr=1",
            "unknown config key 'train.lrr' (did you mean 'train.lr'?); allowed under train: "
            "accumulate",
        ),
        (
            "modle.region=64",
            "unknown config key 'modle' (did you mean 'model'?); allowed under the top level: data",
        ),
        ("train.lr=fast", "train.lr: expected float, got 'fast'"),
        ("train.epochs=1.5", "train.epochs: expected int, got 1.5"),
        ("train.steps=true", "train.steps: expected int | None, got True"),
        ("train.mode=quick", "train.mode='quick' is not allowed; use one of auto, direct"),
        ("model=3", "'model' is a section"),
        ("train.lr", "is not key=value"),
        ("model.head=boxes", "model.head='boxes' is not allowed"),
        ("model.classes=[a, b, c]", "model.classes has 3 names for model.num_classes=2"),
        ("model.partners=[mirror]", "model.partners: unknown relation ['mirror']; choose from"),
    ],
)
def test_bad_overrides_name_the_key_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_yaml_file_then_overrides_and_unknown_yaml_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {region: 64, dim: 32}\ntrain: {lr: 0.01, batch_size: 2}\n")
    config = load_config(path, ["train.batch_size=8"])
    assert (config.model.region, config.model.dim) == (64, 32)
    assert config.train.lr == 0.01 and config.train.batch_size == 8
    assert config.train.epochs == RunConfig().train.epochs  # untouched default
    path.write_text("train: {learning_rate: 0.01}\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.learning_rate'"):
        load_config(path)
    path.write_text("optim: {lr: 0.01}\n")
    with pytest.raises(ConfigError, match="allowed under the top level: data, model, train"):
        load_config(path)
    with pytest.raises(InputError, match="presets: .*synthetic_seg"):
        load_config("no_such_preset")


def test_saved_config_reproduces_the_run(tmp_path):
    config = load_config("synthetic_seg", ["model.context_kwargs.depth=1", "train.lr=2e-4"])
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["lr"] == 2e-4


PRESETS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_names_things_that_exist(preset):
    import timm

    from xtimage.encoders.context import CONTEXT_ENCODERS

    config = load_config(preset)  # keys and types checked
    assert timm.is_model(config.model.backbone), config.model.backbone
    assert config.model.context in CONTEXT_ENCODERS
    assert set(config.model.context_kwargs) <= set(CONTEXT_ENCODERS.arguments(config.model.context))


@pytest.mark.parametrize("preset", [p for p in PRESETS if p.startswith(("synthetic", "folder"))])
def test_small_presets_build_the_model_they_describe(preset):
    from xtimage.build import build_model, unwrap
    from xtimage.heads import ClassificationHead, DenseHead

    # the template's convnext_tiny takes seconds to build; its keys are what is tested
    small = ["model.backbone=convnext_atto"] if preset == "folder_template" else []
    config = load_config(preset, small)
    model = unwrap(build_model(config.model, load_pretrained=False))
    assert model.region == config.model.region and model.dim == config.model.dim
    head = {"classification": ClassificationHead, "segmentation": DenseHead}
    assert isinstance(model.head, head.get(config.model.head, DenseHead))


def test_partners_wrap_the_context_encoder_of_xt_but_not_of_the_crop_baseline():
    from xtimage.build import build_model, unwrap
    from xtimage.encoders.context.partners import SymmetricPartners

    partners = ["model.partners=[hflip, rot180]", "model.context_kwargs={depth: 1, heads: 2}"]
    model = unwrap(build_model(load_config(None, partners).model, load_pretrained=False))
    assert isinstance(model.context, SymmetricPartners)
    assert model.context.relations == ["hflip", "rot180"] and not model.context.streamable
    crop = load_config(None, [*partners, "model.baseline=crop"]).model
    assert not isinstance(unwrap(build_model(crop, load_pretrained=False)).context,
                          SymmetricPartners)  # fmt: skip
    with pytest.raises(ConfigError, match="class_pool=cls"):
        load_config(None, [*partners, "model.head=classification", "model.class_pool=cls"])
    with pytest.raises(ConfigError, match="set data.window=null"):
        load_config(None, [*partners, "data.window=512"])


def test_changing_the_data_kind_drops_the_preset_s_data_params():
    """The demo preset's synthetic options (textures...) must not reach a folder data set."""
    preset = load_config("demo")
    assert preset.data.kind == "synthetic" and preset.data.params
    folder = load_config("demo", ["data.kind=folder", "data.root=fields"])
    assert folder.data.params == {}
    kept = load_config("demo", ["data.kind=folder", "data.params={skip_bad: true}"])
    assert kept.data.params == {"skip_bad": True}
    same = load_config("demo", ["data.size=128"])
    assert same.data.params == preset.data.params
