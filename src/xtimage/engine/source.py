"""Regions of one image, read chunk by chunk from a tensor, an array or a reader."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from xtimage.errors import InputError
from xtimage.io.base import Reader, read_padded
from xtimage.io.prefetch import Prefetcher
from xtimage.tiling import RegionPlan, crop_padded
from xtimage.window import Window

Transform = Callable[[np.ndarray], np.ndarray]


class RegionSource:
    """One image as a source of region windows, edge-padded outside the image.

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
        """(C, h, w) pixels of ``window``, edge-padded where it lies outside the image.

        The padding repeats the nearest image pixel, as `extract_regions` does, so the
        engine and `XT.forward` see the same regions; a reader's window is padded before
        ``transform``, which commutes with it for per-pixel transforms.
        """
        if isinstance(self.image, torch.Tensor):
            return crop_padded(self.image, window).to(self.dtype)
        return self._to_tensor(read_padded(self.image, window, mode="edge"))

    def _to_tensor(self, array: np.ndarray) -> torch.Tensor:
        if self.transform is not None:
            array = self.transform(array)
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.dtype)

    def regions(self, plan: RegionPlan, indices: Iterable[int]) -> torch.Tensor:
        """Region windows stacked: (k, C, R, R)."""
        return torch.stack([self.read(plan.window(i)) for i in indices])

    def chunks(
        self, plan: RegionPlan, chunks: Sequence[Sequence[int]], read_ahead: bool = True
    ) -> Iterator[tuple[Sequence[int], torch.Tensor]]:
        """Yield (regions, pixels (k, C, R, R)) per chunk of region indices.

        From a reader, windows are decoded ahead on threads (`Prefetcher`, up to two
        chunks ahead) while the model works on the current chunk.
        """
        if isinstance(self.image, torch.Tensor) or not read_ahead:
            for chunk in chunks:
                yield chunk, self.regions(plan, chunk)
            return
        windows = (plan.window(i) for chunk in chunks for i in chunk)
        depth = 2 * (len(chunks[0]) if len(chunks) else 1)  # the first chunk is the longest
        reads = iter(Prefetcher(self.image, windows, workers=2, depth=depth, mode="edge"))
        for chunk in chunks:
            yield chunk, torch.stack([self._to_tensor(next(reads)[1]) for _ in chunk])
