"""Write a tiny COCO detection data set in the real layout, with a fixed seed.

``annotations/instances_val2017.json`` with COCO's top-level keys (info, licenses,
images, annotations, categories) and entries as in the public files: images with
license, file_name (zero-padded 12-digit ids), coco_url, height, width, date_captured,
flickr_url, id; annotations with a polygon ``segmentation`` (or, for the crowd region,
uncompressed RLE ``{"counts", "size"}``), ``area`` (the polygon's), iscrowd, image_id,
``bbox`` [x, y, width, height], category_id, id; categories with supercategory, id,
name and ids with gaps, as COCO's (1, 3, 18). Images under ``val2017/``: PNG (lossless,
so tests can compare pixels) and one JPEG, each a dark noisy field with a bright
rectangle per object.

Usage: ``python tests/data/coco_fixture.py OUT_FOLDER``
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = [
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 3, "name": "car"},
    {"supercategory": "animal", "id": 18, "name": "dog"},
]
# image id -> (height, width, suffix, [(x, y, w, h, category id, iscrowd)])
IMAGES = {
    139: (48, 64, ".png", [(4.0, 6.0, 20.0, 12.0, 1, 0), (30.5, 20.0, 25.0, 22.5, 3, 0)]),
    285: (40, 40, ".png", [(10.0, 10.0, 8.0, 16.0, 18, 0), (0.0, 30.0, 40.0, 10.0, 1, 1)]),
    632: (32, 48, ".jpg", [(12.0, 4.0, 24.0, 20.0, 3, 0)]),
    724: (36, 36, ".png", []),  # an image without objects
}


@dataclass
class CocoFixture:
    """Where the fixture lies and what it holds."""

    root: Path
    annotation_file: Path
    image_root: Path
    pixels: dict[int, np.ndarray]  # image id -> (H, W, 3) uint8, as written


def _rle(height: int, width: int, x: int, y: int, w: int, h: int) -> dict:
    """Uncompressed RLE of a filled rectangle: run lengths over the column-major mask."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y : y + h, x : x + w] = 1
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"counts": counts, "size": [height, width]}


def write_coco_fixture(root: str | Path, seed: int = 0) -> CocoFixture:
    """Write the data set under ``root``; returns where and what."""
    root = Path(root)
    image_root = root / "val2017"
    image_root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations, pixels = [], [], {}
    for image_id, (height, width, suffix, objects) in IMAGES.items():
        name = f"{image_id:012d}{suffix}"
        array = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        for x, y, w, h, _, _ in objects:
            array[int(y) : int(y + h), int(x) : int(x + w)] = 200
        Image.fromarray(array).save(
            image_root / name, **({"quality": 95} if suffix == ".jpg" else {})
        )
        pixels[image_id] = np.asarray(Image.open(image_root / name))
        images.append(
            {
                "license": 3,
                "file_name": name,
                "coco_url": f"http://images.cocodataset.org/val2017/{name}",
                "height": height,
                "width": width,
                "date_captured": "2013-11-14 17:02:52",
                "flickr_url": f"http://farm9.staticflickr.com/{name}",
                "id": image_id,
            }
        )
        for x, y, w, h, category, crowd in objects:
            if crowd:
                segmentation = _rle(height, width, int(x), int(y), int(w), int(h))
            else:
                segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            annotations.append(
                {
                    "segmentation": segmentation,
                    "area": w * h,
                    "iscrowd": crowd,
                    "image_id": image_id,
                    "bbox": [x, y, w, h],
                    "category_id": category,
                    "id": 900100 + len(annotations),
                }
            )
    data = {
        "info": {
            "description": "xtimage COCO fixture",
            "url": "http://cocodataset.org",
            "version": "1.0",
            "year": 2017,
            "contributor": "COCO Consortium",
            "date_created": "2017/09/01",
        },
        "licenses": [
            {
                "url": "http://creativecommons.org/licenses/by/2.0/",
                "id": 3,
                "name": "Attribution License",
            }
        ],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    annotation_file = root / "annotations" / "instances_val2017.json"
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    annotation_file.write_text(json.dumps(data))
    return CocoFixture(root, annotation_file, image_root, pixels)


if __name__ == "__main__":
    write_coco_fixture(Path(sys.argv[1]))
