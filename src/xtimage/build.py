"""The one builder: a `RunConfig` turned into a model and its data sets.

Every constant of a run lives in the config; this module is the only place that turns it
into constructor calls (SAM's ``_build_sam`` habit), so `xt train`, `xt predict` and a
checkpoint all rebuild the same model. The baselines of Gupta et al. (ICML 2024) come out
of the same builder: ``crop`` is xT with context ``none``, ``downsample`` the image shrunk
to one region (`xtimage.baselines.Downsampled`).

Data sets are built by name from `DATASETS`; the task issues register theirs (xView3,
COCO, iNaturalist) the same way as ``synthetic`` and ``folder`` below. A builder returns
the training and validation sets; each sample is a dict with ``image`` (C, H, W) float and
the task's target (``label``, ``mask``, or ``boxes`` with ``labels``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from xtimage.config import DataConfig, ModelConfig, RunConfig
from xtimage.errors import ConfigError
from xtimage.model import XT
from xtimage.registry import Registry


def dense_outputs(config: ModelConfig) -> list:
    """The dense head's outputs: the config's, or the head family's default."""
    from xtimage.heads import DenseOutput

    if config.head == "xview3":
        from xtimage.heads.xview3 import XVIEW3_OUTPUTS

        return list(XVIEW3_OUTPUTS)
    if config.outputs:
        out = []
        for i, spec in enumerate(config.outputs):
            try:
                out.append(DenseOutput(**spec))
            except TypeError as exc:
                raise ConfigError(
                    f"model.outputs[{i}] = {spec!r}: {exc}; give name, channels, loss, weight"
                ) from None
        return out
    return [DenseOutput("mask", config.num_classes, "ce")]


def build_head(config: ModelConfig, skips: list, dim: int) -> nn.Module:
    """The task head over ``dim``-wide tokens and the encoder's skip maps."""
    from xtimage.heads import ClassificationHead, DenseHead

    if config.head == "classification":
        return ClassificationHead(
            dim, config.num_classes, pool=config.class_pool, label_smoothing=config.label_smoothing
        )
    if config.head == "detection":
        from xtimage.heads.detection import BoxHead

        return BoxHead(
            skips,
            dim,
            config.num_classes,
            channels=config.decoder_channels,
            norm=config.decoder_norm,
        )
    if config.head == "xview3":
        from xtimage.heads.xview3 import XView3Head

        return XView3Head(skips, dim, channels=config.decoder_channels, norm=config.decoder_norm)
    return DenseHead(
        skips,
        dim,
        dense_outputs(config),
        channels=config.decoder_channels,
        norm=config.decoder_norm,
        depth=config.decoder_depth,
        project_tokens=config.decoder_project_tokens,
    )


def build_model(config: ModelConfig, *, load_pretrained: bool = True) -> nn.Module:
    """The model a `ModelConfig` describes: an `XT`, or `Downsampled` around one.

    Args:
        config: the architecture.
        load_pretrained: read ``config.pretrained`` (off when a checkpoint's weights
            follow, so that predicting never needs the original backbone file).
    """
    from xtimage.baselines import Downsampled
    from xtimage.encoders.context import create_context_encoder
    from xtimage.encoders.region import RegionEncoder

    config.check()
    encoder = RegionEncoder(
        config.backbone,
        region=config.region,
        in_chans=config.in_chans,
        subregion=config.subregion,
        pretrained=config.pretrained if load_pretrained else None,
        frozen=config.frozen,
        **config.backbone_kwargs,
    )
    if config.baseline == "crop":
        context = create_context_encoder("none", dim=config.dim)
    else:
        context = create_context_encoder(config.context, dim=config.dim, **config.context_kwargs)
    head = build_head(config, encoder.feature_info[:-1], config.dim)
    model = XT(
        encoder,
        context,
        head,
        region=config.region,
        margin=config.margin,
        pool=config.pool,
        token_norm=config.token_norm,
    )
    return Downsampled(model) if config.baseline == "downsample" else model


def unwrap(model: nn.Module) -> XT:
    """The `XT` inside a model (a baseline wrapper or DistributedDataParallel)."""
    while not isinstance(model, XT):
        model = model.model if hasattr(model, "model") else model.module
    return model


# ---------------------------------------------------------------------------- data


@dataclass
class Datasets:
    """A run's samples: ``train`` (map-style, optionally with ``plan(epoch)`` giving the
    keys of an epoch in order), ``val`` (map-style, whole images), and class names."""

    train: Any
    val: Any
    classes: list[str] | None = None


DATASETS: Registry[Datasets] = Registry("data set kind")


# Kinds whose builders register themselves in their own module, imported when asked for.
DATA_MODULES = {
    "inaturalist": "xtimage.data.inaturalist",
    "coco": "xtimage.data.coco",
}


def build_datasets(config: RunConfig) -> Datasets:
    """The training and validation sets of ``config.data`` (builder by ``data.kind``)."""
    kind = config.data.kind
    if kind not in DATASETS and kind in DATA_MODULES:
        importlib.import_module(DATA_MODULES[kind])
    if kind not in DATASETS:
        raise ConfigError(f"unknown data.kind '{kind}'; known: {', '.join(DATASETS.names())}")
    return DATASETS.get(kind)(config.model, config.data)


@DATASETS.register("synthetic")
def synthetic(model: ModelConfig, data: DataConfig) -> Datasets:
    """The built-in texture-key task of ``model.head``'s family (`xtimage.data.synthetic`)."""
    from xtimage.data.synthetic import SyntheticTask

    common = dict(
        kind=model.head, size=data.size, region=model.region, channels=model.in_chans, **data.params
    )
    try:
        train = SyntheticTask(seed=data.seed, length=data.train_samples, **common)
        n_val = data.val_samples
        val = SyntheticTask(seed=data.seed + 1, length=n_val, **common) if n_val else []
    except TypeError as exc:
        raise ConfigError(f"data.params {data.params}: {exc}") from None
    if model.num_classes != train.num_classes:
        raise ConfigError(
            f"the synthetic {model.head} task has {train.num_classes} classes but "
            f"model.num_classes={model.num_classes}; set model.num_classes={train.num_classes}"
        )
    if model.head == "detection":
        train, val = _Boxed(train), (_Boxed(val) if n_val else [])
    return Datasets(train, val)


class _Boxed(torch.utils.data.Dataset):
    """Synthetic detection samples with the class of every box (one class: 0)."""

    def __init__(self, task: Any) -> None:
        self.task = task

    def __len__(self) -> int:
        return len(self.task)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.task[index]
        sample["labels"] = torch.zeros(len(sample["boxes"]), dtype=torch.long)
        return sample


@DATASETS.register("folder")
def folder(model: ModelConfig, data: DataConfig) -> Datasets:
    """A user's folder (`xtimage.data.folder.FolderDataset`) with a held-out share or a
    separate validation folder; ``data.window`` trains on random windows."""
    from xtimage.data.folder import FolderDataset

    if data.root is None:
        raise ConfigError("data.kind=folder needs data.root=<folder> (see the folder_template preset)")
    kw = dict(task=model.head, classes=model.classes, **data.params)
    try:
        full = FolderDataset(data.root, **kw)
    except TypeError as exc:
        raise ConfigError(f"data.params {data.params}: {exc}") from None
    classes = full.classes
    if data.val_root is not None:
        train_idx = list(range(len(full)))
        val = FolderDataset(data.val_root, **{**kw, "classes": classes})
    else:
        order = np.random.default_rng([data.seed, 7]).permutation(len(full))
        n_val = round(len(full) * data.val_fraction) if len(full) > 1 else 0
        train_idx = sorted(order[n_val:].tolist())
        val = torch.utils.data.Subset(full, sorted(order[:n_val].tolist()))
    if classes is not None and len(classes) != model.num_classes:
        raise ConfigError(
            f"{data.root} has {len(classes)} classes ({', '.join(classes[:10])}) but "
            f"model.num_classes={model.num_classes}; set model.num_classes={len(classes)}"
        )
    if data.window is not None:
        train = Windows(full, train_idx, data.window, data.train_samples, data.seed)
    else:
        train = torch.utils.data.Subset(full, train_idx)
    return Datasets(train, val, classes)


class Windows(torch.utils.data.Dataset):
    """Random training windows of some images of a `FolderDataset`, planned per epoch.

    Keys are ``(image index, Window)`` pairs from `RandomWindowSampler`; a window past the
    border is read padded.
    """

    def __init__(self, dataset: Any, indices: list[int], window: int, n: int, seed: int) -> None:
        from xtimage.data.sampling import RandomWindowSampler

        self.dataset, self.indices = dataset, indices
        sizes = [dataset.image_sizes[i] for i in indices]
        self.sampler = RandomWindowSampler(sizes, window, n, seed=seed)

    def __len__(self) -> int:
        return len(self.sampler)

    def plan(self, epoch: int) -> list[tuple[int, Any]]:
        """The epoch's windows, in order: depends on (seed, epoch) only."""
        self.sampler.set_epoch(epoch)
        return [(self.indices[i], window) for i, window in self.sampler]

    def __getitem__(self, key: tuple[int, Any]) -> dict[str, torch.Tensor]:
        index, window = key
        return self.dataset.read(index, window)


@DATASETS.register("xview3")
def xview3(model: ModelConfig, data: DataConfig) -> Datasets:
    """xView3-SAR scene folders (`xtimage.data.xview3`): training crops of ``data.window``
    px (default 512) around detections, validation scenes whole.

    ``data.root`` and ``data.val_root`` hold scene folders (without ``val_root``,
    ``val_fraction`` of the root's scenes are held out); ``data.params``: ``labels`` (the
    labels CSV, required), ``val_labels`` (default: ``labels``), ``shoreline`` (folder of
    ``{scene_id}_shoreline.npy``, for ``loc_fscore_shore``), ``positive_fraction``.
    Targets: `xview3_targets` with ``data.point_radius``.
    """
    from xtimage.data.xview3 import XView3Crops, list_scenes, read_labels
    from xtimage.heads.xview3 import scene_bands

    if model.head != "xview3":
        raise ConfigError(f"data.kind=xview3 needs model.head=xview3, got {model.head!r}")
    params = dict(data.params)
    unknown = set(params) - {"labels", "val_labels", "shoreline", "positive_fraction"}
    if data.root is None or "labels" not in params or unknown:
        raise ConfigError(
            f"data.kind=xview3 needs data.root=<scene folders> and data.params.labels=<csv> "
            f"(optional: val_labels, shoreline, positive_fraction); unknown: {sorted(unknown)}"
        )
    labels = read_labels(params["labels"])
    scenes = [s for s in list_scenes(data.root) if s in set(labels["scene_id"].astype(str))]
    if data.val_root is not None:
        train_ids, val_root, val_ids = scenes, data.val_root, None
    else:
        order = np.random.default_rng([data.seed, 7]).permutation(len(scenes))
        n_val = round(len(scenes) * data.val_fraction) if len(scenes) > 1 else 0
        val_ids = sorted(scenes[i] for i in order[:n_val])
        train_ids, val_root = [s for s in scenes if s not in val_ids], data.root
    bands = scene_bands(model.in_chans)
    crops = XView3Crops(
        data.root,
        labels,
        scene_ids=train_ids or None,
        crop_size=data.window or 512,
        crops_per_scene=max(1, -(-data.train_samples // max(len(train_ids), 1))),
        positive_fraction=params.get("positive_fraction", 0.5),
        bands=bands,
        seed=data.seed,
    )
    val_labels = read_labels(params["val_labels"]) if "val_labels" in params else labels
    val = _XView3Scenes(val_root, val_labels, val_ids, bands, params.get("shoreline"))
    return Datasets(_XView3Crops(crops, data.point_radius), val)


class _XView3Crops(torch.utils.data.Dataset):
    """`XView3Crops` as training samples: ``image``, ``points`` (n, 2) as (x, y) pixel
    centres (moved by `Augment`), the detections' attributes and the target radius."""

    def __init__(self, crops: Any, radius: int) -> None:
        self.crops, self.radius = crops, radius

    def __len__(self) -> int:
        return len(self.crops)

    def plan(self, epoch: int) -> list[tuple[int, int]]:
        """The epoch's keys: the crops of epoch ``epoch`` (see `XView3Crops`)."""
        return [(epoch, i) for i in range(len(self.crops))]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        self.crops.set_epoch(epoch)
        item = self.crops[index]
        points = np.stack([item["cols"] + 0.5, item["rows"] + 0.5], axis=1)  # (n, 2)
        return {
            "image": torch.from_numpy(item["image"]),
            "points": torch.from_numpy(points.reshape(-1, 2)),
            **{k: torch.tensor(item[k]) for k in ("is_vessel", "is_fishing", "length_m")},
            "point_radius": self.radius,
        }


class _XView3Scenes(torch.utils.data.Dataset):
    """Whole validation scenes: items ``image`` (an `XView3Scene`, opened on access; the
    caller closes it) and ``scene_id``; ``labels`` and ``shore_root`` for the scorer."""

    def __init__(
        self, root: str, labels: Any, scene_ids: list[str] | None, bands: Any, shore: str | None
    ) -> None:
        from xtimage.data.xview3 import list_scenes

        present = set(labels["scene_id"].astype(str))
        ids = scene_ids if scene_ids is not None else list_scenes(root)
        self.root, self.bands, self.shore_root = root, bands, shore
        self.scene_ids = [s for s in ids if s in present]
        self.labels = labels[labels["scene_id"].astype(str).isin(self.scene_ids)]

    def __len__(self) -> int:
        return len(self.scene_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from pathlib import Path

        from xtimage.data.xview3 import XView3Scene

        scene_id = self.scene_ids[index]
        return {
            "image": XView3Scene(Path(self.root) / scene_id, bands=self.bands),
            "scene_id": scene_id,
        }


# ---------------------------------------------------------------------------- targets


def sample_targets(sample: dict[str, Any], model: ModelConfig) -> Any:
    """A sample's training target in the engine's form.

    Classification: the label (int64 scalar). Segmentation: ``{output name: target}``,
    each read from the sample key of the same name. Detection: `box_targets` of the
    sample's ``boxes`` and ``labels`` at the image size. xView3: `xview3_targets` of the
    sample's ``points`` (x, y) and attributes.
    """
    if model.head == "classification":
        return torch.as_tensor(_key(sample, "label", model), dtype=torch.long)
    if model.head == "xview3":
        from xtimage.heads.xview3 import xview3_targets

        _, height, width = sample["image"].shape
        x, y = torch.as_tensor(_key(sample, "points", model)).reshape(-1, 2).unbind(-1)
        attrs = [sample[k] for k in ("is_vessel", "is_fishing", "length_m")]
        radius = int(sample.get("point_radius", 4))
        return xview3_targets(y, x, *attrs, height, width, radius)
    if model.head == "detection":
        from xtimage.heads.detection import box_targets

        _, height, width = sample["image"].shape
        boxes = _key(sample, "boxes", model)
        labels = sample.get("labels", torch.zeros(len(boxes), dtype=torch.long))
        return box_targets(boxes, labels, model.num_classes, height, width)
    return {o.name: torch.as_tensor(_key(sample, o.name, model)) for o in dense_outputs(model)}


def _key(sample: dict[str, Any], key: str, model: ModelConfig) -> Any:
    if key not in sample:
        raise ConfigError(
            f"a {model.head} model needs '{key}' in every sample, but the data set gives "
            f"{', '.join(sorted(sample))}; match model.head / model.outputs to the data"
        )
    return sample[key]
