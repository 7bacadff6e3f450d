"""iNaturalist 2018 classification, whole or by supercategory (the xT paper's Reptilia).

Data set: Van Horn et al., "The iNaturalist Species Classification and Detection
Dataset", CVPR 2018. xT (Gupta et al., ICML 2024) trains and scores on the Reptilia
subset (284 species; 22,754 training and 852 validation images) at 512 px, with 256 px
regions.

On disk (the public release's layout; ``root`` is the folder given)::

    root/train2018.json  root/val2018.json       COCO-style, see below
    root/categories.json                         the categories, names in the clear
    root/train_val2018/<supercategory>/<category id>/<hash>.jpg

Each JSON holds ``images [{id, file_name, width, height, license, rights_holder}]``,
``annotations [{id, image_id, category_id}]`` (one per image) and all 8,142
``categories [{id, name, supercategory, kingdom, phylum, class, order, family,
genus}]`` (in both files); ``file_name`` is relative to ``root``. The competition
obfuscated the taxonomic names in those two files and later published the real ones as
``categories.json`` (a JSON list of the same category objects); like the xT release's
loader, we take the categories (names, supercategory, taxonomy) from ``categories.json``
when it is in ``root`` (or given as ``categories_file``), and from the annotation file
otherwise. Every category the annotation file lists must be in ``categories.json``.

Classes are the categories of the chosen supercategory, indexed in the order of their
ids; since both files list every category, train and val agree. `save_class_map`
writes the index -> category map so that a model's outputs stay readable (and a later
run can insist on the same classes with ``class_map=``).

`inat_transform` is the release's pixel pipeline (timm's ``create_transform``): random
resized crops, flips and RandAugment for training, a plain resize for evaluation.
``data.kind: inaturalist`` in a run config builds both splits (`inaturalist_datasets`);
the ``src/xtimage/presets/inat_*.yaml`` presets use it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xtimage.config import DataConfig, ModelConfig
from xtimage.data.coco import check_entry, load_json, read_json, unique_ids
from xtimage.data.preprocess import resize_image
from xtimage.data.registry import DATASETS, Datasets
from xtimage.errors import ConfigError, InputError
from xtimage.io import open_reader
from xtimage.io.atomic import atomic_path
from xtimage.window import Window

SPLITS = {"train": "train2018.json", "val": "val2018.json"}
CATEGORIES_FILE = "categories.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"  # the release's RandAugment, in timm's notation


class INaturalist(torch.utils.data.Dataset):
    """Images and species labels of iNaturalist 2018, optionally one supercategory.

    Args:
        root: the data set folder (JSONs and ``train_val2018/``).
        split: "train" or "val".
        supercategory: keep only this supercategory's categories and images (e.g.
            "Reptilia"); None: all.
        class_map: a file from `save_class_map` (or the xT release's map, see
            `read_class_map`); its classes and their order are used, and an image of the
            supercategory whose category it lacks is an error.
        transform: applied to each image, a uint8 (3, H, W) tensor (e.g.
            `inat_transform`); None: float32 in [0, 1].
        annotation_file: read this JSON instead of ``root/{split}2018.json``.
        categories_file: the categories JSON list; default ``root/categories.json`` when
            it exists, else the annotation file's own ``categories``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        supercategory: str | None = None,
        class_map: str | Path | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        annotation_file: str | Path | None = None,
        categories_file: str | Path | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"unknown iNaturalist split '{split}'; use {', '.join(SPLITS)}")
        self.root = Path(root)
        self.transform = transform
        path = Path(annotation_file) if annotation_file is not None else self.root / SPLITS[split]
        self.annotation_file = path
        data = load_json(path, ("images", "annotations", "categories"))
        source, categories = _read_categories(self.root, path, data["categories"], categories_file)
        self.supercategory, subset, self.categories = _choose_classes(
            source, categories, supercategory, class_map
        )
        index = {c["id"]: i for i, c in enumerate(self.categories)}
        labels = _image_labels(path, data)
        self.samples: list[tuple[Path, int]] = []  # (image file, class index)
        for img in data["images"]:
            category = labels.get(img["id"])
            if category is None or category not in subset:
                continue
            if category not in index:
                raise InputError(
                    f"{path}: image {img['id']} has category {category}, which the class map "
                    f"{class_map} lacks; rebuild the class map from this data"
                )
            self.samples.append((self.root / img["file_name"], index[category]))

    @property
    def classes(self) -> list[str]:
        """Class names by index."""
        return [c["name"] for c in self.categories]

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """``image`` (3, H, W), float32 in [0, 1] or the transform's output, and
        ``label`` () int64."""
        path, label = self.samples[index]
        reader = open_reader(path)
        try:
            pixels = reader.read_region(Window(0, 0, reader.height, reader.width))
        finally:
            reader.close()
        if pixels.shape[0] == 1:  # some iNaturalist JPEGs are greyscale
            pixels = np.repeat(pixels, 3, 0)
        image = torch.from_numpy(np.ascontiguousarray(pixels[:3]))  # (3, H, W) uint8
        image = self.transform(image) if self.transform is not None else image.float() / 255
        return {"image": image, "label": torch.tensor(label)}

    def save_class_map(self, path: str | Path) -> Path:
        """Write the classes as JSON: index, category id, name and taxonomy of each."""
        classes = [{"index": i, **c} for i, c in enumerate(self.categories)]
        with atomic_path(path) as temp:
            temp.write_text(
                json.dumps({"supercategory": self.supercategory, "classes": classes}, indent=1)
            )
        return Path(path)


def _read_categories(
    root: Path, path: Path, listed: list[Any], categories_file: str | Path | None
) -> tuple[Path, list[Any]]:
    """Where the categories come from and the list: ``categories.json`` (the release's
    names in the clear), else the annotation file's own list."""
    file = Path(categories_file) if categories_file is not None else root / CATEGORIES_FILE
    if categories_file is None and not file.is_file():
        if any(isinstance(c, dict) and "supercategory" not in c for c in listed):
            raise InputError(
                f"{path}: its categories carry no supercategory; the release ships them in "
                f"{CATEGORIES_FILE}: put that file in {root} (or pass categories_file=)"
            )
        return path, listed
    full = read_json(file, "categories file")
    if not isinstance(full, list):
        raise InputError(f"{file}: expected a JSON list of categories (the release's format)")
    for i, cat in enumerate(listed):
        check_entry(path, f"categories[{i}]", cat, {"id": int})
    by_id = {c.get("id"): c for c in full if isinstance(c, dict)}
    missing = [c["id"] for c in listed if c["id"] not in by_id]
    if missing:
        raise InputError(
            f"{file} lacks categories {missing[:5]} of {path}; use the categories.json of "
            f"the same release"
        )
    return file, [by_id[c["id"]] for c in listed]  # the annotation file's categories


def _choose_classes(
    path: Path,
    categories: list[dict[str, Any]],
    supercategory: str | None,
    class_map: str | Path | None,
) -> tuple[str | None, set[int], list[dict[str, Any]]]:
    """The supercategory, the ids of its categories, and the classes in index order
    (the class map's, else the supercategory's categories by id)."""
    for i, cat in enumerate(categories):
        check_entry(path, f"categories[{i}]", cat, {"id": int, "name": str, "supercategory": str})
    unique_ids(path, "categories", categories)
    mapped = None
    if class_map is not None:
        mapped_super, mapped = read_class_map(class_map)
        if supercategory is not None and supercategory != mapped_super:
            raise ConfigError(
                f"supercategory '{supercategory}' differs from the class map's "
                f"'{mapped_super}' ({class_map})"
            )
        supercategory = mapped_super
    known = sorted({c["supercategory"] for c in categories})
    if supercategory is not None and supercategory not in known:
        raise ConfigError(
            f"supercategory '{supercategory}' is not in {path}; known: {', '.join(known)}"
        )
    chosen = sorted(
        (c for c in categories if supercategory in (None, c["supercategory"])),
        key=lambda c: c["id"],
    )
    subset = {c["id"] for c in chosen}
    if mapped is not None and supercategory is None:  # the release's map: its classes
        subset = {c["id"] for c in mapped}
    if mapped is not None:
        by_id = {c["id"]: c for c in categories}
        missing = [c["id"] for c in mapped if c["id"] not in by_id]
        if missing:
            raise InputError(
                f"{class_map}: category ids {missing[:5]} are not in {path}; the class map "
                "belongs to another data set"
            )
        chosen = [by_id[c["id"]] for c in mapped]
    return supercategory, subset, chosen


def _image_labels(path: Path, data: dict[str, Any]) -> dict[int, int]:
    """Image id -> category id, checking images and annotations (one label an image)."""
    for i, img in enumerate(data["images"]):
        check_entry(path, f"images[{i}]", img, {"id": int, "file_name": str})
    images = unique_ids(path, "images", data["images"])
    labels: dict[int, int] = {}
    for i, ann in enumerate(data["annotations"]):
        check_entry(
            path, f"annotations[{i}]", ann, {"id": int, "image_id": int, "category_id": int}
        )
        where = f"annotations[{i}] (id {ann['id']})"
        if ann["image_id"] not in images:
            raise InputError(f"{path}: {where}: image_id {ann['image_id']} is not in images")
        previous = labels.setdefault(ann["image_id"], ann["category_id"])
        if previous != ann["category_id"]:
            raise InputError(
                f"{path}: {where}: image {ann['image_id']} is labelled both "
                f"{previous} and {ann['category_id']}; iNaturalist has one label per image"
            )
    return labels


def read_class_map(path: str | Path) -> tuple[str | None, list[dict[str, Any]]]:
    """The supercategory and the categories, in class-index order, of a class map.

    Two formats: ours (`INaturalist.save_class_map`), and the xT release's
    ``{"<category id>": index}`` (``meta/category_label_reptilia_map.json``, the order
    its checkpoints were trained with), which names no supercategory.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such class map")
    try:
        data = json.loads(path.read_text())
        if "classes" not in data:  # the release's id -> index map
            by_index = sorted((index, int(cid)) for cid, index in data.items())
            data = {"supercategory": None, "classes": [{"index": i, "id": c} for i, c in by_index]}
        classes = data["classes"]
        if [c["index"] for c in classes] != list(range(len(classes))):
            raise ValueError("indices are not 0, 1, 2, ...")
        return data["supercategory"], [
            {k: v for k, v in c.items() if k != "index"} for c in classes
        ]
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"{path}: not a class map (ours from save_class_map, or the xT release's "
            f"category id -> index map): {exc}"
        ) from exc


def posterize(image: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's RandAugment posterize, keeping 0 bits as black (what Pillow did before 11).

    At high magnitudes timm asks for 0 bits, which Pillow now refuses with an error.
    """
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits_to_keep)


class _OnPil:
    """Apply a PIL-based transform to a uint8 (3, H, W) tensor (picklable for workers)."""

    def __init__(self, pipeline: Callable) -> None:
        self.pipeline = pipeline

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.functional import to_pil_image

        return self.pipeline(to_pil_image(image))


def inat_transform(size: int, train: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The xT release's pixel pipeline, on uint8 (3, H, W) tensors.

    Training: timm's ``create_transform`` as the release calls it: a random resized crop
    to ``size`` (scale 0.08 to 1, bilinear), a horizontal flip and RandAugment
    ``rand-m9-mstd0.5-inc1``. Evaluation: the whole image resized to ``size`` x ``size``
    by `resize_image` (the release's; the aspect ratio is not kept), as the predictor
    does for a model with ``input_size``. Both end in float32 in [0, 1]: ImageNet's mean
    and standard deviation are the model's (``model.pixel_mean`` / ``pixel_std``).
    """
    from timm.data import create_transform

    if train:
        pipeline = create_transform(
            input_size=size,
            is_training=True,
            auto_augment=AUTO_AUGMENT,
            interpolation="bilinear",
            re_prob=0.0,
            mean=IMAGENET_MEAN,  # RandAugment fills with it
            std=IMAGENET_STD,
        )
        # The model normalises (model.pixel_mean / pixel_std): drop the last step.
        assert type(pipeline.transforms[-1]).__name__ == "Normalize", pipeline
        pipeline.transforms = pipeline.transforms[:-1]
        for step in pipeline.transforms:
            for op in getattr(step, "ops", []):  # RandAugment's operations
                if op.name.startswith("Posterize"):
                    op.aug_fn = posterize
        return _OnPil(pipeline)
    return _Resize(size)


class _Resize:
    """`resize_image` to ``size`` (picklable for workers)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return resize_image(image, self.size)


@DATASETS.register("inaturalist")
def inaturalist_datasets(model: ModelConfig, data: DataConfig) -> Datasets:
    """``data.kind: inaturalist``: the train and val splits under ``data.root`` at
    ``data.size`` px through `inat_transform`; ``data.params`` may give
    ``supercategory`` and ``class_map`` (see `INaturalist`)."""
    if data.root is None:
        raise ConfigError("data.kind=inaturalist needs data.root=<folder with train2018.json>")
    unknown = sorted(set(data.params) - {"supercategory", "class_map", "categories_file"})
    if unknown:
        raise ConfigError(
            f"data.params {unknown} are not iNaturalist options; use supercategory, "
            f"class_map, categories_file"
        )
    size = model.input_size or data.size
    train = INaturalist(data.root, "train", transform=inat_transform(size, True), **data.params)
    val = INaturalist(data.root, "val", transform=inat_transform(size, False), **data.params)
    if [c["id"] for c in val.categories] != [c["id"] for c in train.categories]:
        raise InputError(
            f"{data.root}: train2018.json and val2018.json list different categories; give "
            "both splits the same class map (data.params.class_map)"
        )
    if train.num_classes != model.num_classes:
        raise ConfigError(
            f"{data.root} has {train.num_classes} classes in supercategory "
            f"{train.supercategory or '(all)'} but model.num_classes={model.num_classes}; "
            f"set model.num_classes={train.num_classes}"
        )
    return Datasets(train, val, train.classes)
