"""Test-time views: a viewed source reads what turning the whole image would give, the
view set is the dihedral group, and averaged outputs decode to the averaged answer."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xtimage.config import TTA, load_config
from xtimage.engine.source import RegionSource
from xtimage.engine.views import (
    VIEW_SETS,
    OutputKind,
    ViewAverage,
    ViewedSource,
    output_kinds,
    to_logits,
    to_probabilities,
)
from xtimage.errors import ConfigError
from xtimage.heads.segmentation import DenseOutput
from xtimage.io import ArrayReader
from xtimage.tiling import crop_padded
from xtimage.window import Window

D4 = VIEW_SETS["d4"]


@settings(max_examples=200, deadline=None)
@given(
    height=st.integers(1, 30),
    width=st.integers(1, 30),
    channels=st.integers(1, 3),
    view=st.sampled_from(D4),
    top=st.integers(-12, 40),
    left=st.integers(-12, 40),
    rows=st.integers(1, 25),
    cols=st.integers(1, 25),
    reader=st.booleans(),
)
def test_a_viewed_source_reads_the_turned_image(
    height, width, channels, view, top, left, rows, cols, reader
):
    pixels = np.random.default_rng(height * 31 + width).random((channels, height, width))
    image = torch.from_numpy(pixels)
    base = RegionSource(ArrayReader(pixels) if reader else image, dtype=torch.float64)
    viewed = ViewedSource(base, view)
    turned = view.apply(image)  # the whole image turned: the reference
    assert (viewed.height, viewed.width) == tuple(turned.shape[1:])
    window = Window(top, left, rows, cols)  # inside, across the border or wholly outside
    torch.testing.assert_close(viewed.read(window), crop_padded(turned, window), rtol=0, atol=0)


@settings(max_examples=100, deadline=None)
@given(
    height=st.integers(1, 20),
    width=st.integers(1, 20),
    view=st.sampled_from(D4),
    top=st.integers(-5, 25),
    left=st.integers(-5, 25),
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
)
def test_undo_of_a_view_window_lands_on_its_base_window(height, width, view, top, left, rows, cols):
    """What `Predictor.dense` relies on: a view window's outputs, undone, are those of the
    base window `base_window` names (checked on index maps, inside the image)."""
    index = torch.arange(height * width).reshape(1, height, width)
    window = Window(top, left, rows, cols)
    turned = crop_padded(view.apply(index), window)
    base = view.base_window(window, height, width)
    inside = base.intersect(Window(0, 0, height, width))
    if inside is None:
        return
    back = view.undo(turned)  # aligned with `base`
    rows_in, cols_in = inside.shift(-base.top, -base.left).slices()
    assert torch.equal(back[:, rows_in, cols_in], index[(slice(None), *inside.slices())])


def test_the_view_sets():
    x = torch.arange(20.0).reshape(1, 4, 5)
    assert len({tuple(v.apply(x).flatten().tolist()) for v in D4}) == 8  # all distinct
    for v in D4:
        assert torch.equal(v.undo(v.apply(x)), x)
    assert all(v.apply(x).shape == x.shape for v in VIEW_SETS["flips"])  # shape kept
    assert len(VIEW_SETS["flips"]) == 4 and VIEW_SETS["none"] == D4[:1]
    assert set(VIEW_SETS) == set(TTA)  # every setting the config accepts has its views
    with pytest.raises(ConfigError, match="d8"):
        load_config(None, ["model.tta=d8"])


def test_averaged_outputs_decode_to_the_average():
    outputs = [DenseOutput("mask", 3), DenseOutput("edge", 1, "bce"), DenseOutput("size", 1, "l1")]
    kinds = output_kinds(outputs)
    assert kinds == [
        OutputKind(slice(0, 3), "softmax"),
        OutputKind(slice(3, 4), "sigmoid"),
        OutputKind(slice(4, 5), "raw"),
    ]
    a, b = torch.randn(2, 5, 6, 7, dtype=torch.float64).unbind(0)
    mean = (to_probabilities(a, kinds) + to_probabilities(b, kinds)) / 2
    raw = to_logits(mean, kinds)
    expected = (a[:3].softmax(0) + b[:3].softmax(0)) / 2
    torch.testing.assert_close(raw[:3].softmax(0), expected)
    torch.testing.assert_close(raw[3].sigmoid(), (a[3].sigmoid() + b[3].sigmoid()) / 2)
    torch.testing.assert_close(raw[4], (a[4] + b[4]) / 2)


def test_a_view_average_writes_the_mean_in_bands(monkeypatch):
    monkeypatch.setattr("xtimage.engine.views.BAND", 4)
    kinds = [OutputKind(slice(0, 1), "raw")]
    average = ViewAverage(kinds, 10, 3)
    window = Window(-2, -1, 14, 5)  # past the border on every side
    for view in VIEW_SETS["flips"]:
        image = view.apply(torch.full((1, 10, 3), float(view.turns + view.flip)))
        average.writer(view).write(window, crop_padded(image, window).numpy())
    written = []

    class Writer:
        def write(self, window, data):
            written.append((window, data))

    average.flush(Writer())
    assert [w.height for w, _ in written] == [4, 4, 2]  # bands of rows, the last partial
    assert np.allclose(np.concatenate([d for _, d in written], axis=1), (0 + 1 + 2 + 3) / 4)
