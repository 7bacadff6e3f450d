"""Run configuration: typed sections, YAML presets and ``key.sub=value`` overrides.

One small dataclass per concern (the nanoGPT ``GPTConfig`` habit, one level up): `ModelConfig`
rebuilds the architecture and travels inside every checkpoint, `DataConfig` says where the
samples come from, `TrainConfig` how the loop runs. `RunConfig` holds the three. Models
never see these objects; `xtimage.build` turns them into constructor calls.

A YAML file gives any subset of the keys; everything else keeps its default. Command-line
overrides use dotted keys, ``train.lr=3e-4`` or ``model.context_kwargs.depth=2``, and values
are read as YAML scalars. An unknown key or a value of the wrong type is a `ConfigError`
that names the key and lists the allowed ones. The resolved config (`to_dict`) is saved in
every run folder and reproduces the run.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xtimage.errors import ConfigError, InputError, did_you_mean

HEADS = ("classification", "segmentation", "detection", "xview3")
BASELINES = ("xt", "crop", "downsample")
TTA = ("none", "flips", "d4")  # model.tta: the sets of test-time views (xtimage.engine.views)
MODES = ("auto", "direct", "exact", "streaming", "frozen")
AMP = ("auto", "none", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")

# Where `xt train NAME` finds presets: package data, so that a wheel install has them too.
CONFIG_DIR = Path(str(importlib.resources.files("xtimage") / "presets"))


@dataclass
class ModelConfig:
    """The architecture; enough to rebuild the model without its weights.

    Attributes:
        backbone: timm model name of the region encoder.
        backbone_kwargs: extra ``timm.create_model`` arguments (``depths``, ``dims``...).
        pretrained: local weights file of the backbone, or None.
        frozen: keep the backbone fixed (eval mode, no gradients); train context + head.
        frozen_norm: keep the backbone's batch norms in eval mode while training (running
            statistics as loaded, scale and shift trained): for fine-tuning a BatchNorm
            backbone in exact or streaming mode, whose chunks of regions otherwise set
            the statistics (docs/training.md).
        in_chans: image channels.
        pixel_mean: per-channel mean the region encoder subtracts from [0, 1] pixels (the
            backbone's pretraining statistics, e.g. ImageNet's), or None.
        pixel_std: per-channel standard deviation it divides by, or None.
        input_size: resize each whole image to this square side before the model (photo
            classification, as the xT release's iNaturalist models); None: native size,
            streamed.
        region: region side in pixels.
        margin: context pixels each region reads around the core it owns.
        subregion: sub-region side when the backbone takes a smaller input, or None.
        pool: tokens per region side after pooling, or None (every cell a token).
        token_norm: LayerNorm the projected tokens (see `RegionTokenizer`).
        token_maps: how many of the region encoder's maps, deepest first, each token
            reads (1: the deepest only, as in xT; more: fine detail as local statistics).
        token_reduce: those statistics, "mean" or "max" of each shallower map over a
            token's cell (max keeps a small object's detail at full strength).
        context: context encoder name (``none``, ``xl``, ``hyper``, ``mamba``, ``windowed``).
        context_kwargs: its arguments besides ``dim`` (depth, heads, segment_len...).
        partners: relations of the token grid (``hflip``, ``vflip``, ``rot180``, ``hshift``,
            ``transpose``...) whose partner token each token also reads, beside the
            context encoder (`xtimage.encoders.context.partners`); for answers that
            compare mirrored places. Not streamable; empty: none.
        partner_proj: how a partner enters its token: "linear" (a learned D x D map)
            or "gate" (a fixed random rotation, then a learned gate per channel: an
            unused partner adds far less noise while training, docs/context_pays.md).
        dim: token width of the context encoder.
        head: task family: "classification", "segmentation", "detection" (a centre
            heatmap whose peaks are the points) or "xview3" (centre, vessel, fishing and
            length maps, `xtimage.heads.xview3`; reads the first ``in_chans`` of VV, VH
            and the ancillary bands).
        num_classes: classes (segmentation: including background 0).
        classes: class names, or None (indices).
        class_pool: classification pooling, "mean", "attention" or "cls" (a learned CLS
            token after the image's tokens; needs a non-streaming context encoder).
        class_mlp_ratio: the xT release's plain classifier (mean, then Linear, GELU,
            LayerNorm, Linear with this hidden ratio), or None (a linear classifier).
        label_smoothing: classification loss smoothing.
        decoder_channels: width of the dense decoder.
        decoder_norm: its normalisation, "layer", "batch" or "instance" (see `DenseHead`).
        decoder_depth: skip maps it uses, shallowest first (None: all).
        decoder_project_tokens: project tokens to the decoder width before it.
        decoder_fusion: how tokens meet the skip maps, "concat" or "film" (`DenseHead`).
        outputs: dense outputs as ``{name, channels, loss, weight}``; empty: the head
            family's default (``mask`` ce over ``num_classes``, or ``center`` bce).
        baseline: "xt", "crop" (context none) or "downsample" (the image shrunk to one
            region).
        release: the conventions of the authors' release, so that their checkpoints
            (converted by `xt convert`) compute what they computed: see `xtimage.model`
            and the ``release`` option of the hyper and mamba context encoders.
        release_chunk: with ``release`` and a CLS head, the release's in-context-patches
            path with windows of this many tokens (see `xtimage.model`), or None.
        tta: test-time views whose class probabilities (and maps) are averaged in
            validation, ``xt eval`` and ``xt predict``: ``none``, ``flips`` (mirrors and
            the half turn) or ``d4`` (also the quarter turns); classification and
            segmentation heads (`xtimage.engine.views`).
    """

    backbone: str = "convnext_atto"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    frozen: bool = False
    frozen_norm: bool = False
    in_chans: int = 3
    pixel_mean: list[float] | None = None
    pixel_std: list[float] | None = None
    input_size: int | None = None
    region: int = 128
    margin: int = 0
    subregion: int | None = None
    pool: int | None = None
    token_norm: bool = True
    token_maps: int = 1
    token_reduce: str = "mean"
    context: str = "xl"
    context_kwargs: dict[str, Any] = field(default_factory=dict)
    partners: list[str] = field(default_factory=list)
    partner_proj: str = "linear"
    dim: int = 128
    head: str = "segmentation"
    num_classes: int = 2
    classes: list[str] | None = None
    class_pool: str = "mean"
    class_mlp_ratio: int | None = None
    label_smoothing: float = 0.0
    decoder_channels: int = 32
    decoder_norm: str = "layer"
    decoder_depth: int | None = None
    decoder_project_tokens: bool = True
    decoder_fusion: str = "concat"
    outputs: list[dict[str, Any]] = field(default_factory=list)
    baseline: str = "xt"
    release: bool = False
    release_chunk: int | None = None
    tta: str = "none"

    def check(self) -> None:
        _choice("model.head", self.head, HEADS)
        _choice("model.baseline", self.baseline, BASELINES)
        _choice("model.tta", self.tta, TTA)
        if self.tta != "none" and self.head not in ("classification", "segmentation"):
            raise ConfigError(
                f"model.tta={self.tta} averages class probabilities and maps, which turn "
                f"with the image; model.head={self.head} does not: use model.tta=none"
            )
        _choice("model.class_pool", self.class_pool, ("mean", "attention", "cls"))
        _choice("model.partner_proj", self.partner_proj, ("linear", "gate"))
        if self.partners:
            from xtimage.encoders.context.partners import check_relations

            check_relations(self.partners)
            if self.release or (self.head == "classification" and self.class_pool == "cls"):
                raise ConfigError(
                    "model.partners works on the image's tokens alone: not with "
                    "model.class_pool=cls or model.release; use class_pool mean or attention"
                )
        _positive("model.num_classes", self.num_classes)
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise ConfigError(
                f"model.classes has {len(self.classes)} names for model.num_classes="
                f"{self.num_classes}; give one name per class"
            )
        if (self.pixel_mean is None) != (self.pixel_std is None):
            raise ConfigError("give model.pixel_mean and model.pixel_std together, or neither")
        for key in ("pixel_mean", "pixel_std"):
            values = getattr(self, key)
            if values is not None and len(values) != self.in_chans:
                raise ConfigError(
                    f"model.{key} has {len(values)} values for model.in_chans={self.in_chans}; "
                    f"give one per channel"
                )
        if self.pixel_std is not None and min(self.pixel_std) <= 0:
            raise ConfigError(f"model.pixel_std must be positive, got {self.pixel_std}")
        if self.input_size is not None:
            _positive("model.input_size", self.input_size)
        if self.baseline == "downsample" and self.margin:
            raise ConfigError("model.baseline=downsample sees one region: set model.margin=0")


@dataclass
class DataConfig:
    """Where training and validation samples come from.

    Attributes:
        kind: data set builder (see `xtimage.data.registry.DATASETS`): "synthetic", "folder", ...
        root: the training folder (folder data sets).
        val_root: the validation folder; None: hold out ``val_fraction`` of ``root``.
        val_fraction: share of ``root`` held out when there is no ``val_root``.
        size: synthetic image side in pixels.
        window: train on random windows of this side (folder data); None: whole images.
        train_samples: synthetic images (or random windows) per epoch.
        val_samples: synthetic validation images.
        augment: flips, 90-degree turns and photometric jitter on training samples.
        turns: include the flips and 90-degree turns (where the data set's labels survive
            them); false keeps the jitter alone: for images whose orientation matters, and
            for textures at the pixel scale, which a stride-2 stem can learn per view and
            leave blind in some (docs/context_pays.md, session 25).
        jitter: strength of the photometric jitter.
        point_radius: detection: radius in pixels of each point's target disk, and the
            suppression distance between predicted peaks.
        seed: the data's seed (synthetic scenes, held-out split, windows).
        params: further keyword arguments of the data set (e.g. synthetic ``textures``).
    """

    kind: str = "synthetic"
    root: str | None = None
    val_root: str | None = None
    val_fraction: float = 0.2
    size: int = 256
    window: int | None = None
    train_samples: int = 64
    val_samples: int = 16
    augment: bool = True
    turns: bool = True
    jitter: float = 0.1
    point_radius: int = 4
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        _positive("data.size", self.size)
        _positive("data.train_samples", self.train_samples)
        _positive("data.point_radius", self.point_radius)
        if self.val_samples < 0:
            raise ConfigError(f"data.val_samples must be >= 0, got {self.val_samples}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class TrainConfig:
    """How the loop runs.

    Attributes:
        epochs: passes over the training set (ignored when ``steps`` is set).
        steps: optimizer steps in all, or None (``epochs`` decides).
        batch_size: images per micro-batch over all processes (each of W processes
            takes ``batch_size / W``; a checkpoint resumes on any W that divides it).
        accumulate: micro-batches per optimizer step.
        optimizer: "adamw" or "sgd".
        lr: peak learning rate.
        lr_scale: learning-rate multipliers by parameter-name prefix (a module path), e.g.
            ``{context.proj: 0.1}``: those parameters train at a tenth of the rate (the
            longest matching prefix wins; a prefix that names nothing is refused).
        join_at: optimizer steps before which the parameters under each name prefix stay
            as they are, e.g. ``{context.proj: 1200}``: until then they get no update, no
            optimizer state and no share of the clipped gradient norm (zero-initialised
            partner projections then leave the run exactly as without them), and from
            that step on they train at their ``lr_scale``.
        weight_decay: decoupled weight decay (not on norms and biases).
        momentum: SGD momentum.
        warmup: optimizer steps of linear warm-up before the cosine decay.
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        clip: clip the global gradient norm to this, or None.
        mode: "auto" (direct when a batch's regions fit in ``region_batch``, else
            exact; always direct for a batch-norm decoder or a Dice loss), "direct" (all
            regions at once, full autograd), "exact" (streamed, exact gradients),
            "streaming" (Transformer-XL style, detached memory),
            "frozen" (cached features of a frozen backbone; needs model.frozen).
        region_batch: regions encoded at once by the streaming engine.
        amp: "auto" (bf16 on a GPU that has it, else float32), "none", "bf16", "fp16".
        channels_last: the model's convolutions in NHWC order (faster convolutional
            backbones on CPU; results equal to rounding).
        lean_memory: return freed activations to the kernel at once (glibc's malloc):
            a lower peak of resident memory on CPU for more time (`xtimage.allocator`).
        seed: seed of the model's initialisation, data order and augmentation.
        eval_every: evaluate every N optimizer steps; 0: after each epoch.
        checkpoint_every: save the last checkpoint every N steps; 0: at each evaluation.
        log_every: write a metrics row every N steps.
        workers: data-loader worker processes.
        device: "auto" (CUDA when present), "cpu", "cuda", "cuda:1"...
        out: run folder: config, metrics.jsonl, checkpoints/.
        max_minutes: stop (after a checkpoint) when this much time has passed, or None.
        init: start a fresh run from these weights: a checkpoint, or a run folder (its
            best checkpoint). The optimizer, schedule and step count start anew
            (fine-tuning, e.g. on larger images than the weights were trained on); the
            model section may differ where the weights' shapes do not (image size,
            ``context_kwargs.segment_len``...). A resumed run ignores it.
        progress: show a progress bar.
        metric: evaluation metric that picks the best checkpoint; None: the task's own.
    """

    epochs: int = 1
    steps: int | None = None
    batch_size: int = 4
    accumulate: int = 1
    optimizer: str = "adamw"
    lr: float = 1e-3
    lr_scale: dict[str, float] = field(default_factory=dict)
    join_at: dict[str, int] = field(default_factory=dict)
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup: int = 0
    min_lr_ratio: float = 0.0
    clip: float | None = 5.0
    mode: str = "auto"
    region_batch: int = 16
    amp: str = "auto"
    channels_last: bool = False
    lean_memory: bool = False
    seed: int = 0
    eval_every: int = 0
    checkpoint_every: int = 0
    log_every: int = 10
    workers: int = 0
    device: str = "auto"
    out: str = "runs/xt"
    max_minutes: float | None = None
    init: str | None = None
    progress: bool = True
    metric: str | None = None

    def check(self) -> None:
        for name in ("epochs", "batch_size", "accumulate", "region_batch", "log_every"):
            _positive(f"train.{name}", getattr(self, name))
        if self.steps is not None:
            _positive("train.steps", self.steps)
        _choice("train.mode", self.mode, MODES)
        _choice("train.amp", self.amp, AMP)
        _choice("train.optimizer", self.optimizer, OPTIMIZERS)
        for name in ("warmup", "eval_every", "checkpoint_every", "workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0 or (self.clip is not None and self.clip <= 0):
            raise ConfigError(f"train.lr ({self.lr}) and train.clip ({self.clip}) must be > 0")
        for prefix, scale in self.lr_scale.items():
            if isinstance(scale, bool) or not isinstance(scale, int | float) or scale <= 0:
                raise ConfigError(f"train.lr_scale.{prefix} must be a number > 0, got {scale!r}")
        for prefix, step in self.join_at.items():
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise ConfigError(f"train.join_at.{prefix} must be a step >= 0, got {step!r}")


@dataclass
class RunConfig:
    """A whole run: model, data and training loop."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> RunConfig:
        """Check every section's values; returns self."""
        self.model.check()
        self.data.check()
        self.train.check()
        if self.model.partners and self.data.window is not None:
            raise ConfigError(
                "model.partners mirrors each image about its centre, but data.window trains "
                "on random windows whose mirror is another place: set data.window=null"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain values (YAML/JSON ready)."""
        return dataclasses.asdict(self)


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{key}={value!r} is not allowed{did_you_mean(value, allowed)}; use one of "
            f"{', '.join(allowed)}"
        )


def _positive(key: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be positive, got {value}")


# ---------------------------------------------------------------------------- typed merge


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the type ``hint`` (int -> float widening allowed)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(
            f"{key}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__})"
        )
    if hint is Any:
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0] if args else Any) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {
            str(k): _coerce(f"{key}.{k}", v, args[1] if args else Any) for k, v in value.items()
        }
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number; give a number like 3e-4")
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(
            f"{key}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__})"
        )
    return value


def _merge(obj: Any, values: dict[str, Any], prefix: str) -> None:
    """Set ``values`` (a nested mapping) on the dataclass ``obj``, checking keys and types."""
    hints = typing.get_type_hints(type(obj))
    for key, value in values.items():
        path = f"{prefix}{key}"
        current = getattr(obj, _field(obj, key, path))
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config section '{path}' must be a mapping, got {value!r}")
            _merge(current, value, f"{path}.")
        else:
            setattr(obj, key, _coerce(path, value, hints[key]))


def _field(obj: Any, key: str, path: str) -> str:
    """``key`` if ``obj`` has that field, else the error that lists the allowed keys."""
    names = [f.name for f in dataclasses.fields(obj)]
    if key not in names:
        where = path.rsplit(".", 1)[0] if "." in path else "the top level"
        parent = path[: len(path) - len(key)]  # "train." for "train.lrr"
        hint = did_you_mean(path, [parent + n for n in names])
        raise ConfigError(
            f"unknown config key '{path}'{hint}; allowed under {where}: "
            f"{', '.join(sorted(names))}"
        )
    return key


def _parse_value(raw: str, hint: Any) -> Any:
    """An override's text as a value: YAML, except that text fields keep the text."""
    if hint in (str, str | None):
        return None if hint is not str and raw.strip() in ("null", "~", "None") else raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(raw)  # YAML 1.1 reads "3e-4" (no dot) as text
        except ValueError:
            return value
    return value


def set_override(config: RunConfig, text: str) -> None:
    """Apply one ``key.sub=value`` override; a key inside a dict field adds or replaces it.

    Example: ``train.lr=3e-4``, ``model.context_kwargs.depth=2``, ``model.classes=[a, b]``.
    """
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not key=value, e.g. train.lr=3e-4")
    key, raw = (s.strip() for s in text.split("=", 1))
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override key '{key}' has an empty part; write e.g. train.lr=1e-3")
    obj: Any = config
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        hint = typing.get_type_hints(type(obj))[_field(obj, part, path)]
        child = getattr(obj, part)
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(child):
                raise ConfigError(f"'{path}' is a section; set one of its keys, e.g. {path}.x=1")
            setattr(obj, part, _coerce(path, _parse_value(raw, hint), hint))
            return
        if isinstance(child, dict):  # the rest of the key goes inside the mapping
            values = copy.deepcopy(child)
            inner = values
            for sub in parts[i + 1 : -1]:
                inner = inner.setdefault(sub, {})
                if not isinstance(inner, dict):
                    raise ConfigError(f"'{key}': '{sub}' holds a value, not a mapping")
            inner[parts[-1]] = _parse_value(raw, Any)
            setattr(obj, part, _coerce(path, values, hint))
            return
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"'{path}' is a value ({child!r}), not a section")
        obj = child


def find_preset(name: str | Path) -> Path:
    """A config file by path, or a preset name from ``xtimage/presets/`` (``synthetic_seg``)."""
    path = Path(name)
    if path.is_file():
        return path
    preset = CONFIG_DIR / f"{name}.yaml"
    if preset.is_file():
        return preset
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    raise InputError(
        f"config '{name}' is neither a file nor a preset{did_you_mean(str(name), known)}; "
        f"presets: {', '.join(known) or '(none)'}"
    )


def load_config(
    source: str | Path | dict[str, Any] | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """The resolved config: defaults, then a YAML file (or mapping), then overrides.

    Args:
        source: a YAML file, a preset name, a mapping of sections, or None (defaults).
        overrides: ``key.sub=value`` strings applied last. One that changes ``data.kind``
            drops the source's ``data.params`` (they belong to its kind) unless
            ``data.params`` is overridden too.
    """
    config = RunConfig()
    if source is not None:
        if isinstance(source, dict):
            values = source
        else:
            path = find_preset(source)
            try:
                values = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from exc
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: expected sections model/data/train, got {values!r}")
        _merge(config, values, "")
    kind = config.data.kind
    for text in overrides or []:
        set_override(config, text)
    touched = {text.split("=", 1)[0].strip() for text in overrides or []}
    if config.data.kind != kind and not any(k.startswith("data.params") for k in touched):
        config.data.params = {}  # options of the source's data set kind, not of this one
    return config.check()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one line: the problem and where it is."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    return where + problem + (f" ({context})" if context else "")


def save_config(config: RunConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    from xtimage.io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as temp:
        temp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """A `RunConfig` from `RunConfig.to_dict` output (e.g. read from a checkpoint)."""
    config = RunConfig()
    _merge(config, values, "")
    return config.check()
