"""Points and boxes out: CSV, GeoJSON (map or pixel flavour) and COCO results JSON.

Coordinates are continuous level-0 pixel positions: (0, 0) is the top-left corner of
the image and the centre of pixel (i, j) is (i + 0.5, j + 0.5). Each writer streams the
detections it is given (any iterable, a generator included) to a temporary file and
renames it when complete.

- CSV: ``row, col`` (and ``top, left, bottom, right`` for boxes), ``score, label``, any
  extra columns named; with a georeference, also ``x, y`` in the map CRS and ``lon,
  lat`` in WGS 84.
- GeoJSON, map flavour (RFC 7946, what QGIS reads): WGS 84 longitude/latitude, boxes as
  counter-clockwise polygons, no ``crs`` member; needs a georeference.
- GeoJSON, pixel flavour (what QuPath imports): x = column, y = row in pixels, each
  feature a QuPath ``detection`` with its class in ``classification``.
- COCO results (what pycocotools' ``loadRes`` reads): ``image_id, category_id, bbox``
  as ``[x, y, width, height]``, ``score``; boxes only.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xtimage.errors import ConfigError, require
from xtimage.io.atomic import atomic_path
from xtimage.io.base import GeoInfo

_BATCH = 4096  # detections converted to lon/lat at once


@dataclass(frozen=True)
class Detection:
    """A point (or the centre of a box) found in an image.

    Attributes:
        row: position along y in level-0 pixels (continuous).
        col: position along x in level-0 pixels (continuous).
        score: confidence, or None.
        label: class name (or id), or None.
        box: ``(top, left, bottom, right)`` in pixels, or None for a point.
        extra: further values, written under their keys (e.g. a vessel's length).
    """

    row: float
    col: float
    score: float | None = None
    label: str | int | None = None
    box: tuple[float, float, float, float] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_box(
        cls, top: float, left: float, bottom: float, right: float, **kwargs: Any
    ) -> Detection:
        """A box detection positioned at the box's centre."""
        return cls((top + bottom) / 2, (left + right) / 2, box=(top, left, bottom, right), **kwargs)


def _batches(detections: Iterable[Detection]) -> Iterator[list[Detection]]:
    it = iter(detections)
    while batch := list(itertools.islice(it, _BATCH)):
        yield batch


def _lonlat(geo: GeoInfo, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WGS 84 longitude and latitude of pixel positions."""
    rasterio = require("rasterio", "geo", "converting pixel positions to longitude/latitude")
    from rasterio.warp import transform

    xs, ys = geo.pixel_to_map(rows, cols)
    crs = rasterio.crs.CRS.from_wkt(geo.crs_wkt)
    lon, lat = transform(crs, "EPSG:4326", xs.ravel().tolist(), ys.ravel().tolist())
    return np.reshape(lon, np.shape(xs)), np.reshape(lat, np.shape(ys))


def write_csv(
    path: str | Path,
    detections: Iterable[Detection],
    geo: GeoInfo | None = None,
    extra: Sequence[str] = (),
) -> Path:
    """Write detections as CSV, one row each (map coordinates too when ``geo`` is given).

    Args:
        path: the output file.
        detections: the detections, streamed.
        geo: the input's georeference; adds ``x, y`` (map CRS) and ``lon, lat`` (WGS 84).
        extra: keys of `Detection.extra` to write as columns (empty where missing).
    """
    header = ["row", "col", "top", "left", "bottom", "right", "score", "label", *extra]
    if geo is not None:
        header += ["x", "y", "lon", "lat"]
    with atomic_path(path) as temp, open(temp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        for batch in _batches(detections):
            rows = np.array([d.row for d in batch])
            cols = np.array([d.col for d in batch])
            if geo is not None:
                xs, ys = geo.pixel_to_map(rows, cols)
                lon, lat = _lonlat(geo, rows, cols)
            for i, d in enumerate(batch):
                box = list(d.box) if d.box is not None else ["", "", "", ""]
                line = [d.row, d.col, *box, _blank(d.score), _blank(d.label)]
                line += [_blank(d.extra.get(key)) for key in extra]
                if geo is not None:
                    line += [xs[i], ys[i], lon[i], lat[i]]
                out.writerow(line)
    return Path(path)


def _blank(value: Any) -> Any:
    return "" if value is None else value


def _ring(geo: GeoInfo | None, box: tuple[float, float, float, float]) -> list[list[float]]:
    """A box's closed ring: [x, y] pixels, or [lon, lat] counter-clockwise (RFC 7946)."""
    top, left, bottom, right = box
    rows = np.array([top, bottom, bottom, top, top], np.float64)
    cols = np.array([left, left, right, right, left], np.float64)
    if geo is None:
        return np.stack([cols, rows], 1).tolist()
    lon, lat = _lonlat(geo, rows, cols)
    signed_area = np.sum(lon[:-1] * lat[1:] - lon[1:] * lat[:-1])
    ring = np.stack([lon, lat], 1)
    return (ring if signed_area > 0 else ring[::-1]).tolist()


def write_geojson(
    path: str | Path,
    detections: Iterable[Detection],
    geo: GeoInfo | None = None,
    flavour: str | None = None,
) -> Path:
    """Write detections as a GeoJSON FeatureCollection.

    Args:
        path: the output file.
        detections: the detections, streamed.
        geo: the input's georeference (needed for the map flavour).
        flavour: "lonlat" (RFC 7946 WGS 84, for QGIS) or "pixel" (for QuPath); None:
            "lonlat" when ``geo`` is given, else "pixel".
    """
    flavour = flavour or ("lonlat" if geo is not None else "pixel")
    if flavour not in ("lonlat", "pixel"):
        raise ConfigError(f"GeoJSON flavour '{flavour}'; known: lonlat, pixel")
    if flavour == "lonlat" and geo is None:
        raise ConfigError(
            "longitude/latitude GeoJSON needs the input's georeference (geo=reader.geo); the "
            "input has none, so write flavour='pixel'"
        )
    to_map = geo if flavour == "lonlat" else None
    with atomic_path(path) as temp, open(temp, "w") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        first = True
        for batch in _batches(detections):
            rows = np.array([d.row for d in batch])
            cols = np.array([d.col for d in batch])
            xs, ys = _lonlat(to_map, rows, cols) if to_map is not None else (cols, rows)
            for i, d in enumerate(batch):
                feature = {
                    "type": "Feature",
                    "geometry": (
                        {"type": "Polygon", "coordinates": [_ring(to_map, d.box)]}
                        if d.box is not None
                        else {"type": "Point", "coordinates": [float(xs[i]), float(ys[i])]}
                    ),
                    "properties": _properties(d, flavour),
                }
                f.write(("" if first else ",\n") + json.dumps(feature))
                first = False
        f.write("\n]}\n")
    return Path(path)


def _properties(d: Detection, flavour: str) -> dict[str, Any]:
    if flavour == "pixel":  # QuPath's object schema
        props: dict[str, Any] = {"objectType": "detection"}
        if d.label is not None:
            props["classification"] = {"name": str(d.label)}
        measurements = {**({"score": d.score} if d.score is not None else {}), **d.extra}
        if measurements:
            props["measurements"] = measurements
        return props
    props = {"row": d.row, "col": d.col, **d.extra}
    if d.score is not None:
        props["score"] = d.score
    if d.label is not None:
        props["label"] = d.label
    return props


def write_coco_results(
    path: str | Path,
    detections: Iterable[Detection],
    image_id: int,
    categories: Mapping[str, int] | None = None,
) -> Path:
    """Write box detections as a COCO results JSON list.

    Args:
        path: the output file.
        detections: box detections with scores, streamed.
        image_id: the COCO image id they belong to.
        categories: class name -> COCO category id; None when labels are ids already.
    """
    with atomic_path(path) as temp, open(temp, "w") as f:
        f.write("[")
        for i, d in enumerate(detections):
            if d.box is None:
                raise ConfigError(
                    f"COCO results need boxes; detection {i} is a point ({d.row}, {d.col})"
                )
            if categories is not None and d.label not in categories:
                raise ConfigError(
                    f"label {d.label!r} of detection {i} is not in categories {dict(categories)}"
                )
            if categories is None and not isinstance(d.label, int):
                raise ConfigError(
                    f"label {d.label!r} of detection {i} is not a category id; pass categories="
                )
            top, left, bottom, right = d.box
            result = {
                "image_id": image_id,
                "category_id": int(categories[d.label] if categories is not None else d.label),
                "bbox": [left, top, right - left, bottom - top],
                "score": 1.0 if d.score is None else float(d.score),
            }
            f.write(("" if i == 0 else ",\n") + json.dumps(result))
        f.write("]\n")
    return Path(path)


def read_csv(path: str | Path) -> Iterator[Detection]:
    """Box detections back from a `write_csv` file (rows without a box are skipped);
    labels come back as the strings written."""
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("top"):
                continue
            box = tuple(float(row[k]) for k in ("top", "left", "bottom", "right"))
            score = float(row["score"]) if row.get("score") else None
            yield Detection.from_box(*box, score=score, label=row.get("label") or None)
