"""A rectangular pixel window, the unit that tilers plan and readers answer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """Pixels ``[top, top + height) x [left, left + width)``; may extend outside an image."""

    top: int
    left: int
    height: int
    width: int

    @property
    def bottom(self) -> int:
        return self.top + self.height

    @property
    def right(self) -> int:
        return self.left + self.width

    @property
    def area(self) -> int:
        return self.height * self.width

    def intersect(self, other: Window) -> Window | None:
        """The overlap of two windows, or None when they do not overlap."""
        top, left = max(self.top, other.top), max(self.left, other.left)
        bottom, right = min(self.bottom, other.bottom), min(self.right, other.right)
        if bottom <= top or right <= left:
            return None
        return Window(top, left, bottom - top, right - left)

    def edge_index(self, height: int, width: int) -> tuple[Window, np.ndarray, np.ndarray]:
        """Where edge padding takes this window's pixels from, in a ``height`` x ``width``
        image.

        Pixel (r, c) of the window is the image's ``(clip(r, 0, height - 1),
        clip(c, 0, width - 1))``: pixel ``(rows[r], cols[c])`` of ``source``, the smallest
        block of the image that holds them. Never empty: a window wholly past the border
        gets the nearest edge row or column.

        Returns:
            ``source``, and int64 ``rows`` (window.height,) and ``cols`` (window.width,)
            into it.
        """
        top, left = min(max(self.top, 0), height - 1), min(max(self.left, 0), width - 1)
        bottom = max(min(self.bottom, height), top + 1)
        right = max(min(self.right, width), left + 1)
        source = Window(top, left, bottom - top, right - left)
        rows = np.clip(np.arange(self.top, self.bottom), top, bottom - 1) - top
        cols = np.clip(np.arange(self.left, self.right), left, right - 1) - left
        return source, rows, cols

    def shift(self, dy: int, dx: int) -> Window:
        return Window(self.top + dy, self.left + dx, self.height, self.width)

    def scale(self, factor: float) -> Window:
        """The window in a grid ``factor`` times coarser (outward-rounded)."""
        top, left = int(self.top // factor), int(self.left // factor)
        bottom = -int(-self.bottom // factor)
        right = -int(-self.right // factor)
        return Window(top, left, bottom - top, right - left)

    def slices(self) -> tuple[slice, slice]:
        """Row and column slices, for indexing an array that starts at (0, 0)."""
        return slice(self.top, self.bottom), slice(self.left, self.right)
