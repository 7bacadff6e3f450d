"""Regions of one image, read chunk by chunk from a tensor, an array or a reader."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from xtimage.errors import InputError
from xtimage.io.base import Reader, read_padded
from xtimage.tiling import RegionPlan
from xtimage.window import Window

Transform = Callable[[np.ndarray], np.ndarray]


class RegionSource:
    """One image as a source of region windows, zero outside the image.

    Args:
        image: a (C, H, W) tensor or array, or a `Reader` (never loaded whole).
        transform: applied to each window read from an array or reader (C, h, w), e.g.
            normalisation; tensors are used as they are.
        dtype: dtype of the regions handed to the model.
    """

    def __init__(
        self,
        image: torch.Tensor | np.ndarray | Reader,
        transform: Transform | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if isinstance(image, np.ndarray):
            from xtimage.io.array import ArrayReader

            image = ArrayReader(image)
        if isinstance(image, torch.Tensor):
            if image.ndim != 3:
                raise InputError(f"expected a (C, H, W) image tensor, got {tuple(image.shape)}")
            self.channels, self.height, self.width = image.shape
        else:
            self.channels, self.height, self.width = image.channels, image.height, image.width
        self.image = image
        self.transform = transform
        self.dtype = dtype

    def read(self, window: Window) -> torch.Tensor:
        """(C, h, w) pixels of ``window``, zero where it lies outside the image."""
        if isinstance(self.image, torch.Tensor):
            inside = window.intersect(Window(0, 0, self.height, self.width))
            if inside is None:
                return self.image.new_zeros(self.channels, window.height, window.width)
            rows, cols = inside.slices()
            crop = self.image[:, rows, cols]
            pad = (
                inside.left - window.left,
                window.right - inside.right,
                inside.top - window.top,
                window.bottom - inside.bottom,
            )
            return F.pad(crop, pad).to(self.dtype)
        array = read_padded(self.image, window)
        if self.transform is not None:
            array = self.transform(array)
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.dtype)

    def regions(self, plan: RegionPlan, indices: Iterable[int]) -> torch.Tensor:
        """Region windows stacked: (k, C, R, R)."""
        return torch.stack([self.read(plan.window(i)) for i in indices])

    def chunks(
        self, plan: RegionPlan, chunks: Iterable[range], read_ahead: bool = True
    ) -> Iterator[tuple[range, torch.Tensor]]:
        """Yield (regions, pixels) per chunk; the next chunk is read on a thread meanwhile."""
        if not read_ahead:
            for chunk in chunks:
                yield chunk, self.regions(plan, chunk)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xt-read") as pool:
            it = iter(chunks)
            chunk = next(it, None)
            pending = pool.submit(self.regions, plan, chunk) if chunk is not None else None
            while chunk is not None:
                pixels = pending.result()
                nxt = next(it, None)
                pending = pool.submit(self.regions, plan, nxt) if nxt is not None else None
                yield chunk, pixels
                chunk = nxt
