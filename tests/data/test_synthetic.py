import numpy as np
import pytest
import torch
from scipy import ndimage

from xtimage.data.synthetic import OBJECT_MEAN, SyntheticTask
from xtimage.errors import ConfigError
from xtimage.metrics import SegmentationMeter

BG = 0.1  # background level, read off the images below


def _signature(image, pixels):
    """Texture of a set of pixels read off the image alone: the sign of each 2x2 phase
    (even/odd row, even/odd col) against the set's mean; the same for the same texture
    at any brightness."""
    ys, xs = np.nonzero(pixels)
    values = image[ys, xs]
    phase = (ys % 2) * 2 + xs % 2
    means = np.array([values[phase == p].mean() for p in range(4)])
    return tuple(np.sign(np.round(means - values.mean(), 3)).astype(int))


def _components(image, where):
    labels, n = ndimage.label(where & (image > BG + 0.05), structure=np.ones((3, 3)))
    return [labels == i for i in range(1, n + 1)]


def _shapes(image):
    """Every shape of a noiseless image (off the background), as boolean masks."""
    labels, n = ndimage.label(np.abs(image - BG) > 1e-6, structure=np.ones((3, 3)))
    return [labels == j for j in range(1, n + 1)]


def _is_key(image, comp):
    return image[comp].mean() > 0.6


@pytest.fixture(scope="module")
def seg():
    return SyntheticTask("segmentation", size=256, region=64, textures=4, noise=0.0, seed=3)


def test_deterministic_and_seeded(seg):
    a, b = seg.sample(5), SyntheticTask(**_args(seg)).sample(5)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    other = SyntheticTask(**(_args(seg) | {"seed": 4})).sample(5)
    assert not np.array_equal(a.image, other.image)
    assert a.image.dtype == np.float32 and a.image.shape == (3, 256, 256)
    assert a.image.min() >= 0 and a.image.max() <= 1
    assert a.mask.dtype == np.int64 and set(np.unique(a.mask)) <= {0, 1}


def _args(t):
    return dict(
        kind=t.kind,
        size=(t.height, t.width),
        region=t.region,
        textures=t.textures,
        noise=t.noise,
        seed=t.seed,
    )


def test_mask_is_the_objects_textured_like_the_key(seg):
    """Ground truth checked from pixels alone: key = the bright component."""
    for i in range(6):
        s = seg.sample(i)
        image = s.image[0]
        comps = _components(image, np.ones_like(image, dtype=bool))
        keys = [c for c in comps if _is_key(image, c)]
        assert len(keys) == 1
        key_sig = _signature(image, keys[0])
        assert not s.mask[keys[0]].any()
        n_target = 0
        for c in comps:
            if c is keys[0]:
                continue
            same = _signature(image, c) == key_sig
            assert s.mask[c].all() if same else not s.mask[c].any()
            n_target += same
        covered = np.zeros_like(s.mask, dtype=bool)
        for c in comps:
            covered |= c
        assert not s.mask[~covered].any()


def test_texture_map_agrees_with_pixels(seg):
    s = seg.sample(2)
    image = s.image[0]
    for t in range(1, seg.textures + 1):
        comps = _components(image, s.texture == t)
        assert len({_signature(image, c) for c in comps}) <= 1


def test_texture_layout_names_the_key_texture_and_the_objects_pixels(seg):
    for i in range(4):
        s = seg.sample(i)
        image = s.image[0]
        keys, objects = seg.texture_layout(i)
        comps = _components(image, np.ones_like(image, dtype=bool))
        (key,) = [c for c in comps if _is_key(image, c)]
        assert keys == [int(s.texture[key][0]) - 1]
        assert (objects[key] == -1).all()
        np.testing.assert_array_equal(objects[~key], s.texture[~key] - 1)


def test_downsampled_image_carries_no_trace_of_texture():
    """Area-downsampling by the region factor erases all six textures exactly: relabelling
    the textures changes the full image but not the downsampled one, nor the mask."""
    task = SyntheticTask(size=256, region=64, textures=6, noise=0.0)
    f = task.height // task.region
    rng = np.random.default_rng(0)
    for i in range(4):
        a = task.sample(i)
        b = task.sample(i, permutation=rng.permutation(6))
        assert not np.array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        down = [torch.nn.functional.avg_pool2d(torch.from_numpy(s.image), f) for s in (a, b)]
        torch.testing.assert_close(down[0], down[1], rtol=0, atol=1e-6)


def _crop_predictor_from_pixels(task, n):
    """The optimal crop-only predictor, region by region, from that region's pixels only:
    where the region shows the key, predict the objects with its texture; elsewhere
    either nothing (choice 0) or every object (choice 1)."""
    meters = [SegmentationMeter(2), SegmentationMeter(2)]
    r = task.region
    for i in range(n):
        s = task.sample(i)
        image = s.image[0]
        preds = [np.zeros_like(s.mask), np.zeros_like(s.mask)]
        for top in range(0, task.height, r):
            for left in range(0, task.width, r):
                inside = np.zeros_like(image, dtype=bool)
                inside[top : top + r, left : left + r] = True
                comps = _components(image, inside)
                keys = [c for c in comps if _is_key(image, c)]
                objects = [c for c in comps if not _is_key(image, c)]
                for c in objects:
                    if keys:
                        hit = _signature(image, c) == _signature(image, keys[0])
                        preds[0][c] = preds[1][c] = hit
                    else:
                        preds[1][c] = 1
        for meter, pred in zip(meters, preds, strict=True):
            meter.update(torch.from_numpy(pred)[None], torch.from_numpy(s.mask)[None])
    return max(m.iou()[1].item() for m in meters)


def test_crop_ceiling_equals_a_pixel_level_blind_predictor(seg):
    n = 12
    want = _crop_predictor_from_pixels(seg, n)
    assert seg.ceilings(n)["crop"] == pytest.approx(want, abs=1e-9)


def test_downsample_ceiling_bounds_a_real_downsample_predictor(seg):
    """A predictor that sees the area-downsampled image: every object block, upsampled."""
    n, f = 12, seg.height // seg.region
    meter = SegmentationMeter(2)
    for i in range(n):
        s = seg.sample(i)
        down = torch.nn.functional.avg_pool2d(torch.from_numpy(s.image[:1]), f)[0]
        obj = (down > (BG + 0.45) / 2) & (down < 0.6)  # object blocks, not key blocks
        pred = obj.repeat_interleave(f, 0).repeat_interleave(f, 1).long()
        meter.update(pred[None], torch.from_numpy(s.mask)[None])
    ceiling = seg.ceilings(n)["downsample"]
    assert meter.iou()[1].item() <= ceiling
    assert meter.iou()[1].item() > ceiling - 0.1


def test_ceilings_are_near_one_over_textures():
    """With K textures an uninformed guess gets about 1/K of the object area right."""
    for k in (3, 4):
        c = SyntheticTask(size=256, region=64, textures=k, seed=1).ceilings(30)
        assert 0.8 / k < c["downsample"] <= c["crop"] < 1.5 / k


def test_classification_label_and_ceiling():
    task = SyntheticTask("classification", size=256, region=64, textures=3, noise=0.0)
    assert task.num_classes == 3
    for i in range(6):
        s = task.sample(i)
        image = s.image[0]
        keys = [c for c in _components(image, image > 0) if _is_key(image, c)]
        assert len(keys) == 2
        cells = {tuple(np.argwhere(k)[0] // task.region) for k in keys}
        assert len(cells) == 2  # two different regions
        textures = [int(s.texture[k][0]) - 1 for k in keys]
        assert s.label == sum(textures) % 3
    c = task.ceilings(60)
    labels = np.array([task.sample(i).label for i in range(60)])
    assert c["crop"] == c["downsample"] == np.bincount(labels).max() / 60


def test_detection_boxes_are_the_target_objects():
    task = SyntheticTask("detection", size=256, region=64, textures=3, noise=0.0, seed=2)
    seg = SyntheticTask("segmentation", size=256, region=64, textures=3, noise=0.0, seed=2)
    for i in range(4):
        d, s = task.sample(i), seg.sample(i)
        np.testing.assert_array_equal(d.image, s.image)
        slices = ndimage.find_objects(ndimage.label(s.mask)[0])
        want = sorted((sx.start, sy.start, sx.stop, sy.stop) for sy, sx in slices)
        assert sorted(map(tuple, d.boxes.astype(int).tolist())) == want
        np.testing.assert_allclose(d.points, (d.boxes[:, :2] + d.boxes[:, 2:]) / 2)
    c = task.ceilings(20)
    assert 0 < c["downsample"] <= c["crop"] < 1


def test_any_size_and_getitem():
    task = SyntheticTask(size=(200, 330), region=64, channels=2, length=3)
    item = task[2]
    assert item["image"].shape == (2, 200, 330) and item["mask"].shape == (200, 330)
    assert item["mask"].dtype == torch.int64 and len(task) == 3
    with pytest.raises(IndexError):
        task[3]
    with pytest.warns(UserWarning, match="even downsample factor"):
        task.ceilings(2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "panoptic"},
        {"textures": 7},
        {"region": 63},
        {"size": 100, "region": 128},
        {"kind": "match", "objects": 5},
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ConfigError):
        SyntheticTask(**kwargs)


def test_pairs_marks_both_twins_when_their_textures_agree():
    """Objects come in point-symmetric twins; the mask is 1 on both twins exactly when
    their textures (read from the pixels' texture map) are equal. No keys are drawn."""
    task = SyntheticTask("pairs", size=256, region=64, textures=3, noise=0.0, seed=4)
    assert task.num_classes == 2
    hits = total = 0
    for i in range(6):
        s = task.sample(i)
        labels, n = ndimage.label(s.texture > 0)
        assert n % 2 == 0 and s.image.max() <= OBJECT_MEAN + 0.26  # no bright keys
        for c in range(1, n + 1):
            ys, xs = np.nonzero(labels == c)
            twin = labels[255 - ys, 255 - xs]  # the point mirror of every pixel
            assert (twin == twin[0]).all() and twin[0] not in (0, c)
            same = s.texture[ys[0], xs[0]] == s.texture[255 - ys[0], 255 - xs[0]]
            assert (s.mask[ys, xs] == same).all()
            hits, total = hits + same, total + 1
    assert 0.15 < hits / total < 0.6  # about 1/3 of objects with 3 textures
    c = task.ceilings(30)
    assert 0.2 < c["downsample"] <= c["crop"] < 0.5


def test_the_synthetic_builder_picks_a_task_that_fits_the_head():
    from xtimage.config import load_config
    from xtimage.data.registry import build_datasets

    cfg = load_config("synthetic_seg", ["data.params={task: pairs}", "model.region=64"])
    assert build_datasets(cfg).train.kind == "pairs"
    cfg = load_config("synthetic_cls", ["data.params={task: pairs}"])
    with pytest.raises(ConfigError, match="model.head=classification"):
        build_datasets(cfg)


@pytest.fixture(scope="module")
def match():
    return SyntheticTask("match", size=128, region=32, textures=4, noise=0.0, seed=5)


def test_match_label_is_the_texture_of_the_candidate_as_bright_as_the_key(match):
    """Read off the pixels alone: the key is the largest shape; the candidates, one per
    brightness level and each texture once, lie outside its region; the label is the
    texture of the candidate whose mean brightness is the key's."""
    assert match.num_classes == 4
    for i in range(8):
        s = match.sample(i)
        image = s.image[0]
        *candidates, key = sorted(_shapes(image), key=np.sum)
        assert len(candidates) == 4
        key_cell = tuple(np.argwhere(key)[0] // match.region)
        for c in candidates:
            assert key_cell not in {tuple(p) for p in np.argwhere(c) // match.region}
        signatures = [_signature(image, c) for c in candidates]
        assert len(set(signatures)) == 4  # each texture once
        means = np.array([image[c].mean() for c in candidates])
        assert np.diff(np.sort(means)).min() > 0.1  # one candidate per level
        target = candidates[int(np.abs(means - image[key].mean()).argmin())]
        assert np.abs(means - image[key].mean()).min() < 1e-3
        assert s.label == int(s.texture[target][0]) - 1


def test_match_hides_the_label_from_one_region_and_from_the_downsampled_image(match):
    """Relabelling the textures while keeping the key's: the label changes, the key's
    region and the area-downsampled image do not (the key's region holds no candidate,
    and every texture averages to its shape's level)."""
    f = match.height // match.region
    r = match.region
    changed = 0
    for i in range(6):
        s = match.sample(i)
        key_texture = match.texture_layout(i)[0][0]
        permutation = np.roll(np.delete(np.arange(4), key_texture), 1)
        permutation = np.insert(permutation, key_texture, key_texture)  # fixes the key's
        t = match.sample(i, permutation=permutation)
        assert t.label == permutation[s.label]
        changed += t.label != s.label
        row, col = divmod(match._scene(i).key_cells[0], match.grid[1])
        window = np.s_[:, row * r : (row + 1) * r, col * r : (col + 1) * r]
        np.testing.assert_array_equal(s.image[window], t.image[window])
        down = [torch.nn.functional.avg_pool2d(torch.from_numpy(x.image), f) for x in (s, t)]
        torch.testing.assert_close(down[0], down[1], rtol=0, atol=1e-6)
    assert changed >= 4  # the label moved wherever the target is not key-textured
    c = match.ceilings(80)
    labels = np.array([match.sample(i).label for i in range(80)])
    assert c["crop"] == c["downsample"] == np.bincount(labels).max() / 80 < 0.4


def test_match_refuses_an_image_too_small_for_its_candidates():
    task = SyntheticTask("match", size=(32, 64), region=32, textures=6)
    with pytest.raises(ConfigError, match="needs 6 objects outside the key.s region"):
        task.sample(0)


@pytest.fixture(scope="module", params=[2, 4], ids=["2 textures", "4 textures"])
def present(request):
    return SyntheticTask("present", size=128, region=32, textures=request.param, noise=0.0,
                         seed=2)  # fmt: skip


def test_present_label_is_whether_an_object_wears_the_keys_texture(present):
    """Read off the pixels alone: the key (the brightest shape) has no object in its
    region, the objects wear exactly half of the textures (one of two, two of four), and
    the label is 1 when one of them is the key's."""
    assert present.num_classes == 2
    labels = []
    for i in range(12):
        s = present.sample(i)
        image = s.image[0]
        parts = _shapes(image)
        key = max(parts, key=lambda p: image[p].mean())
        objects = [p for p in parts if p is not key]
        key_cell = tuple(np.argwhere(key)[0] // present.region)
        for o in objects:
            assert key_cell not in {tuple(p) for p in np.argwhere(o) // present.region}
        worn = {_signature(image, o) for o in objects}
        assert len(worn) == present.textures // 2
        assert s.label == int(_signature(image, key) in worn)
        labels.append(s.label)
    assert 0 < sum(labels) < len(labels)


def test_present_label_survives_relabelling_and_turns_unlike_the_downsampled_image(present):
    """The label depends on which textures are equal, not on their names: relabelling
    them keeps it, and the area-downsampled image, which no texture reaches. A turn
    turns the key and the objects alike, so the label stands and training may turn these
    scenes. Both baselines guess the commonest label."""
    f = present.height // present.region
    for i in range(6):
        s = present.sample(i)
        t = present.sample(i, permutation=np.roll(np.arange(present.textures), -1))
        assert t.label == s.label
        assert not np.array_equal(t.image, s.image)
        down = [torch.nn.functional.avg_pool2d(torch.from_numpy(x.image), f) for x in (s, t)]
        torch.testing.assert_close(down[0], down[1], rtol=0, atol=1e-6)
        turned = np.rot90(s.image[0])
        (key_texture,), objects = present.texture_layout(i)  # objects: -1 off them
        key = (s.texture == 1 + key_texture) & (objects < 0)
        worn = {_signature(turned, np.rot90(objects == o)) for o in set(objects[objects >= 0])}
        assert (_signature(turned, np.rot90(key)) in worn) == bool(s.label)
    c = present.ceilings(80)
    labels = np.array([present.sample(i).label for i in range(80)])
    assert c["crop"] == c["downsample"] == np.bincount(labels).max() / 80 < 0.65


@pytest.fixture(scope="module", params=[2, 4], ids=["2 textures", "4 textures"])
def agree(request):
    return SyntheticTask("agree", size=128, region=32, textures=request.param, noise=0.0,
                         seed=4)  # fmt: skip


def test_agree_label_says_which_keys_textures_the_objects_wear(agree):
    """Read off the pixels alone: the two brightest shapes are the keys (the brighter
    first), each alone in its region; the objects wear half of the textures; the label
    is 2 x [the bright key's texture is worn] + [the dim key's is]."""
    assert agree.num_classes == 4
    labels = []
    for i in range(16):
        s = agree.sample(i)
        image = s.image[0]
        parts = sorted(_shapes(image), key=lambda p: -image[p].mean())
        (bright, dim), objects = parts[:2], parts[2:]
        assert image[bright].mean() > image[dim].mean() > max(image[o].mean() for o in objects)
        taken = {tuple(p) for o in objects for p in np.argwhere(o) // agree.region}
        for key in (bright, dim):
            assert tuple(np.argwhere(key)[0] // agree.region) not in taken
        worn = {_signature(image, o) for o in objects}
        assert len(worn) == agree.textures // 2
        assert s.label == 2 * (_signature(image, bright) in worn) + (_signature(image, dim) in worn)
        labels.append(s.label)
    assert set(labels) == {0, 1, 2, 3}


def test_agree_hides_the_label_from_one_region_and_the_downsampled_image(agree):
    """Relabelling the textures keeps the label (it says which textures are equal, not
    their names) and the area-downsampled image; a turn turns keys and objects alike, so
    training may turn these scenes. Both baselines guess the commonest label."""
    _assert_label_survives_relabelling_unlike_the_image(agree, commonest_below=0.4)
    assert agree.spec.turnable


def _assert_label_survives_relabelling_unlike_the_image(task, commonest_below):
    """Relabelling the textures keeps the label and the area-downsampled image (which no
    texture reaches), not the image; both ceilings are the commonest label's frequency."""
    f = task.height // task.region
    for i in range(6):
        s = task.sample(i)
        t = task.sample(i, permutation=np.roll(np.arange(task.textures), -1))
        assert t.label == s.label and not np.array_equal(t.image, s.image)
        down = [torch.nn.functional.avg_pool2d(torch.from_numpy(x.image), f) for x in (s, t)]
        torch.testing.assert_close(down[0], down[1], rtol=0, atol=1e-6)
    c = task.ceilings(80)
    labels = np.array([task.sample(i).label for i in range(80)])
    assert c["crop"] == c["downsample"] == np.bincount(labels).max() / 80 < commonest_below


@pytest.fixture(scope="module", params=[(128, 32, 2), (128, 32, 4), (256, 64, 6)],
                ids=["2 textures", "4 textures", "6 textures"])  # fmt: skip
def locate(request):
    size, region, textures = request.param
    return SyntheticTask("locate", size=size, region=region, textures=textures, noise=0.0,
                         seed=5)  # fmt: skip


def test_locate_label_is_the_quadrant_of_the_object_that_wears_the_keys_texture(locate):
    """Read off the pixels alone: the key (the brightest shape) has no object in its
    region; each quadrant holds one object, exactly one in the key's texture (the four
    all different where there are four textures or more); the label is its quadrant
    (row-major)."""
    assert locate.num_classes == 4
    labels = []
    for i in range(16):
        s = locate.sample(i)
        image = s.image[0]
        parts = _shapes(image)
        key = max(parts, key=lambda p: image[p].mean())
        objects = [p for p in parts if p is not key]
        key_cell = tuple(np.argwhere(key)[0] // locate.region)
        quadrant = {}
        for o in objects:
            cells = np.argwhere(o)
            assert key_cell not in {tuple(p) for p in cells // locate.region}
            halves = {tuple(p) for p in cells * 2 // [locate.height, locate.width]}
            assert len(halves) == 1  # wholly inside one quadrant
            (row, col), = halves
            quadrant[2 * row + col] = _signature(image, o)
        assert sorted(quadrant) == [0, 1, 2, 3]
        assert len(set(quadrant.values())) == (4 if locate.textures >= 4 else 2)
        worn = [q for q, signature in quadrant.items() if signature == _signature(image, key)]
        assert worn == [s.label]
        labels.append(s.label)
    assert set(labels) == {0, 1, 2, 3}


def test_locate_hides_the_label_from_one_region_and_the_downsampled_image(locate):
    """Relabelling the textures keeps the label (it names a place, not a texture) and
    the area-downsampled image, which no texture reaches; every texture is the key's
    equally often, so the key's region alone says nothing of the place. Both baselines
    guess the commonest label."""
    _assert_label_survives_relabelling_unlike_the_image(locate, commonest_below=0.45)
    assert not locate.spec.turnable  # a turn moves the quadrants


def _additive_fits(layouts, subset):
    """Whether some pooled linear classifier (logits = a sum of per-region terms, one-hot
    features of what each region sees) is right, by a margin, on every layout in subset."""
    from scipy.optimize import linprog

    d = layouts[0][0].size
    rows = []
    for x, answer in (layouts[i] for i in subset):
        for other in set(range(4)) - {answer}:  # logit[answer] - logit[other] >= 1
            row = np.zeros(4 * (d + 1))
            row[answer * d : (answer + 1) * d], row[other * d : (other + 1) * d] = -x, x
            row[4 * d + answer], row[4 * d + other] = -1, 1
            rows.append(row)
    fit = linprog(np.zeros(4 * (d + 1)), A_ub=np.array(rows), b_ub=-np.ones(len(rows)),
                  bounds=(None, None), method="highs")  # fmt: skip
    return fit.status == 0


def test_a_pooled_crop_classifier_locates_at_most_5_of_the_8_two_texture_layouts():
    """docs/synthetic.md's bound: with two textures a scene is (the key's texture k, the
    answer's quadrant a), the other quadrants wearing 1 - k. A region sees the key's
    texture or one quadrant's (position and texture); no sum of per-region terms is right
    on 6 of the 8 layouts, and one is right on 5."""
    import itertools

    layouts = []
    for k, a in itertools.product(range(2), range(4)):
        x = np.zeros(2 + 4 * 2)
        x[k] = 1  # the key's region
        for q in range(4):
            x[2 + 2 * q + (k if q == a else 1 - k)] = 1  # quadrant q's region
        layouts.append((x, a))
    assert not any(_additive_fits(layouts, s) for s in itertools.combinations(range(8), 6))
    assert any(_additive_fits(layouts, s) for s in itertools.combinations(range(8), 5))
    assert _additive_fits(layouts, range(4))  # one key texture alone: all four placements


def test_a_pooled_crop_classifier_is_right_on_at_most_5_of_the_8_two_texture_agree_layouts():
    """docs/synthetic.md's bound for ``agree``: with two textures a scene is (the bright
    key's texture b, the dim key's d, the objects' o), labelled 2 [b = o] + [d = o]. A
    region sees one key (which one, and its texture) or objects (their texture); no sum of
    per-region terms is right on 6 of the 8 layouts, and one is right on 5."""
    import itertools

    layouts = []
    for b, d, o in itertools.product(range(2), repeat=3):
        x = np.zeros(3 * 2)
        x[[b, 2 + d, 4 + o]] = 1  # the bright key's region, the dim key's, the objects'
        layouts.append((x, 2 * (b == o) + (d == o)))
    assert not any(_additive_fits(layouts, s) for s in itertools.combinations(range(8), 6))
    assert any(_additive_fits(layouts, s) for s in itertools.combinations(range(8), 5))


def test_locate_refuses_an_objects_setting():
    with pytest.raises(ConfigError, match="one object per quadrant; objects"):
        SyntheticTask("locate", size=128, region=32, objects=4)


def test_a_turn_changes_a_texture_label_so_training_does_not_turn_them(tmp_path):
    """A 90-degree turn makes stripes across into stripes down: the texture of the match
    task's target changes while its label would not. Its data sets say so, and the
    trainer then augments by jitter alone (segmentation keeps its turns)."""
    from xtimage.config import load_config
    from xtimage.data.registry import build_datasets
    from xtimage.train import Trainer

    task = SyntheticTask("match", size=128, region=32, textures=4, noise=0.0)
    i = next(i for i in range(20) if task.sample(i).label == 0)  # stripes across
    s = task.sample(i)
    target = s.texture == 1
    turned = np.rot90(s.image[0]).copy()
    assert _signature(s.image[0], target) != _signature(turned, np.rot90(target))

    def augment(preset, *extra):
        cfg = load_config(preset, ["model.region=32", "data.size=64", f"train.out={tmp_path}",
                                   "train.workers=0", *extra])  # fmt: skip
        return Trainer(cfg, overwrite=True)._loader([[0]], 0).dataset.augment

    cls = augment("synthetic_cls", "data.params={task: match, textures: 2}", "model.num_classes=2")
    assert not build_datasets(load_config("synthetic_cls")).turns_keep_labels
    present = load_config("synthetic_cls", ["data.params={task: present}", "model.num_classes=2"])
    assert build_datasets(present).turns_keep_labels  # its label names no texture
    assert (cls.flip, cls.rot90, cls.jitter > 0) == (False, False, True)
    seg = augment("synthetic_seg")
    assert (seg.flip, seg.rot90) == (True, True)
    still = augment("synthetic_seg", "data.turns=false")  # a user's choice: jitter alone
    assert (still.flip, still.rot90, still.jitter > 0) == (False, False, True)
