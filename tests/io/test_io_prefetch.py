import threading
import time

import numpy as np
import pytest

from xtimage.errors import InputError
from xtimage.io import ArrayReader, Prefetcher, read_padded
from xtimage.window import Window


class CountingReader(ArrayReader):
    """An ArrayReader that records how many reads were started and how many run at once."""

    def __init__(self, array, delay=0.0, fail_at=None):
        super().__init__(array)
        self.delay, self.fail_at = delay, fail_at
        self.started = 0
        self.running = 0
        self.max_running = 0
        self._count_lock = threading.Lock()

    def read_region(self, window, level=0):
        with self._count_lock:
            self.started += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            time.sleep(self.delay)
            if self.fail_at is not None and window.top == self.fail_at:
                raise InputError(f"bad window {window}")
            return super().read_region(window, level)
        finally:
            with self._count_lock:
                self.running -= 1


def windows(n):
    return [Window(i, -2, 3, 8) for i in range(n)]  # past the left border: padded


def test_yields_in_order_and_equals_sequential_padded_reads():
    image = np.arange(2 * 40 * 6, dtype=np.int32).reshape(2, 40, 6)
    reader = CountingReader(image, delay=0.001)
    got = list(Prefetcher(reader, windows(37), workers=3, depth=5))
    assert [w for w, _ in got] == windows(37)
    for window, array in got:
        assert np.array_equal(array, read_padded(ArrayReader(image), window))
    assert reader.max_running > 1  # reads overlapped


def test_edge_mode_reads_like_read_padded_edge():
    image = np.arange(2 * 12 * 6, dtype=np.int32).reshape(2, 12, 6)
    got = list(Prefetcher(ArrayReader(image), windows(12), mode="edge"))
    for window, array in got:
        assert np.array_equal(array, read_padded(ArrayReader(image), window, mode="edge"))
        assert (array[:, :, :2] == array[:, :, 2:3]).all()  # the image's column 0 repeated


def test_read_ahead_is_bounded_by_depth():
    reader = CountingReader(np.zeros((1, 200, 6)), delay=0.001)
    prefetcher = iter(Prefetcher(reader, windows(100), workers=2, depth=4))
    for consumed in range(1, 11):
        next(prefetcher)
        time.sleep(0.01)  # let the workers run ahead as far as they may
        assert reader.started <= consumed + 4
    prefetcher.close()  # leaving early cancels the queue
    assert reader.started <= 10 + 4


def test_errors_surface_at_their_windows_turn():
    reader = CountingReader(np.zeros((1, 50, 6)), fail_at=7)
    seen = []
    with pytest.raises(InputError, match="bad window"):
        for window, _ in Prefetcher(reader, windows(20), workers=2, depth=4):
            seen.append(window.top)
    assert seen == list(range(7))
