import numpy as np
import pytest
import torch

from xtimage.data.sampling import Augment, RandomWindowSampler, WindowDataset
from xtimage.errors import ConfigError
from xtimage.window import Window


def test_sampler_is_deterministic_per_epoch_and_inside_images():
    sizes = [(50, 60), (20, 90)]
    sampler = RandomWindowSampler(sizes, (16, 24), n=200, seed=3)
    first = list(sampler)
    assert first == list(sampler) and len(first) == len(sampler) == 200
    sampler.set_epoch(1)
    assert list(sampler) != first
    for index, w in first:
        h, wd = sizes[index]
        assert (w.height, w.width) == (16, 24)
        assert w.intersect(Window(0, 0, h, wd)) == w


def test_sampler_weights_images_by_area_and_reaches_every_position():
    sampler = RandomWindowSampler([(5, 5), (10, 10)], 3, n=4000, seed=0)
    plan = list(sampler)
    share = np.mean([i == 1 for i, _ in plan])
    assert share == pytest.approx(100 / 125, abs=0.03)
    corners = {(w.top, w.left) for i, w in plan if i == 0}
    assert corners == {(t, l) for t in range(3) for l in range(3)}


def test_sampler_covers_images_smaller_than_the_window():
    sampler = RandomWindowSampler([(4, 30)], (10, 10), n=50, seed=0)
    for _, w in sampler:
        assert w.top <= 0 and w.bottom >= 4 and 0 <= w.left <= 20
    with pytest.raises(ConfigError):
        RandomWindowSampler([(4, 30)], 0, n=5)


def _scene():
    """An asymmetric image whose channel 0 is the mask, with one marked object."""
    mask = torch.zeros(12, 16, dtype=torch.long)
    mask[2:5, 3:9] = 1  # the object: rows 2-4, cols 3-8
    image = torch.stack([mask.float(), torch.arange(12 * 16.0).reshape(12, 16)])
    boxes = torch.tensor([[3.0, 2.0, 9.0, 5.0]])  # x0, y0, x1, y1
    points = torch.tensor([[3.5, 2.5]])  # centre of pixel (2, 3)
    return {"image": image, "mask": mask, "boxes": boxes, "points": points, "id": 7}


def test_geometry_moves_image_mask_boxes_and_points_together():
    augment = Augment(flip=True, rot90=True, jitter=0.0)
    seen = set()
    for seed in range(60):
        out = augment(_scene(), np.random.default_rng(seed))
        seen.add(tuple(out["image"][1].flatten()[:2].tolist()))  # corner and neighbour
        torch.testing.assert_close(out["image"][0], out["mask"].float())
        rows, cols = torch.nonzero(out["mask"], as_tuple=True)
        box = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        torch.testing.assert_close(out["boxes"][0], torch.tensor(box, dtype=torch.float32))
        # the pixel that held value 2*16+3 (pixel (2, 3)) is where the point went
        r, c = torch.nonzero(out["image"][1] == 2 * 16 + 3)[0].tolist()
        torch.testing.assert_close(out["points"][0], torch.tensor([c + 0.5, r + 0.5]))
        assert out["id"] == 7
    assert len(seen) == 8  # all eight flips and turns of the square's symmetry group


def test_photometric_jitter_is_one_affine_map_per_image():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((3, 8, 9)).astype(np.float32))
    out = Augment(flip=False, rot90=False, jitter=0.2)({"image": image}, rng)["image"]
    x, y = image.flatten().double(), out.flatten().double()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    fitted = y.mean() + slope * (x - x.mean())
    torch.testing.assert_close(fitted, y, atol=1e-5, rtol=0)
    assert 0.8 <= slope <= 1.2 and not torch.equal(out, image)
    same = Augment(flip=False, rot90=False, jitter=0.0)({"image": image}, rng)["image"]
    assert torch.equal(same, image)


class _Source:
    image_sizes = [(30, 40)]

    def read(self, index, window):
        y, x = torch.meshgrid(
            torch.arange(window.top, window.bottom),
            torch.arange(window.left, window.right),
            indexing="ij",
        )
        return {"image": (y * 100 + x).float()[None], "mask": (y > 10).long()}


def test_window_dataset_reads_the_plan_and_augments_reproducibly():
    ds = WindowDataset(_Source(), 8, n=6, seed=2)
    again = WindowDataset(_Source(), 8, 6, 2)
    plan = ds.plan(0)
    assert len(ds) == 6 and plan == again.plan(0)
    augment = Augment(jitter=0.0)
    for i, key in enumerate(plan):
        item = augment(ds[key], np.random.default_rng([1, 0, i]))
        repeat = augment(again[key], np.random.default_rng([1, 0, i]))
        torch.testing.assert_close(item["image"], repeat["image"])
        w = key[1]
        values = set(item["image"].flatten().long().tolist())
        assert values == {
            y * 100 + x for y in range(w.top, w.bottom) for x in range(w.left, w.right)
        }
    assert ds.plan(1) != again.plan(0)


def test_window_dataset_samples_only_its_images():
    source = _Source()
    source.image_sizes = [(30, 40), (30, 40), (30, 40)]
    ds = WindowDataset(source, 8, n=20, seed=0, indices=[0, 2])
    assert {index for index, _ in ds.plan(0)} == {0, 2}
