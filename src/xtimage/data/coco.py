"""COCO detection data: an instances JSON and its image folder.

The format (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014; the
layout of ``annotations/instances_val2017.json``)::

    images:      [{id, file_name, width, height, ...}]
    annotations: [{id, image_id, category_id, bbox: [x, y, width, height], area,
                   iscrowd, segmentation, ...}]
    categories:  [{id, name, supercategory}]

``bbox`` is in continuous pixels from the image's top-left corner; ``area`` is the
object's (segmentation) area, which COCO's scorer uses for its size ranges; ``iscrowd``
1 marks a region of many objects, ignored by the scorer. Category ids need not be
contiguous (COCO's run 1..90 with gaps): classes are indexed in the order of their ids,
and `CocoDetection.category_ids` maps an index back.

Everything is checked when the JSON is read; an error names the file, the entry
(``annotations[12] (id 907)``), the value and the fix. As in torchvision's detection
reference, boxes are clipped to their image and boxes with no width or height are
dropped, with one logged warning. ``data.kind: coco`` in a run config builds a training
and a validation set (`coco_datasets`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xtimage.config import DataConfig, ModelConfig
from xtimage.data.preprocess import to_unit
from xtimage.data.registry import DATASETS, Datasets
from xtimage.data.sampling import WindowDataset
from xtimage.errors import ConfigError, InputError
from xtimage.io import open_reader, read_padded
from xtimage.window import Window

log = logging.getLogger(__name__)


@dataclass
class _Image:
    """One image of the JSON and its objects, boxes as ``(x1, y1, x2, y2)``."""

    id: int
    path: Path
    height: int
    width: int
    boxes: np.ndarray  # (n, 4) float32
    labels: np.ndarray  # (n,) int64, contiguous class indices
    crowd: np.ndarray  # (n,) bool


def read_json(path: Path, what: str = "annotation file") -> Any:
    """A JSON file's value, or an `InputError` that names the file."""
    if not path.is_file():
        raise InputError(f"{path}: no such {what}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc


def load_json(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object with list-valued ``keys``, or an `InputError` that names the file."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with {', '.join(keys)}")
    for key in keys:
        if not isinstance(data.get(key), list):
            raise InputError(f"{path}: the key '{key}' must hold a list (COCO format)")
    return data


def check_entry(path: Path, where: str, entry: Any, fields: dict[str, type | tuple]) -> None:
    """Raise when ``entry`` lacks one of ``fields`` or holds a value of the wrong type."""
    if not isinstance(entry, dict):
        raise InputError(f"{path}: {where} must be an object, got {entry!r}")
    for name, kind in fields.items():
        value = entry.get(name)
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            raise InputError(
                f"{path}: {where} has {name}={value!r}; the format needs a "
                f"{getattr(kind, '__name__', 'number')} there"
            )


def unique_ids(path: Path, key: str, entries: list[dict]) -> dict[int, int]:
    """id -> position in the list, checking that ids are unique."""
    index: dict[int, int] = {}
    for i, entry in enumerate(entries):
        if entry["id"] in index:
            raise InputError(
                f"{path}: {key}[{i}] repeats id {entry['id']} of {key}[{index[entry['id']]}]"
            )
        index[entry["id"]] = i
    return index


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes from a COCO detection JSON.

    ``dataset[i]`` is image i whole; `read` serves a window of it (large scenes, with
    `RandomWindowSampler`).

    Args:
        annotation_file: the instances JSON.
        image_root: the folder ``file_name`` is relative to; default: the JSON's folder.
        crowd: keep crowd regions (flagged in ``iscrowd``); False leaves them out, as
            training targets should.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_root: str | Path | None = None,
        *,
        crowd: bool = True,
    ) -> None:
        path = Path(annotation_file)
        self.annotation_file = path
        self.image_root = Path(image_root) if image_root is not None else path.parent
        data = load_json(path, ("images", "annotations", "categories"))
        for i, cat in enumerate(data["categories"]):
            check_entry(path, f"categories[{i}]", cat, {"id": int, "name": str})
        unique_ids(path, "categories", data["categories"])
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in categories]
        self.classes = [c["name"] for c in categories]
        index = {cid: i for i, cid in enumerate(self.category_ids)}

        for i, img in enumerate(data["images"]):
            check_entry(
                path,
                f"images[{i}]",
                img,
                {"id": int, "file_name": str, "width": int, "height": int},
            )
            if img["width"] <= 0 or img["height"] <= 0:
                raise InputError(
                    f"{path}: images[{i}] (id {img['id']}) has size {img['width']} x "
                    f"{img['height']}; width and height must be positive"
                )
        images = unique_ids(path, "images", data["images"])
        objects: list[list[tuple]] = [[] for _ in data["images"]]
        dropped = []
        for i, ann in enumerate(data["annotations"]):
            where = f"annotations[{i}]"
            check_entry(
                path,
                where,
                ann,
                {
                    "id": int,
                    "image_id": int,
                    "category_id": int,
                    "bbox": list,
                    "area": (int, float),
                    "iscrowd": int,
                },
            )
            where += f" (id {ann['id']})"
            if ann["image_id"] not in images:
                raise InputError(f"{path}: {where}: image_id {ann['image_id']} is not in images")
            if ann["category_id"] not in index:
                raise InputError(
                    f"{path}: {where}: category_id {ann['category_id']} is not in categories "
                    f"{self.category_ids}"
                )
            bbox = ann["bbox"]
            if len(bbox) != 4 or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in bbox
            ):
                raise InputError(
                    f"{path}: {where}: bbox {bbox} must be 4 finite numbers [x, y, width, height]"
                )
            if ann["iscrowd"] not in (0, 1):
                raise InputError(f"{path}: {where}: iscrowd must be 0 or 1, got {ann['iscrowd']}")
            img = data["images"][images[ann["image_id"]]]
            x, y, w, h = bbox
            x1, y1 = min(max(x, 0), img["width"]), min(max(y, 0), img["height"])
            x2, y2 = min(max(x + w, 0), img["width"]), min(max(y + h, 0), img["height"])
            if x2 <= x1 or y2 <= y1:
                dropped.append(f"{where}: bbox {bbox} in image {img['id']}")
                continue
            if ann["iscrowd"] and not crowd:
                continue
            objects[images[ann["image_id"]]].append(
                ((x1, y1, x2, y2), index[ann["category_id"]], bool(ann["iscrowd"]))
            )
        if dropped:
            log.warning(
                "%s: dropped %d box(es) with no area inside their image; first: %s",
                path,
                len(dropped),
                dropped[0],
            )
        self.records = [
            _Image(
                img["id"],
                self.image_root / img["file_name"],
                img["height"],
                img["width"],
                np.array([o[0] for o in objs], dtype=np.float32).reshape(-1, 4),
                np.array([o[1] for o in objs], dtype=np.int64),
                np.array([o[2] for o in objs], dtype=bool),
            )
            for img, objs in zip(data["images"], objects, strict=True)
        ]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every image, for `RandomWindowSampler`."""
        return [(r.height, r.width) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        return self.read(index, Window(0, 0, record.height, record.width))

    def read(self, index: int, window: Window) -> dict[str, torch.Tensor]:
        """Image ``index`` inside ``window`` (zero past the border) and its objects.

        Returns:
            ``image`` (C, h, w) float32 (integer pixels scaled to [0, 1]); ``boxes`` (n, 4)
            ``(x1, y1, x2, y2)`` float32, ``labels`` (n,) int64 and ``iscrowd`` (n,) bool
            of the objects whose centre lies in the window, in window coordinates;
            ``image_id`` () int64, the COCO id.
        """
        record = self.records[index]
        reader = open_reader(record.path)
        try:
            if (reader.height, reader.width) != (record.height, record.width):
                raise InputError(
                    f"{record.path}: the image is {reader.height} x {reader.width} px but "
                    f"{self.annotation_file} says {record.height} x {record.width} "
                    f"(image id {record.id}); fix the JSON's height and width"
                )
            pixels = read_padded(reader, window)
        finally:
            reader.close()
        boxes = record.boxes - np.array([window.left, window.top] * 2, dtype=np.float32)
        cx, cy = boxes[:, [0, 2]].mean(1), boxes[:, [1, 3]].mean(1)
        keep = (cx >= 0) & (cx < window.width) & (cy >= 0) & (cy < window.height)
        return {
            "image": torch.from_numpy(to_unit(pixels)),
            "boxes": torch.from_numpy(boxes[keep]),
            "labels": torch.from_numpy(record.labels[keep]),
            "iscrowd": torch.from_numpy(record.crowd[keep]),
            "image_id": torch.tensor(record.id),
        }


@DATASETS.register("coco")
def coco_datasets(model: ModelConfig, data: DataConfig) -> Datasets:
    """``data.kind: coco``: ``data.root`` is the training instances JSON and
    ``data.val_root`` the validation one (None: no validation set); ``data.params`` may
    give ``image_root`` and ``val_image_root`` (default: each JSON's folder).
    ``data.window`` trains on random windows of that side (large scenes). Crowd regions
    are left out of the training targets and kept, flagged, for validation."""
    if data.root is None:
        raise ConfigError("data.kind=coco needs data.root=<training instances JSON>")
    unknown = sorted(set(data.params) - {"image_root", "val_image_root"})
    if unknown:
        raise ConfigError(
            f"data.params {unknown} are not COCO options; use image_root, val_image_root"
        )
    train = CocoDetection(data.root, data.params.get("image_root"), crowd=False)
    val: Any = []
    if data.val_root is not None:
        val = CocoDetection(data.val_root, data.params.get("val_image_root"))
        if val.category_ids != train.category_ids:
            raise InputError(
                f"{data.val_root}: categories {val.category_ids} differ from the training "
                f"set's {train.category_ids} ({data.root})"
            )
    if train.num_classes != model.num_classes:
        raise ConfigError(
            f"{data.root} has {train.num_classes} categories but model.num_classes="
            f"{model.num_classes}; set model.num_classes={train.num_classes}"
        )
    if data.window is not None:
        windows = WindowDataset(train, data.window, data.train_samples, data.seed)
        return Datasets(windows, val, train.classes)
    return Datasets(train, val, train.classes)
