"""Training windows and plan-level augmentation.

Images too large to train on whole are trained on random windows of a fixed size. The
sampler only *plans* windows (image index and `Window`); the data set reads them, so a
window past the border is served padded by `xtimage.io.read_padded` (torchgeo's split of
samplers and readers). Augmentation acts on a whole window before it is cut into regions
(the xT setting of Gupta et al., ICML 2024): a flip or a 90-degree turn is the same for
every region, and photometric jitter is one draw per image, so the context encoder sees
a consistent scene.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from xtimage.errors import ConfigError
from xtimage.window import Window


class RandomWindowSampler:
    """Random windows of a fixed size over a set of images, planned, never read.

    An image is chosen with probability proportional to its area, so every pixel is
    equally likely to be trained on; the window's position is uniform among those that
    lie inside the image. An image smaller than the window along an axis gets a window
    that covers it whole at a random offset, the rest to be padded.

    Args:
        image_sizes: (height, width) of every image.
        window: window side, or (height, width).
        n: windows per epoch.
        seed: base seed; the windows depend on (seed, epoch) only.
    """

    def __init__(
        self,
        image_sizes: Sequence[tuple[int, int]],
        window: int | tuple[int, int],
        n: int,
        seed: int = 0,
    ) -> None:
        self.window = (window, window) if isinstance(window, int) else tuple(window)
        if min(self.window) <= 0 or n <= 0:
            raise ConfigError(f"window {window} and n {n} must be positive")
        if not image_sizes or min(min(s) for s in image_sizes) <= 0:
            raise ConfigError(f"need at least one non-empty image size, got {image_sizes!r}")
        self.image_sizes = [tuple(int(v) for v in s) for s in image_sizes]
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of windows for ``epoch`` (call it every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, Window]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        areas = np.array([h * w for h, w in self.image_sizes], dtype=np.float64)
        images = rng.choice(len(areas), size=self.n, p=areas / areas.sum())
        wh, ww = self.window
        for i in images:
            h, w = self.image_sizes[i]
            top = int(rng.integers(min(0, h - wh), max(0, h - wh) + 1))
            left = int(rng.integers(min(0, w - ww), max(0, w - ww) + 1))
            yield int(i), Window(top, left, wh, ww)


class WindowSource(Protocol):
    """A data set that serves windows of its images (e.g. `FolderDataset`)."""

    image_sizes: list[tuple[int, int]]

    def read(self, index: int, window: Window) -> dict[str, torch.Tensor]: ...


class WindowDataset(torch.utils.data.Dataset):
    """Random windows of some images of a source, planned per epoch: a training set.

    Keys are ``(image index, Window)`` pairs; `plan` gives an epoch's keys in order and
    depends on (seed, epoch) only, so the trainer can shard, resume and augment them
    reproducibly (it augments each key by its position in the epoch). A window past an
    image's border is served padded by the source.

    Args:
        source: serves ``read(index, window)`` and ``image_sizes``.
        window: window side, or (height, width).
        n: windows per epoch.
        seed: seed of the plan.
        indices: the source's images to sample from (default: all).
    """

    def __init__(
        self,
        source: WindowSource,
        window: int | tuple[int, int],
        n: int,
        seed: int = 0,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.source = source
        self.indices = list(range(len(source.image_sizes))) if indices is None else list(indices)
        sizes = [source.image_sizes[i] for i in self.indices]
        self.sampler = RandomWindowSampler(sizes, window, n, seed=seed)

    def __len__(self) -> int:
        return len(self.sampler)

    def plan(self, epoch: int) -> list[tuple[int, Window]]:
        """The epoch's keys, in order."""
        self.sampler.set_epoch(epoch)
        return [(self.indices[i], window) for i, window in self.sampler]

    def __getitem__(self, key: tuple[int, Window]) -> dict[str, torch.Tensor]:
        index, window = key
        return self.source.read(index, window)


class Augment:
    """Flips, 90-degree turns and photometric jitter of a whole window sample.

    The geometric part moves ``image`` (C, H, W), ``mask`` (H, W), ``boxes`` (n, 4) as
    ``(x0, y0, x1, y1)`` and ``points`` (n, 2) as ``(x, y)`` together; coordinates are
    continuous pixel coordinates (pixel (r, c) spans ``[c, c + 1) x [r, r + 1)``). The
    photometric part scales the contrast by ``1 + a`` about the image mean and adds
    ``b * std``, with ``a, b`` uniform in ``[-jitter, jitter]``, one draw per image.

    Args:
        flip: random horizontal and vertical flips.
        rot90: random turns by a multiple of 90 degrees (height and width may swap).
        jitter: strength of the photometric jitter; 0 turns it off.
    """

    def __init__(self, *, flip: bool = True, rot90: bool = True, jitter: float = 0.1) -> None:
        if jitter < 0:
            raise ConfigError(f"jitter must be >= 0, got {jitter}")
        self.flip, self.rot90, self.jitter = flip, rot90, jitter

    def __call__(
        self, sample: dict[str, torch.Tensor], rng: np.random.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """A new sample dict; keys other than the four above pass through."""
        rng = rng if rng is not None else np.random.default_rng()
        out = dict(sample)
        if self.flip and rng.random() < 0.5:
            out = _hflip(out)
        if self.flip and rng.random() < 0.5:
            out = _hflip(_rot90(_rot90(out)))  # a vertical flip
        if self.rot90:
            for _ in range(int(rng.integers(4))):
                out = _rot90(out)
        if self.jitter and out["image"].is_floating_point():
            a, b = rng.uniform(-self.jitter, self.jitter, size=2)
            image = out["image"]
            mean, std = image.mean(), image.std()
            out["image"] = (image - mean) * (1 + a) + mean + b * std
        return out


def _hflip(s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mirror left-right: x -> W - x."""
    width = s["image"].shape[-1]
    out = dict(s)
    out["image"] = s["image"].flip(-1)
    if "mask" in s:
        out["mask"] = s["mask"].flip(-1)
    if "boxes" in s:
        x0, y0, x1, y1 = s["boxes"].unbind(-1)
        out["boxes"] = torch.stack([width - x1, y0, width - x0, y1], dim=-1)
    if "points" in s:
        x, y = s["points"].unbind(-1)
        out["points"] = torch.stack([width - x, y], dim=-1)
    return out


def _rot90(s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn a quarter counter-clockwise (`torch.rot90`): (x, y) -> (y, W - x)."""
    width = s["image"].shape[-1]
    out = dict(s)
    out["image"] = torch.rot90(s["image"], 1, dims=(-2, -1))
    if "mask" in s:
        out["mask"] = torch.rot90(s["mask"], 1, dims=(-2, -1))
    if "boxes" in s:
        x0, y0, x1, y1 = s["boxes"].unbind(-1)
        out["boxes"] = torch.stack([y0, width - x1, y1, width - x0], dim=-1)
    if "points" in s:
        x, y = s["points"].unbind(-1)
        out["points"] = torch.stack([y, width - x], dim=-1)
    return out


@contextlib.contextmanager
def seeded_global_rng(key: Sequence[int]) -> Iterator[None]:
    """Python's, numpy's and torch's CPU global generators seeded from ``key`` inside the
    block, and put back as they were after it.

    Transforms written for the global generators (timm's RandAugment draws from
    ``random``, torchvision's random crops and flips from torch's) then give a sample the
    same randomness in any worker, any process and after a resume, and loading a sample
    leaves the training loop's generators untouched.
    """
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2)
    seed = int(state[0]) << 32 | int(state[1])
    saved_python, saved_numpy = random.getstate(), np.random.get_state()
    saved_torch = torch.random.default_generator.get_state()
    random.seed(seed)
    np.random.seed(state[0])
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved_python)
        np.random.set_state(saved_numpy)
        torch.random.default_generator.set_state(saved_torch)
