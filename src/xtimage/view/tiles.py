"""Deep-zoom tiles made on the fly from a reader: the picture under `xt view`.

A layer of W x H pixels has levels ``0 .. top`` with ``top = ceil(log2(max(W, H)))``;
level ``l`` shows the image shrunk by ``scale = 2**(top - l)``, ``ceil(W / scale)`` x
``ceil(H / scale)`` pixels cut into ``tile`` x ``tile`` tiles without overlap (the Deep
Zoom convention OpenSeadragon asks for). Tile (col, row) of level ``l`` covers level-0
pixels ``[row * tile * scale, (row + 1) * tile * scale)`` (likewise for columns), read
from the coarsest pyramid level of the file that is at least as fine as ``scale`` and
resized to the tile (box filter for pictures, nearest for class maps). A file without
such a level would have to be read whole for a far-out view: past `MAX_READ` pixels the
tile is drawn grey and the user zooms in (xt predict's outputs, COGs and slides have
pyramids).

Each layer turns pixels into RGBA: `ImageLayer` (the input: 8-bit as is, other types
stretched between percentiles of a coarse level), `MaskLayer` (a class map: class 0 and
nodata transparent, others a palette colour), `HeatLayer` (a probability map: colour and
opacity rise with the value, NaN transparent), `BoxLayer` (xt predict's boxes CSV drawn
as outlines).
"""

from __future__ import annotations

import csv
import io
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from xtimage.errors import InputError
from xtimage.io.base import Reader, read_padded
from xtimage.window import Window

MAX_READ = 4096 * 4096  # pixels read for one tile at most
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                    [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230]],
                   np.uint8)  # class colours (0 unused: transparent)  # fmt: skip
HEAT = np.array([[0, 0, 4], [120, 28, 109], [237, 105, 37], [252, 255, 164]], np.float32)


class Layer:
    """Tiles of one picture: geometry and `tile_png`; subclasses say how pixels look."""

    kind = "image"
    nearest = False  # resampling: nearest (class maps) or a box filter

    def __init__(self, name: str, height: int, width: int, tile: int = 256) -> None:
        self.name, self.height, self.width, self.tile = name, height, width, tile
        self.top = max(0, math.ceil(math.log2(max(height, width))))
        self._png = lru_cache(maxsize=512)(self._render)

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "width": self.width,
                "height": self.height, "tile": self.tile, "maxLevel": self.top}  # fmt: skip

    def level_size(self, level: int) -> tuple[int, int]:
        """(height, width) of a deep-zoom level."""
        scale = 2 ** (self.top - level)
        return math.ceil(self.height / scale), math.ceil(self.width / scale)

    def tile_window(self, level: int, col: int, row: int) -> tuple[Window, int]:
        """The level-0 window tile (col, row) of ``level`` covers, clipped to the image,
        and the scale (level-0 pixels per tile pixel)."""
        if not 0 <= level <= self.top:
            raise InputError(f"level {level} is not in 0..{self.top}")
        scale = 2 ** (self.top - level)
        h, w = self.level_size(level)
        if not (0 <= col * self.tile < w and 0 <= row * self.tile < h):
            raise InputError(f"tile {col}_{row} is not in level {level}")
        side = self.tile * scale
        window = Window(row * side, col * side, side, side)
        inside = window.intersect(Window(0, 0, self.height, self.width))
        assert inside is not None
        return inside, scale

    def tile_png(self, level: int, col: int, row: int) -> bytes:
        """Tile (col, row) of ``level`` as PNG bytes (cached)."""
        return self._png(level, col, row)

    def _render(self, level: int, col: int, row: int) -> bytes:
        from PIL import Image

        window, scale = self.tile_window(level, col, row)
        size = (math.ceil(window.width / scale), math.ceil(window.height / scale))  # (w, h)
        rgba = self.rgba(window, scale, size)
        buffer = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def rgba(self, window: Window, scale: int, size: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError


class ReaderLayer(Layer):
    """A layer whose pixels come from a `Reader`, read at the best pyramid level."""

    def __init__(self, name: str, reader: Reader, tile: int = 256) -> None:
        super().__init__(name, reader.height, reader.width, tile)
        self.reader = reader

    def pixels(self, window: Window, scale: int, size: tuple[int, int]) -> np.ndarray | None:
        """(C, h, w) pixels of level-0 ``window`` at ``size`` (w, h); None when the file has
        no level coarse enough to read it within `MAX_READ`."""
        from PIL import Image

        fine = [k for k, lv in enumerate(self.reader.levels) if lv.downsample <= scale]
        level = max(fine, key=lambda k: self.reader.levels[k].downsample, default=0)
        lv = self.reader.levels[level]
        d = lv.downsample
        top, left = int(window.top / d), int(window.left / d)
        bottom = min(lv.height, max(top + 1, math.ceil(window.bottom / d)))
        right = min(lv.width, max(left + 1, math.ceil(window.right / d)))
        if (bottom - top) * (right - left) > MAX_READ:
            return None
        data = read_padded(self.reader, Window(top, left, bottom - top, right - left), level)
        if data.shape[1:] == (size[1], size[0]):
            return data
        method = Image.Resampling.NEAREST if self.nearest else Image.Resampling.BOX
        bands = [np.asarray(Image.fromarray(np.ascontiguousarray(band)).resize(size, method))
                 for band in data.astype(np.float32)]  # fmt: skip
        return np.stack(bands).astype(data.dtype if self.nearest else np.float32)

    def rgba(self, window: Window, scale: int, size: tuple[int, int]) -> np.ndarray:
        data = self.pixels(window, scale, size)
        if data is None:  # no pyramid level coarse enough: grey, zoom in
            out = np.full((size[1], size[0], 4), 128, np.uint8)
            out[..., 3] = 255 if self.kind == "image" else 0
            return out
        return self.colour(data)

    def colour(self, data: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class ImageLayer(ReaderLayer):
    """The input image: RGB from its first three bands (or grey from the first)."""

    def __init__(self, name: str, reader: Reader, tile: int = 256) -> None:
        super().__init__(name, reader, tile)
        self.low, self.high = 0.0, 255.0
        if reader.dtype != np.uint8:
            coarse = len(reader.levels) - 1
            lv = reader.levels[coarse]
            step = max(1, math.ceil(max(lv.height, lv.width) / 1024))
            h, w = min(lv.height, 1024 * step), min(lv.width, 1024 * step)
            sample = reader.read_region(Window(0, 0, h, w), coarse)[:, ::step, ::step]
            values = sample[: min(3, reader.channels)].astype(np.float64)
            ok = np.isfinite(values)
            if reader.nodata is not None:
                ok &= values != reader.nodata
            if ok.any():
                self.low, self.high = np.percentile(values[ok], [1, 99])
            self.high = max(self.high, self.low + 1e-6)

    def colour(self, data: np.ndarray) -> np.ndarray:
        bands = data[:3] if data.shape[0] >= 3 else np.repeat(data[:1], 3, axis=0)
        scaled = (bands.astype(np.float32) - self.low) / (self.high - self.low) * 255
        rgb = np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
        if self.reader.nodata is not None:
            alpha[(data == self.reader.nodata).all(axis=0)] = 0
        return np.concatenate([rgb, alpha], axis=-1)


class MaskLayer(ReaderLayer):
    """A class map: class 0 and the file's nodata transparent, class k a palette colour."""

    kind = "mask"
    nearest = True

    def colour(self, data: np.ndarray) -> np.ndarray:
        classes = data[0].astype(np.int64)
        nodata = self.reader.nodata
        out = np.zeros(classes.shape + (4,), np.uint8)
        shown = classes > 0
        if nodata is not None:
            shown &= classes != nodata
        out[..., :3] = PALETTE[1 + (classes - 1) % (len(PALETTE) - 1)]
        out[..., 3] = np.where(shown, 255, 0)
        return out


class HeatLayer(ReaderLayer):
    """A probability map in [0, 1]: colour (magma-like) and opacity rise with the value."""

    kind = "heatmap"

    def colour(self, data: np.ndarray) -> np.ndarray:
        value = np.nan_to_num(np.clip(data[0].astype(np.float32), 0, 1), nan=0.0)
        position = value * (len(HEAT) - 1)
        low = np.minimum(position.astype(int), len(HEAT) - 2)
        t = (position - low)[..., None]
        rgb = HEAT[low] * (1 - t) + HEAT[low + 1] * t
        alpha = np.where(np.isnan(data[0]), 0, value * 255)
        return np.concatenate([rgb, alpha[..., None]], axis=-1).astype(np.uint8)


class BoxLayer(Layer):
    """xt predict's ``NAME.boxes.csv``: each box outlined (a point as a small cross)."""

    kind = "boxes"

    def __init__(self, name: str, path: Path, height: int, width: int, tile: int = 256):
        super().__init__(name, height, width, tile)
        boxes = []
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    if row.get("top"):
                        boxes.append([float(row[k]) for k in ("top", "left", "bottom", "right")])
                    else:
                        r, c = float(row["row"]), float(row["col"])
                        boxes.append([r - 4, c - 4, r + 4, c + 4])
                except (KeyError, ValueError) as exc:
                    raise InputError(f"{path}: not a boxes CSV of xt predict ({exc})") from exc
        self.boxes = np.array(boxes, np.float64).reshape(-1, 4)

    def rgba(self, window: Window, scale: int, size: tuple[int, int]) -> np.ndarray:
        from PIL import Image, ImageDraw

        image = Image.new("RGBA", size, (0, 0, 0, 0))
        b = self.boxes
        hit = (b[:, 2] > window.top) & (b[:, 0] < window.bottom)
        hit &= (b[:, 3] > window.left) & (b[:, 1] < window.right)
        draw = ImageDraw.Draw(image)
        for top, left, bottom, right in b[hit]:
            x0, y0 = (left - window.left) / scale, (top - window.top) / scale
            x1 = max(x0, (right - window.left) / scale - 1)
            y1 = max(y0, (bottom - window.top) / scale - 1)
            draw.rectangle([x0, y0, x1, y1], outline=(255, 255, 0, 255), width=2)
        return np.asarray(image)
