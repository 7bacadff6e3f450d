"""Write a tiny xView3-SAR data set in the real on-disk layout, with a fixed seed.

Two scenes of 600 x 800 px, each a folder of GeoTIFFs: ``VV_dB.tif`` and ``VH_dB.tif``
(float32 dB, UTM zone 31N EPSG:32631, 10 m pixels, nodata -32768 on a swath-edge strip,
bright 3 x 3 blobs at the vessels), ``bathymetry.tif`` at half resolution (300 x 400,
20 m pixels, same extent) and, in the second scene, ``owiMask.tif`` at a ratio that is not
an integer (61 x 79). Beside them ``labels.csv`` with the public label files' header
(latitude and longitude computed from the pixel positions) and
``shoreline/{scene_id}_shoreline.npy`` object arrays of (n, 2) row/column contours.

Usage: ``python tests/data/xview3_fixture.py OUT_FOLDER``
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from rasterio.warp import transform as warp_transform

HEIGHT, WIDTH = 600, 800
CRS = "EPSG:32631"
NODATA = -32768.0
SCENE_IDS = ("05bc615a9b0e1159t", "72dba3e82f782f67t")
ORIGINS = ((440000.0, 4790000.0), (520000.0, 4700000.0))  # UTM x, y of the top-left corner
HEADER = [
    "detect_lat",
    "detect_lon",
    "vessel_length_m",
    "source",
    "detect_scene_row",
    "detect_scene_column",
    "is_vessel",
    "is_fishing",
    "distance_from_shore_km",
    "scene_id",
    "confidence",
    "top",
    "left",
    "bottom",
    "right",
    "detect_id",
]


@dataclass
class XView3Fixture:
    """Where the fixture lies and what it holds."""

    root: Path  # folder of scene folders
    labels_csv: Path
    shoreline_root: Path
    scene_ids: tuple[str, ...]
    sar: dict[str, np.ndarray]  # scene id -> (2, H, W) float32, VV then VH, as written
    shorelines: dict[str, list[np.ndarray]]  # scene id -> contours as written


def _write_tif(path: Path, array: np.ndarray, origin: tuple[float, float], pixel_m: tuple) -> None:
    """One single-band float32 GeoTIFF, tiled, with the xView3 nodata value."""
    h, w = array.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=h,
        width=w,
        count=1,
        dtype="float32",
        crs=CRS,
        transform=Affine(pixel_m[1], 0.0, origin[0], 0.0, -pixel_m[0], origin[1]),
        nodata=NODATA,
        tiled=True,
        blockxsize=128,
        blockysize=128,
    ) as ds:
        ds.write(array.astype(np.float32), 1)


def write_xview3_fixture(root: str | Path, seed: int = 0) -> XView3Fixture:
    """Write the two scenes, the labels and the shorelines under ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    scenes, shore_root = root / "scenes", root / "shoreline"
    shore_root.mkdir(parents=True, exist_ok=True)
    rows_out, sar, shorelines = [], {}, {}
    for k, (scene_id, origin) in enumerate(zip(SCENE_IDS, ORIGINS, strict=True)):
        folder = scenes / scene_id
        folder.mkdir(parents=True, exist_ok=True)
        vv = rng.normal(-20.0, 2.0, size=(HEIGHT, WIDTH)).astype(np.float32)
        vh = rng.normal(-28.0, 2.0, size=(HEIGHT, WIDTH)).astype(np.float32)
        n = 6 + k
        det_rows = rng.integers(20, HEIGHT - 20, size=n)
        det_cols = rng.integers(40, WIDTH - 20, size=n)
        for r, c in zip(det_rows, det_cols, strict=True):
            vv[r - 1 : r + 2, c - 1 : c + 2] = 10.0 + rng.random()
            vh[r - 1 : r + 2, c - 1 : c + 2] = 0.0 + rng.random()
        vv[:, :12] = NODATA  # swath edge
        vh[:, :12] = NODATA
        _write_tif(folder / "VV_dB.tif", vv, origin, (10.0, 10.0))
        _write_tif(folder / "VH_dB.tif", vh, origin, (10.0, 10.0))
        sar[scene_id] = np.stack([vv, vh])
        yy, xx = np.mgrid[0 : HEIGHT // 2, 0 : WIDTH // 2]
        bathymetry = (-4000.0 + 8.0 * xx + 3.0 * yy).astype(np.float32)  # rising to a coast
        bathymetry[:5, :5] = NODATA
        _write_tif(folder / "bathymetry.tif", bathymetry, origin, (20.0, 20.0))
        if k == 1:
            mask = (rng.random((61, 79)) * 3).astype(np.float32)  # codes 0, 1, 2
            _write_tif(
                folder / "owiMask.tif", mask, origin, (10.0 * HEIGHT / 61, 10.0 * WIDTH / 79)
            )

        # Shoreline: a coast along the right edge, as two contours of unequal length.
        shorelines[scene_id] = [
            np.stack([np.arange(0, 300, 5.0), np.full(60, 760.0)], axis=1),
            np.stack([np.arange(300, 600, 10.0), np.full(30, 770.0)], axis=1),
        ]
        contours = np.empty(2, dtype=object)
        contours[:] = shorelines[scene_id]
        np.save(shore_root / f"{scene_id}_shoreline.npy", contours, allow_pickle=True)

        x = origin[0] + (det_cols + 0.5) * 10.0
        y = origin[1] - (det_rows + 0.5) * 10.0
        lon, lat = warp_transform(CRS, "EPSG:4326", x.tolist(), y.tolist())
        for i in range(n):
            vessel = [True, False, None][i % 3]
            rows_out.append(
                {
                    "detect_lat": round(lat[i], 7),
                    "detect_lon": round(lon[i], 7),
                    "vessel_length_m": None if i == 2 else round(float(rng.uniform(10, 300)), 2),
                    "source": ["manual", "ais", "ais/manual"][i % 3],
                    "detect_scene_row": int(det_rows[i]),
                    "detect_scene_column": int(det_cols[i]),
                    "is_vessel": vessel,
                    "is_fishing": bool(i % 2) if vessel else None,
                    "distance_from_shore_km": round(float((760 - det_cols[i]) * 0.01), 3),
                    "scene_id": scene_id,
                    "confidence": ["HIGH", "MEDIUM", "HIGH", "LOW"][i % 4],
                    "top": int(det_rows[i]) - 2,
                    "left": int(det_cols[i]) - 2,
                    "bottom": int(det_rows[i]) + 2,
                    "right": int(det_cols[i]) + 2,
                    "detect_id": f"{scene_id}_{i:03d}",
                }
            )
    labels_csv = root / "labels.csv"
    pd.DataFrame(rows_out, columns=HEADER).to_csv(labels_csv, index=False)
    return XView3Fixture(scenes, labels_csv, shore_root, SCENE_IDS, sar, shorelines)


if __name__ == "__main__":
    write_xview3_fixture(Path(sys.argv[1]))
