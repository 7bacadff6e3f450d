"""xView3-SAR: scene folders, labels, band scaling, training crops and the data set.

Data set: Paolo et al., "xView3-SAR: Detecting Dark Fishing Activity Using Synthetic
Aperture Radar Imagery", NeurIPS 2022 Datasets and Benchmarks. xT (Gupta et al., ICML
2024) trains on positive-biased 4,096 px crops cut into 512 px regions and evaluates on
whole scenes.

On disk (the public release's layout)::

    root/{scene_id}/VV_dB.tif VH_dB.tif              SAR, dB, 10 m UTM grid
    root/{scene_id}/bathymetry.tif owiWindSpeed.tif  ancillary, coarser grids
        owiWindDirection.tif owiWindQuality.tif owiMask.tif
    labels.csv                                       `LABEL_COLUMNS`, one row a detection
    shoreline/{scene_id}_shoreline.npy               pickled object array of contours

Every raster marks missing pixels with -32768. An `XView3Scene` reads windows of the
bands it is asked for on the SAR grid: an ancillary band whose shape differs is resampled
on read by nearest neighbour (pixel centres, the same pixels GDAL's nearest picks), which
keeps categorical bands (``owiMask``, ``owiWindQuality``) categorical and never mixes in
nodata; the xView3 reference code resamples bilinearly instead. Band scaling is a
reader-side transform (`scale_bands`): each band is clipped to a fixed range and mapped
linearly to [0, 1], nodata to 0. SAR is clipped below -50 dB, as in the reference code.

GeoTIFFs are read with rasterio windowed reads here, directly: ``xtimage.io``'s GeoTIFF
reader was not yet available when this module was written. Shoreline files belong to the
score (`xtimage.metrics.xview3.load_shoreline`).

Over 500 lines because it is the whole of one data set as released, from the files to
the ``data.kind=xview3`` builder; the scene reader, the crop planner and the builder
share its constants and are read together.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xtimage.config import DataConfig, ModelConfig
from xtimage.data.registry import DATASETS, Datasets, holdout
from xtimage.errors import ConfigError, InputError, require
from xtimage.io.base import Level, PixelSize, check_window, read_padded
from xtimage.window import Window

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

NODATA = -32768.0
SAR_BANDS = ("VV_dB", "VH_dB")
ANCILLARY_BANDS = (
    "bathymetry",
    "owiWindSpeed",
    "owiWindDirection",
    "owiWindQuality",
    "owiMask",
)
LABEL_COLUMNS = (
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
)


def scene_bands(in_chans: int) -> tuple[str, ...]:
    """The bands an xView3 model of ``in_chans`` channels reads: the first ``in_chans`` of
    VV, VH and the ancillary rasters, in that order."""
    order = SAR_BANDS + ANCILLARY_BANDS
    if not 1 <= in_chans <= len(order):
        raise ConfigError(
            f"an xView3 model reads 1 to {len(order)} bands ({', '.join(order)}), in that "
            f"order; model.in_chans={in_chans}"
        )
    return order[:in_chans]


@dataclass(frozen=True)
class BandRange:
    """The range a band is clipped to before it is mapped linearly to [0, 1]."""

    low: float
    high: float


# Why these ranges: SAR backscatter of sea clutter lies near -30 to -15 dB and vessels up
# to about +30 dB; below -50 dB is noise (the reference clips there). Bathymetry: ocean
# depths to 6 km and coastal land heights. Wind: speeds up to 30 m/s, directions in
# degrees. owiWindQuality (0 good to 3 poor) and owiMask (0 sea, 1 land, 2 ice) are codes.
BAND_RANGES = {
    "VV_dB": BandRange(-50.0, 30.0),
    "VH_dB": BandRange(-50.0, 30.0),
    "bathymetry": BandRange(-6000.0, 2000.0),
    "owiWindSpeed": BandRange(0.0, 30.0),
    "owiWindDirection": BandRange(0.0, 360.0),
    "owiWindQuality": BandRange(0.0, 3.0),
    "owiMask": BandRange(0.0, 2.0),
}


def scale_bands(pixels: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """Clip each band to its `BAND_RANGES` range and map it to [0, 1]; nodata becomes 0.

    Args:
        pixels: (C, h, w) raw values, one channel per name in ``bands``.
        bands: the band names, in channel order.

    Returns:
        (C, h, w) float32.
    """
    assert pixels.shape[0] == len(bands)
    out = np.empty(pixels.shape, dtype=np.float32)
    for c, band in enumerate(bands):
        r = BAND_RANGES[band]
        x = pixels[c].astype(np.float32)  # (h, w)
        missing = (x == NODATA) | ~np.isfinite(x)
        out[c] = (np.clip(x, r.low, r.high) - r.low) / (r.high - r.low)
        out[c][missing] = 0.0
    return out


def read_labels(path: str | Path) -> pd.DataFrame:
    """The xView3 labels CSV, its header checked against `LABEL_COLUMNS`."""
    pd = require("pandas", "science", "reading xView3 labels")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such labels CSV")
    labels = pd.read_csv(path, index_col=False)
    missing = [c for c in LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise InputError(
            f"{path}: the labels lack the column(s) {missing}; an xView3 labels CSV has "
            f"{list(LABEL_COLUMNS)}"
        )
    return labels


class XView3Scene:
    """One scene folder as a reader of (C, h, w) windows on the SAR grid.

    Args:
        folder: the scene folder, named by its scene id.
        bands: the bands to stack as channels, from `SAR_BANDS` and `ANCILLARY_BANDS`.
        scale: apply `scale_bands` (float32 in [0, 1], nodata 0); False gives raw values
            with nodata -32768.
    """

    backend = "xview3"

    def __init__(
        self, folder: str | Path, *, bands: Sequence[str] = SAR_BANDS, scale: bool = True
    ) -> None:
        self._rasterio = require("rasterio", "geo", "reading xView3 scenes")
        folder = Path(folder)
        unknown = [b for b in bands if b not in BAND_RANGES]
        if not bands or unknown:
            raise ConfigError(
                f"bands={list(bands)}: unknown or no band names {unknown}; choose from "
                f"{list(BAND_RANGES)}"
            )
        missing = [f"{b}.tif" for b in ("VV_dB", *bands) if not (folder / f"{b}.tif").is_file()]
        if missing:
            raise InputError(
                f"{folder}: scene folder lacks {sorted(set(missing))}; an xView3 scene folder "
                f"holds VV_dB.tif, VH_dB.tif and the ancillary rasters"
            )
        self.path = str(folder)
        self.scene_id = folder.name
        self.bands = tuple(bands)
        self.scale = scale
        self._local = threading.local()
        self._handles: list[Any] = []
        self._lock = threading.Lock()
        grid = self._dataset("VV_dB")
        self.height, self.width = grid.height, grid.width
        self.channels = len(self.bands)
        self.dtype = np.dtype(np.float32)
        self.levels = [Level(self.height, self.width, 1.0)]
        a, _, _, _, e, _ = tuple(grid.transform)[:6]
        self.pixel_size = (
            PixelSize(abs(e), abs(a), "m") if grid.crs and grid.crs.is_projected else None
        )
        self.nodata = None if scale else NODATA
        self.geo = None
        self.crs = None if grid.crs is None else grid.crs.to_string()
        self.transform = tuple(grid.transform)[:6]
        self.metadata = {"scene_id": self.scene_id, "bands": list(self.bands), "crs": self.crs}
        self._shapes = {}
        for band in self.bands:
            ds = self._dataset(band)
            self._shapes[band] = (ds.height, ds.width)
            if (ds.height, ds.width) != (self.height, self.width) and not np.allclose(
                ds.bounds, grid.bounds, atol=max(abs(ds.transform.a), abs(ds.transform.e))
            ):
                warnings.warn(
                    f"{folder / band}.tif: its bounds {tuple(ds.bounds)} differ from the SAR "
                    f"grid's {tuple(grid.bounds)} by more than a pixel; it is resampled by "
                    f"shape, assuming the same extent",
                    stacklevel=2,
                )

    def _dataset(self, band: str) -> Any:
        """This thread's open dataset of ``band`` (GDAL handles are per thread)."""
        handles = self._local.__dict__.setdefault("handles", {})
        if band not in handles:
            path = Path(self.path) / f"{band}.tif"
            try:
                handles[band] = self._rasterio.open(path)
            except self._rasterio.errors.RasterioIOError as exc:
                raise InputError(f"{path}: not a readable GeoTIFF ({exc})") from exc
            with self._lock:
                self._handles.append(handles[band])
        return handles[band]

    def read_region(self, window: Window, level: int = 0) -> np.ndarray:
        """The bands over ``window`` of the SAR grid, as (C, h, w) float32."""
        check_window(self, window, level)
        out = np.empty((self.channels, window.height, window.width), dtype=np.float32)
        for c, band in enumerate(self.bands):
            out[c] = self._read_band(band, window)
        return scale_bands(out, self.bands) if self.scale else out

    def _read_band(self, band: str, window: Window) -> np.ndarray:
        """One band over a SAR-grid window, resampled by nearest neighbour if coarser."""
        ds = self._dataset(band)
        h, w = self._shapes[band]
        if (h, w) == (self.height, self.width):
            rows, cols = np.arange(window.top, window.bottom), np.arange(window.left, window.right)
        else:
            # Pixel centre (r + 0.5) of the SAR grid lies in source pixel floor((r + 0.5) * h / H).
            rows = _nearest(window.top, window.bottom, h, self.height)  # (wh,)
            cols = _nearest(window.left, window.right, w, self.width)  # (ww,)
        top, left = int(rows[0]), int(cols[0])
        src = self._rasterio.windows.Window(
            left, top, int(cols[-1]) - left + 1, int(rows[-1]) - top + 1
        )
        block = ds.read(1, window=src)  # (sh, sw) covering the needed source pixels
        return block[np.ix_(rows - top, cols - left)]

    def close(self) -> None:
        with self._lock:
            for ds in self._handles:
                ds.close()
            self._handles.clear()
        self._local = threading.local()

    def __enter__(self) -> XView3Scene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _nearest(start: int, stop: int, src: int, dst: int) -> np.ndarray:
    """Source indices of destination pixels ``[start, stop)`` for nearest resampling."""
    idx = np.floor((np.arange(start, stop) + 0.5) * (src / dst)).astype(np.int64)
    return np.clip(idx, 0, src - 1)


def plan_crops(
    height: int,
    width: int,
    detections_rc: np.ndarray,
    *,
    size: int,
    count: int,
    positive_fraction: float = 0.5,
    margin: int = 0,
    rng: np.random.Generator,
) -> list[Window]:
    """Random square crops of a scene, a share of them placed around detections.

    A positive crop picks a detection at random and a crop position that puts it at a
    uniformly random place at least ``margin`` px inside the crop, then moves the crop
    inside the scene; the detection stays inside it. Other crops are uniform over the
    scene. In a scene smaller than ``size`` a crop starts at 0 and extends past the far
    border (read it with `read_padded`).

    Args:
        height: scene rows.
        width: scene columns.
        detections_rc: (N, 2) (row, column) of the detections to aim at.
        size: crop side in pixels.
        count: crops to plan.
        positive_fraction: expected share of crops around a detection (none without
            detections).
        margin: least distance of the aimed detection from the crop's border, before
            the crop is moved inside the scene.
        rng: the random source.
    """
    if size <= 0 or count < 0 or not 0 <= positive_fraction <= 1 or not 0 <= 2 * margin < size:
        raise ConfigError(
            f"crops of size={size}, count={count}, positive_fraction={positive_fraction}, "
            f"margin={margin}: need size > 0, count >= 0, 0 <= positive_fraction <= 1 and "
            f"0 <= 2 * margin < size"
        )
    detections_rc = np.asarray(detections_rc, dtype=np.float64).reshape(-1, 2)
    crops = []
    for _ in range(count):
        if len(detections_rc) and rng.random() < positive_fraction:
            r, c = detections_rc[rng.integers(len(detections_rc))].astype(np.int64)
            top = r - rng.integers(margin, size - margin)
            left = c - rng.integers(margin, size - margin)
        else:
            top = rng.integers(0, max(height - size, 0) + 1)
            left = rng.integers(0, max(width - size, 0) + 1)
        top = min(max(int(top), 0), max(height - size, 0))
        left = min(max(int(left), 0), max(width - size, 0))
        crops.append(Window(top, left, size, size))
    return crops


def list_scenes(root: str | Path) -> list[str]:
    """The scene folders under ``root`` (those holding a ``VV_dB.tif``), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such xView3 scene folder root")
    return sorted(p.parent.name for p in root.glob("*/VV_dB.tif"))


class XView3Crops:
    """Training crops of xView3 scenes with their detections (a map-style data set).

    Item ``i`` is crop ``i % crops_per_scene`` of scene ``i // crops_per_scene``, drawn
    from a generator seeded by ``(seed, epoch, i)``: the same in every worker and run,
    different after `set_epoch`.

    Args:
        root: folder of scene folders.
        labels: the labels CSV or table.
        scene_ids: scenes to use; default every scene folder under ``root`` that has labels.
        crop_size: crop side in pixels (the paper: 4,096).
        crops_per_scene: items per scene and epoch.
        positive_fraction: expected share of crops aimed at a detection.
        bands: channels, as in `XView3Scene`.
        confidences: label confidences kept as targets.
        seed: base seed.
    """

    def __init__(
        self,
        root: str | Path,
        labels: str | Path | pd.DataFrame,
        *,
        scene_ids: Sequence[str] | None = None,
        crop_size: int = 4096,
        crops_per_scene: int = 8,
        positive_fraction: float = 0.5,
        bands: Sequence[str] = SAR_BANDS,
        confidences: Sequence[str] = ("HIGH", "MEDIUM", "LOW"),
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        table = labels if not isinstance(labels, str | Path) else read_labels(labels)
        table = table[table["confidence"].isin(list(confidences))]
        if scene_ids is None:
            present = set(table["scene_id"].astype(str))
            scene_ids = [s for s in list_scenes(self.root) if s in present]
        if not scene_ids:
            raise InputError(f"{self.root}: no labelled scene folders to crop from")
        self.scene_ids = list(scene_ids)
        self.crop_size = crop_size
        self.crops_per_scene = crops_per_scene
        self.positive_fraction = positive_fraction
        self.bands = tuple(bands)
        self.seed = seed
        self.epoch = 0
        self._labels = {s: table[table["scene_id"] == s] for s in self.scene_ids}
        self._scenes: dict[str, XView3Scene] = {}

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of crops (call at the start of every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.scene_ids) * self.crops_per_scene

    def _scene(self, scene_id: str) -> XView3Scene:
        if scene_id not in self._scenes:  # opened lazily, once per worker process
            self._scenes[scene_id] = XView3Scene(self.root / scene_id, bands=self.bands)
        return self._scenes[scene_id]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """A crop and its detections.

        Returns:
            ``image`` (C, S, S) float32 in [0, 1] (0 past the scene's border);
            ``rows``, ``cols`` (K,) float64 detection positions in crop pixels;
            ``is_vessel``, ``is_fishing`` (K,) float64, 1/0, NaN unknown;
            ``length_m`` (K,) float64, NaN unknown; ``confidence`` (K,) str;
            ``scene_id``; ``window`` the crop in scene pixels.
        """
        if not 0 <= index < len(self):
            raise IndexError(index)
        scene_id = self.scene_ids[index // self.crops_per_scene]
        scene = self._scene(scene_id)
        labels = self._labels[scene_id]
        rc = labels[["detect_scene_row", "detect_scene_column"]].to_numpy(np.float64)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        (window,) = plan_crops(
            scene.height,
            scene.width,
            rc,
            size=self.crop_size,
            count=1,
            positive_fraction=self.positive_fraction,
            margin=self.crop_size // 8,
            rng=rng,
        )
        image = read_padded(scene, window)  # (C, S, S)
        inside = (
            (rc[:, 0] >= window.top)
            & (rc[:, 0] < window.bottom)
            & (rc[:, 1] >= window.left)
            & (rc[:, 1] < window.right)
        )
        kept = labels[inside]
        return {
            "image": image,
            "rows": rc[inside, 0] - window.top,
            "cols": rc[inside, 1] - window.left,
            "is_vessel": _flag_array(kept["is_vessel"]),
            "is_fishing": _flag_array(kept["is_fishing"]),
            "length_m": kept["vessel_length_m"].to_numpy(np.float64),
            "confidence": kept["confidence"].astype(str).to_numpy(),
            "scene_id": scene_id,
            "window": window,
        }


def collate_crops(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch `XView3Crops` items: images stacked to a (B, C, S, S) tensor, the rest listed."""
    import torch

    batch: dict[str, Any] = {k: [item[k] for item in items] for k in items[0]}
    batch["image"] = torch.from_numpy(np.stack(batch["image"]))
    return batch


def _flag_array(values: pd.Series) -> np.ndarray:
    """True/False/empty label cells as 1.0/0.0/NaN."""
    mapped = values.map(lambda v: np.nan if v is None or v != v else float(v))
    return mapped.to_numpy(np.float64)


# ---------------------------------------------------------------------------- the data set


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
        _, held = holdout(len(scenes), data.val_fraction, data.seed)
        val_ids = sorted(scenes[i] for i in held)
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
        present = set(labels["scene_id"].astype(str))
        ids = scene_ids if scene_ids is not None else list_scenes(root)
        self.root, self.bands, self.shore_root = root, bands, shore
        self.scene_ids = [s for s in ids if s in present]
        self.labels = labels[labels["scene_id"].astype(str).isin(self.scene_ids)]

    def __len__(self) -> int:
        return len(self.scene_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene_id = self.scene_ids[index]
        return {
            "image": XView3Scene(Path(self.root) / scene_id, bands=self.bands),
            "scene_id": scene_id,
        }
