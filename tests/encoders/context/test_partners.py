"""Symmetric partners: the partner lookup against a per-token loop, and the encoder's sum."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from xtimage.encoders.context.base import IdentityContext
from xtimage.encoders.context.partners import RELATIONS, SymmetricPartners, partner_index
from xtimage.errors import ConfigError


def reference_partner(cells: dict, relation: str, r: int, c: int):
    """The partner's sequence index by the relation's plain arithmetic, or None."""
    rows = [p[0] for p in cells]
    cols = [p[1] for p in cells]
    r0, r1, c0, c1 = min(rows), max(rows), min(cols), max(cols)
    flip_r, flip_c = r0 + r1 - r, c0 + c1 - c
    rows_n, cols_n = r1 - r0 + 1, c1 - c0 + 1
    if relation in ("hflip", "vflip", "rot180", "hshift", "vshift"):
        target = {
            "hflip": (r, flip_c),
            "vflip": (flip_r, c),
            "rot180": (flip_r, flip_c),
            "hshift": (r, c0 + (c - c0 + cols_n // 2) % cols_n),
            "vshift": (r0 + (r - r0 + rows_n // 2) % rows_n, c),
        }[relation]
    else:  # the other axis's offset (mirrored first where named), rescaled to this one's

        def rescale(d, src, dst):  # round half to even, as torch
            return round(d * (dst - 1) / max(src - 1, 1))

        dr, dc = r - r0, c - c0
        mr, mc = rows_n - 1 - dr, cols_n - 1 - dc
        tr, tc = {
            "transpose": (rescale(dc, cols_n, rows_n), rescale(dr, rows_n, cols_n)),
            "antitranspose": (rescale(mc, cols_n, rows_n), rescale(mr, rows_n, cols_n)),
            "rot90": (rescale(dc, cols_n, rows_n), rescale(mr, rows_n, cols_n)),
            "rot270": (rescale(mc, cols_n, rows_n), rescale(dr, rows_n, cols_n)),
        }[relation]
        target = (r0 + tr, c0 + tc)
    return cells.get(target)


@st.composite
def token_grids(draw):
    """A batch of images' token positions (shuffled, some dropped, padded) and masks."""
    batch = draw(st.integers(1, 3))
    sequences = []
    for _ in range(batch):
        h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
        r_off, c_off = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        cells = [(r_off + r, c_off + c) for r in range(h) for c in range(w)]
        keep = draw(st.lists(st.booleans(), min_size=len(cells), max_size=len(cells)))
        cells = [p for p, k in zip(cells, keep, strict=True) if k or not any(keep)]
        order = draw(st.permutations(range(len(cells))))
        sequences.append([cells[i] for i in order])
    n = max(map(len, sequences)) + draw(st.integers(0, 2))
    positions = torch.zeros(batch, n, 2, dtype=torch.long)
    mask = torch.zeros(batch, n, dtype=torch.bool)
    for b, cells in enumerate(sequences):
        positions[b, : len(cells)] = torch.tensor(cells)
        mask[b, : len(cells)] = True
    positions[~mask] = draw(st.integers(0, 9))  # padding sits anywhere, even on a real cell
    return positions, mask


@given(token_grids(), st.sampled_from(sorted(RELATIONS)))
def test_partner_index_matches_the_relation_token_by_token(grid, relation):
    positions, mask = grid
    index, found = partner_index(positions, mask, relation)
    for b in range(positions.shape[0]):
        cells = {
            tuple(positions[b, i].tolist()): i for i in range(positions.shape[1]) if mask[b, i]
        }
        for i in range(positions.shape[1]):
            if not mask[b, i]:
                assert not found[b, i]
                continue
            expected = reference_partner(cells, relation, *positions[b, i].tolist())
            assert bool(found[b, i]) == (expected is not None)
            if expected is not None:
                assert int(index[b, i]) == expected


def _full_grid(rows: int, cols: int) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([r.flatten(), c.flatten()], -1)[None]  # (1, rows * cols, 2)


def test_the_relations_compose_as_the_symmetries_of_a_square():
    positions = _full_grid(6, 6)
    perm = {}
    for relation in RELATIONS:
        index, found = partner_index(positions, None, relation)
        assert found.all()
        perm[relation] = index[0]  # token i reads token perm[i]
    identity = torch.arange(36)
    for involution in ("hflip", "vflip", "rot180", "transpose", "antitranspose", "hshift"):
        assert torch.equal(perm[involution][perm[involution]], identity), involution
    assert torch.equal(perm["rot90"][perm["rot90"]], perm["rot180"])
    assert torch.equal(perm["rot90"][perm["rot270"]], identity)
    assert torch.equal(perm["hflip"][perm["vflip"]], perm["rot180"])
    assert torch.equal(positions[0, perm["rot180"]], torch.tensor([5, 5]) - positions[0])


def test_flips_and_shifts_are_exact_on_grids_of_any_shape():
    positions = _full_grid(5, 8)
    index, _ = partner_index(positions, None, "rot180")
    assert torch.equal(positions[0, index[0]], torch.tensor([4, 7]) - positions[0])
    index, _ = partner_index(positions, None, "hshift")
    assert torch.equal(positions[0, index[0], 1], (positions[0, :, 1] + 4) % 8)


@pytest.mark.parametrize("kind", ["linear", "gate"])
def test_symmetric_partners_adds_a_projection_of_each_partner_and_nothing_without_one(kind):
    torch.manual_seed(0)
    dim = 6
    encoder = SymmetricPartners(IdentityContext(dim), ["hflip", "rot90"], kind).double()
    for proj in encoder.proj:
        nn.init.normal_(proj.weight)
        nn.init.normal_(proj.bias)
    if kind == "gate":  # a fixed orthogonal map, then a scale and a shift per channel
        gate = encoder.proj[0]
        rotation = gate.rotation
        eye = torch.eye(dim, dtype=torch.float64)
        torch.testing.assert_close(rotation @ rotation.T, eye, rtol=0, atol=1e-6)  # float32 draw
        assert not torch.allclose(rotation, encoder.proj[1].rotation)  # one per relation
        x = torch.randn(3, dim, dtype=torch.float64)
        torch.testing.assert_close(gate(x), (rotation @ x.T).T * gate.weight + gate.bias)
        assert sum(p.numel() for p in encoder.parameters()) == 2 * 2 * dim  # learned
    tokens = torch.randn(1, 4, dim, dtype=torch.float64)
    # a 2 x 2 grid with its top-right cell skipped (padding in its place)
    positions = torch.tensor([[[0, 0], [1, 0], [1, 1], [0, 0]]])
    mask = torch.tensor([[True, True, True, False]])
    out, state = encoder(tokens, positions, mask)
    hflip, rot90 = encoder.proj
    # hflip: (0,0)->(0,1) skipped, (1,0)<->(1,1); rot90 (y, x)->(x, 1-y):
    # (0,0)->(0,1) skipped, (1,0)->(0,0), (1,1)->(1,0)
    expected = tokens.clone()
    expected[0, 1] += hflip(tokens[0, 2]) + rot90(tokens[0, 0])
    expected[0, 2] += hflip(tokens[0, 1]) + rot90(tokens[0, 1])
    torch.testing.assert_close(out[0, :3], expected[0, :3], rtol=0, atol=1e-12)
    assert state is None and not encoder.streamable


@pytest.mark.parametrize("kind", ["linear", "gate"])
def test_a_fresh_wrapper_computes_the_inner_encoder_and_draws_no_random_numbers(kind):
    """Zero-initialised projections: wrapping changes neither the output nor the seed's
    other weights, and the projections still get gradients (they train from step one)."""

    class Linear(IdentityContext):
        def __init__(self, dim):
            super().__init__(dim)
            self.mix = nn.Linear(dim, dim)

        def forward(self, tokens, positions, mask=None, state=None):
            return self.mix(tokens), None

    torch.manual_seed(0)
    plain = Linear(5)
    after_plain = torch.rand(1)
    torch.manual_seed(0)
    wrapped = SymmetricPartners(Linear(5), ["hflip", "rot180"], kind)
    assert torch.equal(torch.rand(1), after_plain)  # the wrapper drew nothing
    tokens = torch.randn(2, 6, 5)
    positions = torch.stack(torch.meshgrid(torch.arange(2), torch.arange(3), indexing="ij"), -1)
    positions = positions.reshape(1, 6, 2).expand(2, 6, 2)
    out, _ = wrapped(tokens, positions)
    assert torch.equal(out, plain(tokens, positions)[0])
    out.square().sum().backward()
    assert all(proj.weight.grad.abs().sum() > 0 for proj in wrapped.proj)


def test_symmetric_partners_forward_the_inner_encoders_checkpoint_switch():
    class Recomputable(IdentityContext):
        recomputable = True

    encoder = SymmetricPartners(Recomputable(4), ["vflip"])
    assert encoder.recomputable and not encoder.checkpoint
    encoder.checkpoint = True
    assert encoder.inner.checkpoint is True


@pytest.mark.parametrize(
    ("relations", "match"),
    [(["mirror"], "unknown relation"), (["hflip", "hflip"], "twice"), ([], "empty")],
)
def test_bad_relations_are_refused(relations, match):
    with pytest.raises(ConfigError, match=match):
        SymmetricPartners(IdentityContext(4), relations)
    with pytest.raises(ConfigError, match="partner_proj 'diagonal': use one of"):
        SymmetricPartners(IdentityContext(4), ["hflip"], "diagonal")


def test_partner_gradients_reach_the_partner_token():
    encoder = SymmetricPartners(IdentityContext(3), ["hflip"]).double()
    nn.init.eye_(encoder.proj[0].weight)
    tokens = torch.zeros(1, 3, 3, dtype=torch.float64, requires_grad=True)
    positions = torch.tensor([[[0, 0], [0, 1], [0, 2]]])
    out, _ = encoder(tokens, positions)
    out[0, 0].sum().backward()  # token 0's partner under hflip is token 2
    assert torch.equal(tokens.grad[0, :, 0], torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
