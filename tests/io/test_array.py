import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xtimage.errors import ConfigError, InputError
from xtimage.io import ArrayReader, Reader, open_reader, read_padded
from xtimage.window import Window


@st.composite
def windows(draw, height, width):
    top = draw(st.integers(-10, height + 5))
    left = draw(st.integers(-10, width + 5))
    return Window(top, left, draw(st.integers(1, 20)), draw(st.integers(1, 20)))


@given(st.data())
def test_read_padded_equals_slicing_a_padded_array(data):
    c, h, w = (
        data.draw(st.integers(1, 3)),
        data.draw(st.integers(1, 30)),
        data.draw(st.integers(1, 30)),
    )
    mode = data.draw(st.sampled_from(["constant", "edge"]))  # zeros, or the nearest pixel
    array = np.arange(c * h * w, dtype=np.int32).reshape(c, h, w) + 1
    window = data.draw(windows(h, w))  # partly or wholly outside, or inside
    padded = np.pad(array, ((0, 0), (30, 30), (30, 30)), mode=mode)
    rows, cols = window.shift(30, 30).slices()
    out = read_padded(ArrayReader(array), window, mode=mode)
    assert out.dtype == array.dtype and np.array_equal(out, padded[:, rows, cols])


def test_read_padded_edge_by_hand_and_a_bad_mode():
    reader = ArrayReader(np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8))
    out = read_padded(reader, Window(1, 2, 2, 3), mode="edge")  # past the bottom right
    assert out[0].tolist() == [[6, 6, 6], [6, 6, 6]]
    out = read_padded(reader, Window(-3, 5, 2, 1), mode="edge")  # wholly past a corner
    assert out[0].tolist() == [[3], [3]]
    with pytest.raises(ConfigError, match="'constant', 'edge'"):
        read_padded(reader, Window(0, 0, 1, 1), mode="reflect")


def test_array_reader_fulfils_the_protocol_and_reads_npy_lazily(tmp_path):
    array = np.random.default_rng(0).random((2, 40, 50)).astype(np.float32)
    np.save(tmp_path / "image.npy", array)
    reader = open_reader(tmp_path / "image.npy")
    assert isinstance(reader, Reader)
    assert (reader.channels, reader.height, reader.width) == (2, 40, 50)
    assert isinstance(reader._array, np.memmap)
    window = Window(3, 7, 11, 13)
    assert np.array_equal(reader.read_region(window), array[:, 3:14, 7:20])


@pytest.mark.parametrize(
    ("window", "level", "message"),
    [
        (Window(0, 0, 5, 5), 1, "level 1 does not exist"),
        (Window(-1, 0, 5, 5), 0, "outside level 0"),
        (Window(0, 0, 0, 5), 0, "empty window"),
    ],
)
def test_bad_reads_are_clear_errors(window, level, message):
    with pytest.raises(InputError, match=message):
        ArrayReader(np.zeros((8, 8))).read_region(window, level)


def test_open_reader_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_reader(tmp_path / "missing.npy")
    (tmp_path / "notes.xyz").write_text("x")
    with pytest.raises(InputError, match="unsupported format '.xyz'"):
        open_reader(tmp_path / "notes.xyz")
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match="not a readable .npy"):
        open_reader(tmp_path / "broken.npy")
