"""A rectangular pixel window, the unit that tilers plan and readers answer."""

from __future__ import annotations

from dataclasses import dataclass


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
