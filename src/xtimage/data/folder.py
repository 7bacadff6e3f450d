"""Users' own data from a folder: masks, a labels CSV, or a points/boxes CSV.

Layouts (``root`` is the folder given):

- segmentation: ``images/<name>.<ext>`` and ``masks/<name>.<ext>`` with the same stem;
  a mask holds one class index per pixel and has the size of its image.
- classification: ``labels.csv`` with the header ``image,label``.
- detection: ``points.csv`` with ``image,x,y[,label]`` or ``boxes.csv`` with
  ``image,x0,y0,x1,y1[,label]`` (pixels, ``x`` across; a row with empty coordinates
  lists an image without objects).

Image paths in a CSV are relative to ``root`` or to ``root/images``. Any size and any
format `xtimage.io.open_reader` reads. Everything that can be checked without reading
pixels (missing files, sizes, rows, class names) is checked up front and reported with
the file and the row; mask values are checked when a mask is read. With ``skip_bad``
the bad samples are dropped with one logged warning instead.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xtimage.config import DataConfig, ModelConfig
from xtimage.data.preprocess import to_unit
from xtimage.data.registry import DATASETS, Datasets, holdout
from xtimage.data.sampling import WindowDataset
from xtimage.errors import ConfigError, InputError
from xtimage.io import open_reader, read_padded
from xtimage.window import Window

log = logging.getLogger(__name__)



@dataclass
class _Record:
    """One image and its annotation, as found on disk."""

    image: Path
    height: int
    width: int
    mask: Path | None = None
    label: int | None = None
    boxes: list[tuple[float, float, float, float]] | None = None  # objects (may be empty)
    classes: list[int] = field(default_factory=list)  # class of each box or point


class FolderDataset(torch.utils.data.Dataset):
    """Images and annotations from a folder; see the module docstring for the layouts.

    ``dataset[i]`` is the whole image i (for evaluation); `read` serves a window of it
    (for training on images too large to use whole, with `RandomWindowSampler`).

    Args:
        root: the folder.
        task: "segmentation", "classification" or "detection"; default: guessed from
            what the folder holds.
        classes: class names; a label or mask value outside them is an error. Default:
            the labels found (integer labels are their own indices; names sorted), and
            any mask value below ``num_classes`` is accepted.
        num_classes: the model's classes, bounding mask values when ``classes`` is None.
        skip_bad: drop bad samples with a logged count instead of raising.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        task: str | None = None,
        classes: list[str] | None = None,
        num_classes: int | None = None,
        skip_bad: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: no such folder")
        self.task = task or self._guess_task()
        scanners = {  # the folder's layout for each task that reads one
            "segmentation": self._scan_masks,
            "classification": lambda: self._scan_labels(self.root / "labels.csv"),
            "detection": lambda: self._scan_objects(self._detection_csv()),
        }
        if self.task not in scanners:
            raise ConfigError(f"unknown task '{self.task}'; known: {', '.join(scanners)}")
        self.classes = list(classes) if classes is not None else None
        self._mask_classes = num_classes
        self.skip_bad = skip_bad
        self.bad: list[str] = []
        self.records = scanners[self.task]()
        if self.bad:
            log.warning(
                "%s: skipped %d bad sample(s), kept %d; first: %s",
                self.root,
                len(self.bad),
                len(self.records),
                self.bad[0],
            )
        if not self.records:
            raise InputError(f"{self.root}: no usable {self.task} samples found")

    # --- scanning ---------------------------------------------------------------------

    def _guess_task(self) -> str:
        if (self.root / "masks").is_dir():
            return "segmentation"
        if (self.root / "labels.csv").is_file():
            return "classification"
        if (self.root / "points.csv").is_file() or (self.root / "boxes.csv").is_file():
            return "detection"
        raise InputError(
            f"{self.root}: found none of masks/, labels.csv, points.csv, boxes.csv; "
            "see the README section 'Your own data' for the layouts"
        )

    def _detection_csv(self) -> Path:
        found = [p for p in (self.root / "points.csv", self.root / "boxes.csv") if p.is_file()]
        if len(found) != 1:
            raise InputError(
                f"{self.root}: a detection folder needs exactly one of points.csv and "
                f"boxes.csv, found {len(found)}"
            )
        return found[0]

    def _bad(self, message: str) -> None:
        """Record a bad sample, or raise when bad samples are not skipped."""
        if not self.skip_bad:
            raise InputError(message + " (or pass skip_bad=True to skip bad samples)")
        self.bad.append(message)

    def _size(self, path: Path) -> tuple[int, int]:
        reader = open_reader(path)
        try:
            return reader.height, reader.width
        finally:
            reader.close()

    def _scan_masks(self) -> list[_Record]:
        images_dir, masks_dir = self.root / "images", self.root / "masks"
        if not images_dir.is_dir():
            raise InputError(f"{images_dir}: no such folder (needed next to masks/)")
        images, masks = _files_by_stem(images_dir), _files_by_stem(masks_dir)
        records = []
        for stem in sorted(set(masks) - set(images)):
            self._bad(f"{masks[stem]}: mask without an image named '{stem}' in {images_dir}")
        for stem, image in images.items():
            if stem not in masks:
                self._bad(f"{image}: image without a mask named '{stem}' in {masks_dir}")
                continue
            try:
                size, mask_size = self._size(image), self._size(masks[stem])
            except InputError as exc:
                self._bad(str(exc))
                continue
            if size != mask_size:
                self._bad(
                    f"{masks[stem]}: mask of {mask_size[0]} x {mask_size[1]} px does not "
                    f"match its image {image} of {size[0]} x {size[1]} px"
                )
                continue
            records.append(_Record(image, *size, mask=masks[stem]))
        return records

    def _rows(self, path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict]]:
        """(line number, row) pairs of a CSV that must have ``columns``."""
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(
                    f"{path}: header {reader.fieldnames} lacks column(s) {missing}; "
                    f"expected {','.join(columns)}"
                )
            rows = []
            for row in reader:
                if None in row or None in row.values():  # DictReader's marks of a bad row
                    raise InputError(
                        f"{path}, line {reader.line_num}: {_field_count(row)} fields "
                        f"where the header has {len(reader.fieldnames)} "
                        f"({','.join(reader.fieldnames)}); fix the row (quote a value that "
                        f"holds a comma)"
                    )
                rows.append((reader.line_num, row))
            return rows

    def _image_path(self, name: str) -> Path | None:
        for base in (self.root, self.root / "images"):
            if (base / name).is_file():
                return base / name
        return None

    def _class_index(self, names: list[str]) -> dict[str, int]:
        """Name -> index: the given classes, else integers as themselves, else sorted."""
        if self.classes is not None:
            return {name: i for i, name in enumerate(self.classes)}
        unique = sorted(set(names))
        if all(n.isdigit() for n in unique):
            self.classes = [str(i) for i in range(max(map(int, unique), default=-1) + 1)]
            return {n: int(n) for n in unique}
        self.classes = unique
        return {name: i for i, name in enumerate(unique)}

    def _scan_labels(self, path: Path) -> list[_Record]:
        rows = self._rows(path, ("image", "label"))
        index = self._class_index([r["label"].strip() for _, r in rows])
        records = []
        for line, row in rows:
            image, label = self._image_path(row["image"].strip()), row["label"].strip()
            if image is None:
                self._bad(f"{path}, row {line}: image '{row['image']}' not found in {self.root}")
            elif label not in index:
                self._bad(f"{path}, row {line}: unknown class '{label}'; known: {', '.join(index)}")
            else:
                records.append(_Record(image, *self._size(image), label=index[label]))
        return records

    def _scan_objects(self, path: Path) -> list[_Record]:
        is_boxes = path.name == "boxes.csv"
        coords = ("x0", "y0", "x1", "y1") if is_boxes else ("x", "y")
        rows = self._rows(path, ("image", *coords))
        labeled = [r.get("label") for _, r in rows]
        index = self._class_index([v.strip() for v in labeled if v]) if any(labeled) else None
        if index is None:
            self.classes = self.classes or ["object"]
        records: dict[Path, _Record] = {}
        broken: set[Path] = set()
        for line, row in rows:
            where = f"{path}, row {line}"
            image = self._image_path(row["image"].strip())
            if image is None:
                self._bad(f"{where}: image '{row['image']}' not found in {self.root}")
                continue
            if image in broken:
                continue
            if image not in records:
                records[image] = _Record(image, *self._size(image), boxes=[])
            record = records[image]
            values = [row[c].strip() for c in coords]
            if not any(values):
                continue  # an image without objects
            try:
                v = [float(x) for x in values]
            except ValueError:
                problem = f"coordinates {values} are not all numbers"
            else:
                box = tuple(v) if is_boxes else (v[0], v[1], v[0], v[1])
                problem = _box_problem(box, record.height, record.width, is_boxes)
            label = (row.get("label") or "").strip()
            if not problem and index is not None and label not in index:
                problem = f"unknown class '{label}'; known: {', '.join(index)}"
            if problem:
                self._bad(f"{where}: {problem}")
                broken.add(image)
                del records[image]
                continue
            record.boxes.append(box)
            record.classes.append(index[label] if index is not None else 0)
        return list(records.values())

    # --- reading ----------------------------------------------------------------------

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes is not None else None

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
        """The sample of image ``index`` inside ``window`` (zero past the border).

        Returns:
            ``image`` (C, h, w) float32 (integer pixels scaled to [0, 1]) and ``mask``
            (h, w) int64, or ``label`` (), or ``boxes`` (n, 4) ``(x0, y0, x1, y1)``,
            ``points`` (n, 2) ``(x, y)`` and ``labels`` (n,) of the objects whose centre
            lies in the window, in window coordinates.
        """
        record = self.records[index]
        out = {"image": torch.from_numpy(to_unit(_read(record.image, window)))}
        if record.mask is not None:
            mask = _read(record.mask, window)[0].astype(np.int64)  # (h, w)
            n = len(self.classes) if self.classes is not None else self._mask_classes
            wrong = (mask < 0) if n is None else (mask < 0) | (mask >= n)
            if wrong.any():
                hint = "" if n is None else (
                    f" (model.num_classes={n}); fix the mask, or raise model.num_classes to "
                    f"the number of classes the masks hold"
                )  # fmt: skip
                if n == 2 and set(np.unique(mask).tolist()) <= {0, 255}:
                    hint = " (a 0/255 binary mask: save it with values 0 and 1)"
                raise InputError(
                    f"{record.mask}: mask value {mask[wrong][0]} is not a class index "
                    f"0..{'' if n is None else n - 1}{hint}"
                )
            out["mask"] = torch.from_numpy(mask)
        if record.label is not None:
            out["label"] = torch.tensor(record.label)
        if record.boxes is not None:
            boxes = np.array(record.boxes, dtype=np.float32).reshape(-1, 4)
            boxes -= np.array([window.left, window.top] * 2, dtype=np.float32)
            cx, cy = boxes[:, [0, 2]].mean(1), boxes[:, [1, 3]].mean(1)
            keep = (cx >= 0) & (cx < window.width) & (cy >= 0) & (cy < window.height)
            out["boxes"] = torch.from_numpy(boxes[keep])
            out["points"] = torch.from_numpy(np.stack([cx[keep], cy[keep]], axis=1))
            out["labels"] = torch.tensor(record.classes, dtype=torch.long)[torch.from_numpy(keep)]
        return out


def _files_by_stem(folder: Path) -> dict[str, Path]:
    """The visible files of a folder by stem (hidden files such as .DS_Store are left out)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return {p.stem: p for p in files}


def _field_count(row: dict) -> int:
    """Fields a `csv.DictReader` row really had: missing ones are None, extras under None."""
    return sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None, []))


def _box_problem(box: tuple, height: int, width: int, is_box: bool) -> str:
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box):
        return f"coordinates {box if is_box else box[:2]} are not all finite numbers"
    if is_box and (x1 <= x0 or y1 <= y0):
        return f"box {box} is empty (needs x0 < x1 and y0 < y1)"
    outside = x1 > width or y1 > height if is_box else x0 >= width or y0 >= height
    if min(x0, y0) < 0 or outside:
        what = f"box {box}" if is_box else f"point {box[:2]}"
        return f"{what} lies outside the {height} x {width} image"
    return ""


def _read(path: Path, window: Window) -> np.ndarray:
    reader = open_reader(path)
    try:
        return read_padded(reader, window)
    finally:
        reader.close()


@DATASETS.register("folder")
def folder(model: ModelConfig, data: DataConfig) -> Datasets:
    """A user's folder (`xtimage.data.folder.FolderDataset`) with a held-out share or a
    separate validation folder; ``data.window`` trains on random windows."""
    if data.root is None:
        raise ConfigError("data.kind=folder needs data.root=<folder> (see preset folder_template)")
    kw = dict(task=model.head, classes=model.classes, **data.params)
    kw.setdefault("num_classes", model.num_classes)  # mask values must be below it
    try:
        full = FolderDataset(data.root, **kw)
    except TypeError as exc:
        raise ConfigError(f"data.params {data.params}: {exc}") from None
    classes = full.classes
    if data.val_root is not None:
        train_idx = list(range(len(full)))
        val = FolderDataset(data.val_root, **{**kw, "classes": classes})
    else:
        train_idx, val_idx = holdout(len(full), data.val_fraction, data.seed)
        val = torch.utils.data.Subset(full, val_idx)
    if classes is not None and len(classes) != model.num_classes:
        raise ConfigError(
            f"{data.root} has {len(classes)} classes ({', '.join(classes[:10])}) but "
            f"model.num_classes={model.num_classes}; set model.num_classes={len(classes)}"
        )
    if data.window is not None:
        train = WindowDataset(full, data.window, data.train_samples, data.seed, train_idx)
    else:
        train = torch.utils.data.Subset(full, train_idx)
    return Datasets(train, val, classes)
