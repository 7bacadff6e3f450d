"""Write a tiny iNaturalist 2018 data set in the real layout, with a fixed seed.

``train2018.json`` and ``val2018.json`` with the release's keys (info, images,
categories, annotations, licenses) and entries: images ``{id, width, height,
file_name, license, rights_holder}``, annotations ``{id, image_id, category_id}`` (one
per image), categories ``{id, name, supercategory, kingdom, phylum, class, order,
family, genus}``, the same full list in both files, with ids that are not contiguous
within a supercategory. As shipped, the names in those two files are obfuscated (the
2018 competition hid every taxonomic name); the real ones are in the separate
``categories.json`` (a list of the same category objects, un-obfuscated), which the
xT release reads for the supercategory. ``obfuscated_taxonomy=False`` writes the names in
the clear; ``bare_categories=True`` keeps only ``id`` and ``name`` in the two files (a
copy whose taxonomy lives in ``categories.json`` alone); ``categories_json=False`` leaves
that file out. JPEGs under ``train_val2018/<supercategory>/<category id>/
<32 hex digits>.jpg``, of varied sizes; one is greyscale, as some of the release's are.
Each image is a flat colour per class plus noise, so a tiny model can learn the labels.

Usage: ``python tests/data/inat_fixture.py OUT_FOLDER``
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = [
    # id, name, supercategory, kingdom, phylum, class, order, family, genus
    (
        200,
        "Turdus migratorius",
        "Aves",
        "Animalia",
        "Chordata",
        "Aves",
        "Passeriformes",
        "Turdidae",
        "Turdus",
    ),
    (
        205,
        "Corvus corax",
        "Aves",
        "Animalia",
        "Chordata",
        "Aves",
        "Passeriformes",
        "Corvidae",
        "Corvus",
    ),
    (
        1002,
        "Crotalus atrox",
        "Reptilia",
        "Animalia",
        "Chordata",
        "Reptilia",
        "Squamata",
        "Viperidae",
        "Crotalus",
    ),
    (
        1005,
        "Chelonia mydas",
        "Reptilia",
        "Animalia",
        "Chordata",
        "Reptilia",
        "Testudines",
        "Cheloniidae",
        "Chelonia",
    ),
    (
        1010,
        "Anolis carolinensis",
        "Reptilia",
        "Animalia",
        "Chordata",
        "Reptilia",
        "Squamata",
        "Dactyloidae",
        "Anolis",
    ),
    (
        3000,
        "Quercus alba",
        "Plantae",
        "Plantae",
        "Tracheophyta",
        "Magnoliopsida",
        "Fagales",
        "Fagaceae",
        "Quercus",
    ),
]
FIELDS = ("id", "name", "supercategory", "kingdom", "phylum", "class", "order", "family", "genus")
# images per category id in each split
COUNTS = {
    "train": {200: 1, 205: 1, 1002: 2, 1005: 2, 1010: 2, 3000: 1},
    "val": {200: 1, 1002: 1, 1005: 1, 1010: 1},
}
REPTILIA = [1002, 1005, 1010]
COLOURS = {
    200: (200, 60, 60),
    205: (60, 200, 60),
    1002: (220, 180, 40),
    1005: (40, 90, 220),
    1010: (200, 40, 200),
    3000: (120, 120, 30),
}


@dataclass
class INatFixture:
    """Where the fixture lies and what it holds."""

    root: Path
    labels: dict[str, dict[str, int]]  # split -> file_name -> category id
    greyscale: str  # file_name of the greyscale image


def obfuscate(text: str) -> str:
    """A stand-in for the competition's hidden names: a hex digest."""
    return hashlib.md5(text.encode()).hexdigest()


def write_inat_fixture(
    root: str | Path,
    seed: int = 0,
    *,
    obfuscated_taxonomy: bool = True,
    bare_categories: bool = False,
    categories_json: bool = True,
) -> INatFixture:
    """Write the data set under ``root``; returns where and what."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    categories = [dict(zip(FIELDS, c, strict=True)) for c in CATEGORIES]
    if categories_json:
        (root / "categories.json").write_text(json.dumps(categories))
    listed = categories
    if obfuscated_taxonomy:
        hidden = ("name", "kingdom", "phylum", "class", "order", "family", "genus")
        listed = [{k: obfuscate(v) if k in hidden else v for k, v in c.items()} for c in listed]
    if bare_categories:
        listed = [{"id": c["id"], "name": c["name"]} for c in listed]
    supers = {c["id"]: c["supercategory"] for c in categories}
    labels: dict[str, dict[str, int]] = {}
    image_id, greyscale = 0, ""
    for split, counts in COUNTS.items():
        images, annotations = [], []
        labels[split] = {}
        for category, n in counts.items():
            for _ in range(n):
                height, width = (int(v) for v in rng.integers(24, 48, 2))
                name = f"train_val2018/{supers[category]}/{category}/{rng.bytes(16).hex()}.jpg"
                path = root / name
                path.parent.mkdir(parents=True, exist_ok=True)
                noise = rng.integers(-20, 21, (height, width, 3))
                array = np.clip(np.array(COLOURS[category]) + noise, 0, 255).astype(np.uint8)
                image = Image.fromarray(array)
                if not greyscale and category == 1005:
                    image, greyscale = image.convert("L"), name
                image.save(path, quality=95)
                images.append(
                    {
                        "id": image_id,
                        "width": width,
                        "height": height,
                        "file_name": name,
                        "license": 1,
                        "rights_holder": "xtimage fixture",
                    }
                )
                annotations.append({"id": image_id, "image_id": image_id, "category_id": category})
                labels[split][name] = category
                image_id += 1
        data = {
            "info": {
                "year": 2018,
                "version": "1.0",
                "description": "xtimage iNaturalist 2018 fixture",
                "contributor": "xtimage",
                "url": "https://github.com/visipedia/inat_comp",
                "date_created": "2018-02-19 10:34:00",
            },
            "images": images,
            "categories": listed,
            "annotations": annotations,
            "licenses": [
                {
                    "id": 1,
                    "name": "Attribution License",
                    "url": "http://creativecommons.org/licenses/by/4.0/",
                }
            ],
        }
        (root / f"{split}2018.json").write_text(json.dumps(data))
    return INatFixture(root, labels, greyscale)


if __name__ == "__main__":
    write_inat_fixture(Path(sys.argv[1]))
