import logging

import numpy as np
import pytest
import torch
from PIL import Image

from xtimage.data.folder import FolderDataset
from xtimage.data.sampling import RandomWindowSampler
from xtimage.errors import InputError
from xtimage.window import Window


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def seg_folder(tmp_path):
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a": (20, 30), "b": (25, 17)}.items():
        _png(tmp_path / "images" / f"{name}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        _png(tmp_path / "masks" / f"{name}.png", rng.integers(0, 3, (h, w), dtype=np.uint8))
    np.save(tmp_path / "images" / "c.npy", rng.random((2, 12, 9)).astype(np.float32))
    np.save(tmp_path / "masks" / "c.npy", rng.integers(0, 3, (12, 9)).astype(np.uint8))
    return tmp_path


def test_segmentation_folder_reads_whole_images_and_windows(seg_folder):
    ds = FolderDataset(seg_folder, classes=["bg", "road", "roof"])
    assert ds.task == "segmentation" and len(ds) == 3 and ds.num_classes == 3
    assert ds.image_sizes == [(20, 30), (25, 17), (12, 9)]
    a = ds[0]
    raw = np.asarray(Image.open(seg_folder / "images" / "a.png"))
    np.testing.assert_allclose(a["image"].numpy(), raw.transpose(2, 0, 1) / 255, atol=1e-6)
    mask = np.asarray(Image.open(seg_folder / "masks" / "a.png"))
    np.testing.assert_array_equal(a["mask"].numpy(), mask)
    c = ds[2]
    np.testing.assert_array_equal(c["image"].numpy(), np.load(seg_folder / "images" / "c.npy"))
    # a window past the border is zero-padded, image and mask alike
    w = ds.read(0, Window(15, 25, 10, 10))
    assert w["image"].shape == (3, 10, 10) and w["mask"].shape == (10, 10)
    np.testing.assert_array_equal(w["mask"][:5, :5].numpy(), mask[15:, 25:])
    assert w["image"][:, 5:].abs().sum() == 0 and w["mask"][5:].sum() == 0


def test_random_windows_from_a_folder(seg_folder):
    ds = FolderDataset(seg_folder)
    sampler = RandomWindowSampler(ds.image_sizes, 8, n=5, seed=1)
    for index, window in sampler:
        s = ds.read(index, window)
        assert s["image"].shape[-2:] == (8, 8) == s["mask"].shape


def test_segmentation_bad_data(seg_folder, caplog):
    np.save(seg_folder / "masks" / "c.npy", np.zeros((12, 10), dtype=np.uint8))
    _png(seg_folder / "masks" / "orphan.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(InputError, match=r"orphan\.png: mask without an image"):
        FolderDataset(seg_folder)
    (seg_folder / "masks" / "orphan.png").unlink()
    with pytest.raises(InputError, match=r"c\.npy: mask of 12 x 10 px does not match .*12 x 9"):
        FolderDataset(seg_folder)
    with caplog.at_level(logging.WARNING):
        ds = FolderDataset(seg_folder, skip_bad=True)
    assert len(ds) == 2 and "skipped 1 bad sample" in caplog.text
    with pytest.raises(InputError, match=r"a\.png: mask value 2 is not a class index 0\.\.1"):
        FolderDataset(seg_folder, classes=["bg", "fg"], skip_bad=True)[0]


def test_labels_csv(tmp_path, caplog):
    for name in ("x", "y", "z"):
        _png(tmp_path / "images" / f"{name}.png", np.full((6, 7), 9, dtype=np.uint8))
    (tmp_path / "labels.csv").write_text(
        "image,label\nx.png,cat\nimages/y.png,dog\nz.png,cat\nmissing.png,dog\nx.png,eel\n"
    )
    with pytest.raises(InputError, match=r"labels\.csv, row 5: image 'missing\.png' not found"):
        FolderDataset(tmp_path, classes=["cat", "dog"])
    with caplog.at_level(logging.WARNING):
        ds = FolderDataset(tmp_path, classes=["cat", "dog"], skip_bad=True)
    assert "skipped 2 bad sample" in caplog.text and len(ds) == 3
    assert [int(ds[i]["label"]) for i in range(3)] == [0, 1, 0]
    assert ds[0]["image"].shape == (1, 6, 7)
    (tmp_path / "labels.csv").write_text("image,label\nx.png,cat\nx.png,eel\n")
    with pytest.raises(InputError, match=r"row 3: unknown class 'eel'; known: cat, dog"):
        FolderDataset(tmp_path, classes=["cat", "dog"])
    inferred = FolderDataset(tmp_path, skip_bad=True)
    assert inferred.classes == ["cat", "eel"]


def test_integer_labels_are_their_own_indices(tmp_path):
    _png(tmp_path / "a.png", np.zeros((3, 3), dtype=np.uint8))
    (tmp_path / "labels.csv").write_text("image,label\na.png,3\na.png,0\n")
    ds = FolderDataset(tmp_path)
    assert ds.num_classes == 4 and [int(ds[i]["label"]) for i in range(2)] == [3, 0]


def test_boxes_and_points_csv(tmp_path):
    _png(tmp_path / "images" / "s.png", np.zeros((40, 50), dtype=np.uint8))
    _png(tmp_path / "images" / "e.png", np.zeros((10, 10), dtype=np.uint8))
    (tmp_path / "boxes.csv").write_text(
        "image,x0,y0,x1,y1,label\ns.png,1,2,11,12,ship\ns.png,30,20,40,30,boat\ne.png,,,,,\n"
    )
    ds = FolderDataset(tmp_path)
    assert ds.task == "detection" and ds.classes == ["boat", "ship"] and len(ds) == 2
    s = ds[0]
    torch.testing.assert_close(s["boxes"], torch.tensor([[1.0, 2, 11, 12], [30, 20, 40, 30]]))
    torch.testing.assert_close(s["points"], torch.tensor([[6.0, 7], [35, 25]]))
    assert s["labels"].tolist() == [1, 0] and ds[1]["boxes"].shape == (0, 4)
    # a window keeps the objects whose centre it holds, in its own coordinates
    w = ds.read(0, Window(10, 20, 30, 30))
    torch.testing.assert_close(w["boxes"], torch.tensor([[10.0, 10, 20, 20]]))
    assert w["labels"].tolist() == [0]

    (tmp_path / "boxes.csv").write_text("image,x0,y0,x1,y1\ns.png,5,5,3,9\n")
    with pytest.raises(InputError, match=r"boxes\.csv, row 2: box .* is empty"):
        FolderDataset(tmp_path)
    (tmp_path / "boxes.csv").unlink()
    (tmp_path / "points.csv").write_text("image,x,y\ne.png,3,4\ns.png,60,4\n")
    with pytest.raises(InputError, match=r"points\.csv, row 3: point .* outside the 40 x 50"):
        FolderDataset(tmp_path)
    ds = FolderDataset(tmp_path, skip_bad=True)  # the image with a bad row is dropped
    assert len(ds) == 1 and ds[0]["points"].tolist() == [[3.0, 4.0]]


def test_unrecognised_folder(tmp_path):
    with pytest.raises(InputError, match="Your own data"):
        FolderDataset(tmp_path)


def test_a_0_255_binary_mask_is_named_with_its_fix(tmp_path):
    _png(tmp_path / "images" / "a.png", np.zeros((6, 7, 3), dtype=np.uint8))
    _png(tmp_path / "masks" / "a.png", np.where(np.eye(6, 7) > 0, 255, 0).astype(np.uint8))
    with pytest.raises(InputError, match=r"a\.png: mask value 255 .*0/255 binary mask: save it"):
        FolderDataset(tmp_path, num_classes=2)[0]
