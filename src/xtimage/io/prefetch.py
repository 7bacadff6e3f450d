"""Read-ahead: windows read on background threads while the model computes.

Decoding (JPEG, deflate, GDAL, OpenSlide) releases the GIL, so a few threads decode the
next windows while the caller works on the current one. `Prefetcher` yields windows in
the order given; at most ``depth`` reads are in flight or waiting, so memory is bounded
by ``depth`` windows whatever the image size. An error in a read is raised when its
window's turn comes, and leaving the loop early cancels what is still queued.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from xtimage.errors import ConfigError
from xtimage.io.base import PadMode, Reader, read_padded
from xtimage.window import Window


class Prefetcher:
    """Iterate ``(window, array)`` over ``windows``, read ahead on ``workers`` threads.

    Args:
        reader: the image; its `read_region` must be safe to call from several threads
            (all xtimage readers are).
        windows: the windows to read, in order; they may extend past the border (read
            with `read_padded`).
        level: pyramid level the windows refer to.
        workers: reading threads.
        depth: windows read ahead at most (queued or done, not yet yielded).
        fill: value outside the image with ``mode="constant"`` (default: the nodata value,
            else 0; see `read_padded`).
        mode: `read_padded`'s padding, ``"constant"`` or ``"edge"`` (the nearest pixel).
    """

    def __init__(
        self,
        reader: Reader,
        windows: Iterable[Window],
        level: int = 0,
        workers: int = 2,
        depth: int = 8,
        fill: float | None = None,
        mode: PadMode = "constant",
    ) -> None:
        if workers < 1 or depth < 1:
            raise ConfigError(
                f"read-ahead needs workers >= 1 and depth >= 1, got {workers}, {depth}"
            )
        self.reader, self.windows = reader, windows
        self.level, self.workers, self.depth, self.fill = level, workers, depth, fill
        self.mode = mode

    def _read(self, window: Window) -> np.ndarray:
        return read_padded(self.reader, window, self.level, self.fill, self.mode)

    def __iter__(self) -> Iterator[tuple[Window, np.ndarray]]:
        pending: deque[tuple[Window, Future[np.ndarray]]] = deque()
        windows = iter(self.windows)
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="xt-read")
        try:
            for window in windows:
                pending.append((window, pool.submit(self._read, window)))
                if len(pending) >= self.depth:
                    break
            while pending:
                window, future = pending.popleft()
                array = future.result()
                nxt = next(windows, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(self._read, nxt)))
                yield window, array
        finally:
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=True)
