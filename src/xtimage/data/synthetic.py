"""Built-in synthetic large-image tasks that need both fine detail and far context.

xT (Gupta et al., "xT: Nested Tokenization for Larger Context in Large Images", ICML
2024) claims that a model which sees the whole image at full resolution beats one that
sees a crop and one that sees the image downsampled. These tasks make that claim
testable without a download: each is drawn from ``(seed, index)`` alone, at any size,
and is built so that each baseline provably lacks what it needs.

The scene: a dark background with non-overlapping *objects* (disks and rectangles) and
one or two bright disk *keys*, all filled with one of ``textures`` fine textures of
period 2 px (1-px stripes across, stripes down, a checkerboard, flat, phase-shifted
stripes). Every texture has the same mean, and every shape is a union of cells of the
2-px grid, so box-averaging by any even factor turns every texture into the same flat
grey: the downsampled image shows where the objects and keys are, never their textures.
Each key lies inside one cell of the ``region`` grid; every texture is drawn
independently and uniformly.

- ``segmentation``: mask 1 on the objects whose texture equals the key's (the key itself
  is 0). Everywhere outside the key's region the answer depends on the key.
- ``classification``: two keys in different regions; the label is
  ``(texture(key 1) + texture(key 2)) mod textures``. No one region carries any
  information about the label, so per-region predictions fused afterwards are at chance.
- ``match`` (a classification task, ``data.params: {task: match}``): one key and one
  candidate per brightness level, textured with a permutation of the textures and kept
  out of the key's region; the label is the texture of the candidate as bright as the
  key. A region alone, and the downsampled image, are blind to it; a model with context
  reads one texture at a place chosen by comparing two brightnesses.
- ``present`` (a classification task, ``data.params: {task: present}``): the objects
  are textured with half of the textures, chosen afresh for each scene, and kept out of
  the key's region; the label is 1 if the key's texture is among them. Every region
  alone, and the downsampled image, see a yes exactly half the time.
- ``locate`` (a classification task, ``data.params: {task: locate}``): one object in
  each quadrant of the image, none in the key's region; one wears the key's texture,
  the other three other textures (all different where there are four or more); the
  label is the quadrant (0 top left, 1 top right, 2 bottom left, 3 bottom right) of the
  one. A region alone, and the downsampled image, are blind to it; a pooled linear crop
  classifier (logits that are sums of per-region terms) is right on at most 5 of the 8
  layouts with two textures (docs/synthetic.md).
- ``agree`` (a classification task, ``data.params: {task: agree}``): two keys, a bright
  one and a dimmer one, and objects textured as in ``present`` (half of the textures), all
  kept out of both keys' regions; the label says which keys' textures the objects wear:
  ``2 * [bright key's] + [dim key's]`` (0 neither, 1 the dim key's only, 2 the bright
  key's only, 3 both). A region alone, and the downsampled image, are blind to it; with
  two textures a pooled linear crop classifier is right on at most 5 of the 8 layouts
  (docs/synthetic.md).
- ``detection``: boxes and centre points of the objects whose texture equals the key's.
- ``pairs`` (a segmentation task, ``data.params: {task: pairs}``): no keys; objects come
  in twins placed point-symmetrically about the image centre, each twin's texture drawn
  on its own; mask 1 on both twins when their textures are equal. Nothing marks an
  object as special on its own: every answer compares two far-apart places.

`SyntheticTask.ceilings` evaluates the optimal blind predictors; docs/synthetic.md
gives the argument and the numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from xtimage.config import DataConfig, ModelConfig
from xtimage.data.registry import DATASETS, Datasets
from xtimage.errors import ConfigError


@dataclass(frozen=True)
class _Kind:
    """What a kind of synthetic task asks of its scene.

    Attributes:
        head: the head family that answers it (``model.head``).
        classes: the number of classes, given the number of textures.
        answer: the ground truth, from `_Drawn`.
        units: what the blind predictors are scored on, as (hit, candidate, in_key)
            arrays over pixels or objects: in the answer, could be in it, inside the key's
            region; None when the answer is one label.
        score: the pooled score of their counts (..., [tp, pred, truth]); None for a label
            (the ceiling is then the commonest label's frequency).
        keys: key shapes drawn, each in its own region.
        twins: objects are placed in point-symmetric twins.
        levels: the objects are one candidate per brightness level, textured with a
            permutation of the textures; the key takes one candidate's level.
        clear: the keys' regions are kept free of objects.
        dim_second: the second key is dimmer than the first (`SECOND_KEY_MEAN`), so that
            a model can tell the two apart.
        palette: the objects' textures are drawn from ``textures // 2`` of them, chosen
            afresh for each scene and each used at least once (else from all).
        quadrants: one object per quadrant of the image, one of them in the key's
            texture, the others not (and all different where the textures allow).
        turnable: a flip or a 90-degree turn keeps the answer (a label that names a
            texture does not: a turn makes stripes across into stripes down).
    """

    head: str
    classes: Callable[[int], int]
    answer: Callable[[_Drawn], dict[str, Any]]
    units: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
    score: Callable[[np.ndarray], np.ndarray] | None = None
    keys: int = 1
    twins: bool = False
    levels: bool = False
    clear: bool = False
    dim_second: bool = False
    palette: bool = False
    quadrants: bool = False
    turnable: bool = True


@dataclass(frozen=True)
class _Drawn:
    """A rendered scene, for the answers: its objects' textures and the keys'."""

    scene: _Scene
    ids: np.ndarray  # (H, W) shape id, 0 on the background (see `SyntheticTask._draw`)
    texture_of: np.ndarray  # (1 + shapes,) texture by shape id, -1 for the background
    is_object: np.ndarray  # (H, W) bool
    tex: np.ndarray  # (H, W) texture of every pixel, -1 on the background
    textures: int

    @property
    def key_textures(self) -> np.ndarray:
        return self.texture_of[1 : 1 + len(self.scene.keys)]

    @property
    def object_textures(self) -> np.ndarray:
        return self.texture_of[1 + len(self.scene.keys) :]


def _mask_answer(d: _Drawn) -> dict[str, Any]:
    """Objects whose texture is the key's."""
    return {"mask": (d.is_object & (d.tex == d.key_textures[0])).astype(np.int64)}


def _twin_hits(texture_of: np.ndarray) -> np.ndarray:
    """Per object of a keyless scene (objects 2i and 2i + 1 twins): textures equal."""
    objects = texture_of[1:]
    return objects == objects[np.arange(len(objects)) ^ 1]


def _pairs_answer(d: _Drawn) -> dict[str, Any]:
    """Both twins where their textures are equal."""
    hit = np.concatenate([[False], _twin_hits(d.texture_of)])  # by shape id
    return {"mask": hit[d.ids].astype(np.int64)}


def _label_answer(d: _Drawn) -> dict[str, Any]:
    """The sum of the two keys' textures, modulo the number of textures."""
    return {"label": int(d.key_textures.sum() % d.textures)}


def _match_answer(d: _Drawn) -> dict[str, Any]:
    """The texture of the candidate as bright as the key."""
    (key,), objects = d.scene.keys, d.scene.objects
    target = next(i for i, o in enumerate(objects) if o.mean == key.mean)
    return {"label": int(d.object_textures[target])}  # as drawn


def _present_answer(d: _Drawn) -> dict[str, Any]:
    """1 if some object has the key's texture, else 0."""
    return {"label": int(d.key_textures[0] in d.object_textures)}


def _agree_answer(d: _Drawn) -> dict[str, Any]:
    """Which keys' textures the objects wear: 2 x [the bright key's] + [the dim key's]."""
    objects = d.object_textures
    bright, dim = (int(t in objects) for t in d.key_textures)
    return {"label": 2 * bright + dim}


def _locate_answer(d: _Drawn) -> dict[str, Any]:
    """The quadrant of the one object that wears the key's texture."""
    (target,) = np.flatnonzero(d.object_textures == d.key_textures[0])
    return {"label": int(target)}  # objects are drawn in quadrant order


def _box_answer(d: _Drawn) -> dict[str, Any]:
    """Boxes and centres of the objects whose texture is the key's."""
    objects = d.scene.objects
    boxes = [
        (2 * s.left, 2 * s.top, 2 * (s.left + s.cells.shape[1]), 2 * (s.top + s.cells.shape[0]))
        for s, t in zip(objects, d.object_textures, strict=True)
        if t == d.key_textures[0]
    ]
    boxes = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    points = np.stack([boxes[:, [0, 2]].mean(1), boxes[:, [1, 3]].mean(1)], axis=1)
    return {"boxes": boxes, "points": points}


def _key_region(task: SyntheticTask, scene: _Scene) -> tuple[int, int]:
    """(row, column) of the first key's region cell."""
    return divmod(scene.key_cells[0], task.grid[1])


def _pixel_units(task: SyntheticTask, scene: _Scene, ids: np.ndarray, sample: Sample) -> tuple:
    """Pixels: the mask, the objects' pixels, the key region's pixels."""
    target = sample.mask.astype(bool)
    row, col = _key_region(task, scene)
    r = task.region
    in_key = np.zeros_like(target)
    in_key[row * r : (row + 1) * r, col * r : (col + 1) * r] = True
    return target, ids > len(scene.keys), in_key


def _pairs_units(task: SyntheticTask, scene: _Scene, ids: np.ndarray, sample: Sample) -> tuple:
    """Pixels: the mask, the objects' pixels, those whose twin is in their own region."""
    r = task.region
    cell = [((2 * o.top + o.cells.shape[0]) // r, (2 * o.left + o.cells.shape[1]) // r)
            for o in scene.objects]  # fmt: skip
    near = np.array([False] + [cell[i] == cell[i ^ 1] for i in range(len(cell))])
    return sample.mask.astype(bool), ids > 0, near[ids]


def _object_units(task: SyntheticTask, scene: _Scene, ids: np.ndarray, sample: Sample) -> tuple:
    """Objects, each counted once at the region of its centre."""
    key_texture, r = scene.keys[0].texture, task.region
    centres = [(2 * s.top + s.cells.shape[0], 2 * s.left + s.cells.shape[1]) for s in scene.objects]
    hit = np.array([s.texture == key_texture for s in scene.objects], dtype=bool)
    key = _key_region(task, scene)
    in_key = np.array([(y // r, x // r) == key for y, x in centres], dtype=bool)
    return hit, np.ones_like(hit), in_key


def _iou(counts: np.ndarray) -> np.ndarray:
    return counts[..., 0] / np.maximum(counts[..., 1] + counts[..., 2] - counts[..., 0], 1)


def _f1(counts: np.ndarray) -> np.ndarray:
    return 2 * counts[..., 0] / np.maximum(counts[..., 1] + counts[..., 2], 1)


KINDS: dict[str, _Kind] = {
    "segmentation": _Kind("segmentation", lambda t: 2, _mask_answer, _pixel_units, _iou),
    "pairs": _Kind("segmentation", lambda t: 2, _pairs_answer, _pairs_units, _iou, keys=0,
                   twins=True),
    "classification": _Kind("classification", lambda t: t, _label_answer, keys=2,
                            turnable=False),
    "match": _Kind("classification", lambda t: t, _match_answer, levels=True, clear=True,
                   turnable=False),
    "present": _Kind("classification", lambda t: 2, _present_answer, clear=True, palette=True),
    "agree": _Kind("classification", lambda t: 4, _agree_answer, keys=2, clear=True,
                   dim_second=True, palette=True),
    "locate": _Kind("classification", lambda t: QUADRANTS, _locate_answer, clear=True,
                    quadrants=True, turnable=False),
    "detection": _Kind("detection", lambda t: 1, _box_answer, _object_units, _f1),
}  # fmt: skip

# Period-2 textures on the absolute pixel grid: the fraction of full contrast per pixel.
_PATTERNS = (
    lambda y, x: (y % 2 == 0) * 1.0,  # stripes across
    lambda y, x: (x % 2 == 0) * 1.0,  # stripes down
    lambda y, x: ((y + x) % 2 == 0) * 1.0,  # checkerboard
    lambda y, x: np.full(y.shape, 0.5),  # flat: the texture's mean, no contrast
    lambda y, x: (y % 2 == 1) * 1.0,  # phase-shifted copies of the first two
    lambda y, x: (x % 2 == 1) * 1.0,
)

QUADRANTS = 4  # the locate task's classes
BACKGROUND = 0.1
OBJECT_MEAN = 0.45
KEY_MEAN = 0.75  # keys are brighter than objects: easy to find even when downsampled
SECOND_KEY_MEAN = 0.6  # the agree task's dim key: between the bright key and the objects
CONTRAST = 0.25  # textures swing by -/+ CONTRAST around their mean
LEVELS = (0.3, 0.65)  # the match task's brightness levels span this (no texture clips)


def _levels(textures: int) -> np.ndarray:
    """The match task's brightness levels, one per texture."""
    return np.linspace(*LEVELS, textures)


@dataclass(frozen=True)
class Sample:
    """One synthetic image and its ground truth.

    Attributes:
        image: (C, H, W) float32 in [0, 1].
        mask: (H, W) int64 segmentation target, or None.
        label: class index, or None.
        boxes: (n, 4) float32 boxes ``(x0, y0, x1, y1)``, end exclusive, or None.
        points: (n, 2) float32 box centres ``(x, y)``, or None.
        texture: (H, W) int64 texture of every pixel, 0 on the background and
            ``1 + texture index`` on objects and keys; an auxiliary target.
    """

    image: np.ndarray
    mask: np.ndarray | None = None
    label: int | None = None
    boxes: np.ndarray | None = None
    points: np.ndarray | None = None
    texture: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Shape:
    """A shape on the half-resolution (2-px) grid: its cells and its texture."""

    top: int  # half-res cell coordinates of the bounding box
    left: int
    cells: np.ndarray  # (h, w) bool
    texture: int
    mean: float  # the brightness its texture swings around


@dataclass(frozen=True)
class _Scene:
    keys: list[_Shape]
    key_cells: list[int]  # region-cell index of each key
    objects: list[_Shape]


def _disk(radius: float) -> np.ndarray:
    """A filled disk of 2-px cells, cropped to its bounding box."""
    n = 2 * math.ceil(radius)
    c = (n - 1) / 2
    y, x = np.mgrid[:n, :n]
    disk = (y - c) ** 2 + (x - c) ** 2 <= radius**2
    rows, cols = np.flatnonzero(disk.any(1)), np.flatnonzero(disk.any(0))
    return disk[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


class SyntheticTask(torch.utils.data.Dataset):
    """A synthetic task of images that need fine detail and far context.

    ``sample(index)`` depends only on ``(seed, index)``.

    Args:
        kind: "segmentation", "pairs", "classification", "match", "present", "agree",
            "locate" or "detection".
        size: image side, or (height, width), in pixels.
        region: region side of the xT model the task is designed for; keys lie inside
            one cell of this grid and object sizes scale with it.
        channels: image channels (all equal).
        seed: the task's seed.
        length: number of samples (``len``).
        textures: number of texture kinds, 2 to 6.
        objects: objects per image; default 1.25 per region cell.
        radius: (min, max) object half-size as a fraction of ``region``.
        noise: standard deviation of the Gaussian pixel noise.
    """

    def __init__(
        self,
        kind: str = "segmentation",
        *,
        size: int | tuple[int, int] = 512,
        region: int = 128,
        channels: int = 3,
        seed: int = 0,
        length: int = 1000,
        textures: int = 4,
        objects: int | None = None,
        radius: tuple[float, float] = (0.1, 0.2),
        noise: float = 0.03,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown synthetic task kind '{kind}'; known: {', '.join(KINDS)}")
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if min(height, width, region, channels, length) <= 0:
            raise ConfigError(
                f"size {size}, region {region}, channels {channels} and length {length} "
                "must be positive"
            )
        if region % 2:
            raise ConfigError(f"region must be even (shapes lie on a 2-px grid), got {region}")
        if not 2 <= textures <= len(_PATTERNS):
            raise ConfigError(f"textures must be 2 to {len(_PATTERNS)}, got {textures}")
        if not 0 < radius[0] <= radius[1] < 0.5:
            raise ConfigError(f"radius must be 0 < min <= max < 0.5 (of region), got {radius}")
        if KINDS[kind].levels and objects is not None:
            raise ConfigError(
                f"the match task draws one candidate per texture ({textures}); objects "
                f"({objects}) does not apply: leave it out"
            )
        if KINDS[kind].quadrants and objects is not None:
            raise ConfigError(
                f"the locate task draws one object per quadrant; objects ({objects}) does "
                f"not apply: leave it out"
            )
        self.grid = (height // region, width // region)  # complete region cells
        keys = KINDS[kind].keys
        if self.grid[0] * self.grid[1] < keys:
            raise ConfigError(
                f"a {kind} task needs {keys} complete {region} px region(s) in the image, "
                f"but {height} x {width} holds {self.grid[0] * self.grid[1]}; "
                "use a larger size or a smaller region"
            )
        self.kind, self.spec, self.height, self.width = kind, KINDS[kind], height, width
        self.region, self.channels, self.seed, self.length = region, channels, seed, length
        self.textures, self.radius, self.noise = textures, radius, noise
        self.objects = (
            objects if objects is not None else math.ceil(1.25 * height * width / region**2)
        )
        self.num_classes = self.spec.classes(textures)

    def __len__(self) -> int:
        return self.length

    # --- scene layout ---------------------------------------------------------------

    def _scene(self, index: int) -> _Scene:
        rng = np.random.default_rng([self.seed, index])
        half_h, half_w = self.height // 2, self.width // 2  # the 2-px grid
        taken = np.zeros((half_h, half_w), dtype=bool)
        cells = rng.permutation(self.grid[0] * self.grid[1])
        levels = _levels(self.textures)
        match = self.spec.levels
        key_mean = float(levels[rng.integers(self.textures)]) if match else KEY_MEAN
        keys, key_cells = [], []
        for cell in cells[: self.spec.keys]:
            cells_hw = _disk(0.3 * self.region / 2)  # radius 0.3 region, in 2-px cells
            n = cells_hw.shape[0]
            row, col = divmod(int(cell), self.grid[1])
            span = self.region // 2 - n
            top = row * self.region // 2 + int(rng.integers(0, span + 1))
            left = col * self.region // 2 + int(rng.integers(0, span + 1))
            texture = int(rng.integers(self.textures))
            mean = SECOND_KEY_MEAN if self.spec.dim_second and keys else key_mean
            keys.append(_Shape(top, left, cells_hw, texture, mean))
            key_cells.append(int(cell))
            taken[top : top + n, left : left + n] |= cells_hw
        if self.spec.clear:  # the keys' regions are kept free of objects
            r = self.region // 2
            for cell in key_cells:
                row, col = divmod(cell, self.grid[1])
                taken[row * r : (row + 1) * r, col * r : (col + 1) * r] = True
        if match or self.spec.palette:
            # match: candidate i has level i and texture order[i]; present: the objects
            # take the first textures // 2 of the order (each once), then any of them
            order = rng.permutation(self.textures)
        quadrants = self.spec.quadrants
        if quadrants:  # quadrant q's object wears order[q]; the key's texture exactly once
            others = np.delete(np.arange(self.textures), keys[0].texture)
            others = rng.choice(others, QUADRANTS - 1, replace=len(others) < QUADRANTS - 1)
            order = np.insert(others, rng.integers(QUADRANTS), keys[0].texture)
        wanted = self.objects - self.spec.twins
        wanted = self.textures if match else QUADRANTS if quadrants else wanted
        objects = []
        lo, hi = (r * self.region / 2 for r in self.radius)
        for _ in range(20 * max(self.objects, wanted)):
            if len(objects) >= wanted:
                break
            if rng.random() < 0.5:
                cells_hw = _disk(rng.uniform(lo, hi))
            else:
                h, w = (2 * round(rng.uniform(lo, hi)) for _ in range(2))
                cells_hw = np.ones((max(h, 1), max(w, 1)), dtype=bool)
            h, w = cells_hw.shape
            if h + 2 > half_h or w + 2 > half_w:
                continue
            if quadrants:  # inside quadrant len(objects), a cell clear of its edges
                row, col = divmod(len(objects), 2)
                qh, qw = half_h // 2, half_w // 2
                if h + 2 > qh or w + 2 > qw:
                    continue
                top = row * qh + int(rng.integers(1, qh - h))
                left = col * qw + int(rng.integers(1, qw - w))
            else:
                top, left = int(rng.integers(1, half_h - h)), int(rng.integers(1, half_w - w))
            if match:
                texture, mean = int(order[len(objects)]), float(levels[len(objects)])
            elif quadrants:
                texture, mean = int(order[len(objects)]), OBJECT_MEAN
            elif self.spec.palette:
                n = self.textures // 2
                i = len(objects) if len(objects) < n else int(rng.integers(n))
                texture, mean = int(order[i]), OBJECT_MEAN
            else:
                texture, mean = int(rng.integers(self.textures)), OBJECT_MEAN
            shapes = [_Shape(top, left, cells_hw, texture, mean)]
            if self.spec.twins:  # the point-symmetric twin, its texture drawn on its own
                twin = cells_hw[::-1, ::-1]
                texture = int(rng.integers(self.textures))
                shapes.append(_Shape(half_h - top - h, half_w - left - w, twin, texture, mean))
            if not _place(taken, shapes):
                continue
            objects += shapes
        least = wanted if match or quadrants else self.textures // 2 if self.spec.palette else 0
        if len(objects) < least:  # else the label would be wrong (match) or leak (present)
            raise ConfigError(
                f"the {self.kind} task needs {least} objects outside the key's region but "
                f"could place {len(objects)} in a {self.height} x {self.width} image (sample "
                f"{index}); use a larger size or a smaller region"
            )
        return _Scene(keys, key_cells, objects)

    def _draw(self, scene: _Scene) -> np.ndarray:
        """Per-pixel shape id (0 background, 1.. keys then objects), (H, W) int64."""
        ids = np.zeros((self.height, self.width), dtype=np.int64)
        for i, s in enumerate(scene.keys + scene.objects, start=1):
            full = np.kron(s.cells, np.ones((2, 2), dtype=bool))  # 2-px cells -> pixels
            h, w = full.shape
            ids[2 * s.top : 2 * s.top + h, 2 * s.left : 2 * s.left + w][full] = i
        return ids

    # --- samples ----------------------------------------------------------------------

    def sample(self, index: int, permutation: np.ndarray | None = None) -> Sample:
        """The sample at ``index``.

        Args:
            index: any integer; samples past ``len`` exist too.
            permutation: optional relabelling of the textures (texture t is drawn as
                ``permutation[t]``), for tests that the ground truth and the
                downsampled image do or do not change.
        """
        return self._render(index, permutation)[2]

    def _render(
        self, index: int, permutation: np.ndarray | None = None
    ) -> tuple[_Scene, np.ndarray, Sample]:
        """The scene, its shape-id map (see `_draw`) and the sample."""
        scene = self._scene(index)
        shapes = scene.keys + scene.objects
        ids = self._draw(scene)
        texture_of = np.array([-1] + [s.texture for s in shapes])  # by shape id
        if permutation is not None:
            texture_of[1:] = np.asarray(permutation)[texture_of[1:]]
        tex = texture_of[ids]  # (H, W), -1 on the background
        y, x = np.mgrid[: self.height, : self.width]
        bright = np.zeros((self.height, self.width))
        for t in range(self.textures):
            bright = np.where(tex == t, _PATTERNS[t](y, x), bright)
        mean = np.array([BACKGROUND] + [s.mean for s in shapes])[ids]
        value = np.where(tex >= 0, mean + CONTRAST * (2 * bright - 1), BACKGROUND)
        rng = np.random.default_rng([self.seed, index, 1])
        value = value + self.noise * rng.standard_normal(value.shape)
        image = np.repeat(np.clip(value, 0, 1)[None].astype(np.float32), self.channels, 0)
        texture = (tex + 1).astype(np.int64)

        drawn = _Drawn(scene, ids, texture_of, ids > len(scene.keys), tex, self.textures)
        return scene, ids, Sample(image, texture=texture, **self.spec.answer(drawn))

    def texture_layout(self, index: int) -> tuple[list[int], np.ndarray]:
        """What a sample is made of, for diagnosing a model's errors by texture.

        Returns:
            The keys' textures, and the (H, W) int64 texture of every object pixel, -1 on
            the keys and the background.
        """
        scene, ids, sample = self._render(index)
        on_objects = np.where(ids > len(scene.keys), sample.texture - 1, -1)
        return [k.texture for k in scene.keys], on_objects

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} outside a task of {self.length} samples")
        s = self.sample(index)
        out = {"image": torch.from_numpy(s.image), "texture": torch.from_numpy(s.texture)}
        if s.mask is not None:
            out["mask"] = torch.from_numpy(s.mask)
        if s.label is not None:
            out["label"] = torch.tensor(s.label)
        if s.boxes is not None:
            out["boxes"] = torch.from_numpy(s.boxes)
            out["labels"] = torch.zeros(len(s.boxes), dtype=torch.long)  # one class: 0
            out["points"] = torch.from_numpy(s.points)
        return out

    # --- ceilings ---------------------------------------------------------------------

    def ceilings(self, n: int = 200) -> dict[str, float]:
        """Best scores of a crop-only and a downsample predictor, over samples ``0..n-1``.

        Each is the score of the optimal *blind* predictor: one that knows everything
        the baseline can see, and nothing else. Scores are pooled over the ``n``
        samples: foreground IoU (segmentation), top-1 accuracy (classification), point
        F1 (detection, an object counted once at the region of its centre). See
        docs/synthetic.md for why these predictors are optimal.

        Returns:
            ``{"crop": ..., "downsample": ...}``.
        """
        if (self.height / self.region) % 2 or (self.width / self.region) % 2:
            warnings.warn(
                f"image {self.height} x {self.width} over region {self.region} is not an "
                "even downsample factor: the downsampled image keeps a trace of the textures "
                "and the downsample ceiling is a lower bound",
                stacklevel=2,
            )
        if self.spec.score is None:  # a label: the blind predictors guess the commonest
            labels = np.array([self.sample(i).label for i in range(n)])
            best = np.bincount(labels, minlength=self.textures).max() / n
            return {"crop": float(best), "downsample": float(best)}
        counts = np.zeros((2, 2, 3))  # (predictor, choice, [tp/inter, pred, truth])
        for i in range(n):
            self._tally(i, counts)
        score = self.spec.score(counts)
        return {"crop": float(score[0].max()), "downsample": float(score[1].max())}

    def _tally(self, index: int, counts: np.ndarray) -> None:
        """Add one sample's counts for the blind predictors' two choices each.

        Choice 0 predicts only what is certain (the key region for crop, nothing for
        downsample); choice 1 also predicts every object whose texture it cannot see.
        """
        scene, ids, sample = self._render(index)
        hit, candidate, in_key = self.spec.units(self, scene, ids, sample)
        truth = hit.sum()
        certain = hit & in_key
        guess = certain | (candidate & ~in_key)
        for j, pred in enumerate((certain, guess)):
            counts[0, j] += ((pred & hit).sum(), pred.sum(), truth)
        counts[1, 1] += (truth, candidate.sum(), truth)
        counts[1, 0, 2] += truth


def _place(taken: np.ndarray, shapes: list[_Shape]) -> bool:
    """Mark ``shapes`` in ``taken`` if each keeps a gap of one 2-px cell from every
    shape already there and from each other; False (``taken`` unchanged) otherwise."""
    trial = taken.copy()
    for s in shapes:
        h, w = s.cells.shape
        if (trial[s.top - 1 : s.top + h + 1, s.left - 1 : s.left + w + 1] & _grow(s.cells)).any():
            return False
        trial[s.top : s.top + h, s.left : s.left + w] |= s.cells
    taken[:] = trial
    return True


def _grow(cells: np.ndarray) -> np.ndarray:
    """The cells and their 8 neighbours, padded by one cell: (h, w) -> (h + 2, w + 2)."""
    h, w = cells.shape
    out = np.zeros((h + 2, w + 2), dtype=bool)
    for dy in range(3):
        for dx in range(3):
            out[dy : dy + h, dx : dx + w] |= cells
    return out


@DATASETS.register("synthetic")
def synthetic(model: ModelConfig, data: DataConfig) -> Datasets:
    """The built-in task of ``model.head``'s kind, or ``data.params.task`` (``pairs``)."""
    params = dict(data.params)
    kind = params.pop("task", model.head)
    if kind not in KINDS or KINDS[kind].head != model.head:
        fits = [k for k, v in KINDS.items() if v.head == model.head]
        raise ConfigError(
            f"data.params.task '{kind}' is not a synthetic task for model.head="
            f"{model.head}; use one of {fits}"
        )
    common = dict(
        kind=kind, size=data.size, region=model.region, channels=model.in_chans, **params
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
    return Datasets(train, val, turns_keep_labels=train.spec.turnable)
