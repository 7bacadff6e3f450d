"""Transformer-XL: segments with memory equal the banded block mask; pieces equal the whole."""

import pytest
import torch

from xtimage.encoders.context import create_context_encoder, detach_state
from xtimage.encoders.context.transformer_xl import TransformerXL
from xtimage.errors import ConfigError, InputError

L, M, N = 8, 6, 37  # memory shorter than the sequence; the last segment has 5 tokens


def make(causal=False, **kwargs):
    kw = dict(dim=16, depth=2, heads=2, segment_len=L, mem_len=M, causal=causal)
    return TransformerXL(**(kw | kwargs)).double().eval()


def batch(n=N, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, n, 16, generator=g, dtype=torch.float64)
    positions = torch.randint(0, 12, (B, n, 2), generator=g)
    mask = torch.rand(B, n, generator=g) > 0.25
    mask[1, 20:] = False  # a shorter image, right-padded
    return tokens, positions, mask


def banded_reference(model, tokens, positions, mask, causal):
    """One dense pass over the whole sequence under the XL block mask, built from scratch."""
    n = tokens.shape[1]
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    start = (i // L) * L
    allowed = (j >= start - M) & (j < start + L) & mask[:, None, :]  # (B, n, n)
    if causal:
        allowed &= j <= i
    allowed |= i == j  # any finite value for masked rows, which have no key
    bias = model.rel_pos(positions, positions)  # (B, H, n, n)
    attn_mask = bias.masked_fill(~allowed[:, None], float("-inf"))[:, None]
    h = tokens
    for block in model.blocks:
        h = block(h[:, None], h, attn_mask)[:, 0]
    return model.norm(h)


def run_pieces(model, tokens, positions, mask, sizes, detach=False):
    outs, state, start = [], None, 0
    for size in sizes:
        piece = slice(start, start + size)
        out, state = model(tokens[:, piece], positions[:, piece], mask[:, piece], state)
        state = detach_state(state) if detach else state
        outs.append(out)
        start += size
    assert start == tokens.shape[1]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("causal", [False, True])
def test_whole_sequence_equals_dense_banded_block_mask(causal):
    model = make(causal)
    tokens, positions, mask = batch()
    out, _ = model(tokens, positions, mask)
    expected = banded_reference(model, tokens, positions, mask, causal)
    torch.testing.assert_close(out[mask], expected[mask], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("causal", "sizes"),
    [(False, [8, 16, 13]), (False, [24, 8, 5]), (True, [3, 10, 1, 17, 6]), (True, [37])],
)
def test_pieces_with_state_equal_whole_outputs_and_gradients(causal, sizes):
    model = make(causal)
    tokens, positions, mask = batch()
    weights = torch.randn(tokens.shape, dtype=torch.float64) * mask[..., None]

    def grads(run):
        model.zero_grad()
        x = tokens.clone().requires_grad_()
        out = run(x)
        (out * weights).sum().backward()
        return out, x.grad, [p.grad.clone() for p in model.parameters()]

    whole = grads(lambda x: model(x, positions, mask)[0])
    pieces = grads(lambda x: run_pieces(model, x, positions, mask, sizes))
    torch.testing.assert_close(pieces[0][mask], whole[0][mask], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pieces[1], whole[1], rtol=1e-10, atol=1e-10)
    for got, want in zip(pieces[2], whole[2], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_detached_state_stops_gradient_at_the_piece_border():
    model = make()
    tokens, positions, mask = batch()
    mask[:] = True
    for detach in (False, True):
        x = tokens.clone().requires_grad_()
        out = run_pieces(model, x, positions, mask, [16, 21], detach=detach)
        out[:, 16:].sum().backward()  # loss on the second piece only
        reaches_first = x.grad[:, :16].abs().sum() > 0
        assert reaches_first != detach  # memory is back-propagated unless detached
        assert x.grad[:, 16:].abs().sum() > 0


def test_state_keeps_memory_and_current_segment_only():
    model = make(causal=True)
    tokens, positions, mask = batch(n=30)
    state, start = None, 0
    for size in (5, 9, 3, 13):
        _, state = model(
            tokens[:, start : start + size],
            positions[:, start : start + size],
            mask[:, start : start + size],
            state,
        )
        start += size
        first_needed = max(0, (start // L) * L - M)
        assert state["offset"] == start
        assert state["hidden"][1].shape == (2, start - first_needed, 16)
        assert torch.equal(state["positions"], positions[:, first_needed:start])
        assert torch.equal(state["hidden"][0], tokens[:, first_needed:start])  # layer-0 input


def test_bidirectional_piece_inside_a_segment_is_refused():
    model = make()
    tokens, positions, mask = batch()
    _, state = model(tokens[:, :5], positions[:, :5], mask[:, :5])
    with pytest.raises(ConfigError, match="multiples of segment_len"):
        model(tokens[:, 5:], positions[:, 5:], mask[:, 5:], state)
    assert model.chunk_multiple == L and make(causal=True).chunk_multiple == 1


def test_fully_masked_segment_gives_finite_outputs():
    model = make()
    tokens, positions, mask = batch()
    mask[:, :20] = False
    out, _ = model(tokens, positions, mask)
    assert out.isfinite().all()


def test_autocast_bf16_stays_close_to_float32():
    model = create_context_encoder("xl", dim=32, depth=2, heads=2, segment_len=8, mem_len=8)
    tokens = torch.randn(1, 40, 32)
    positions = torch.randint(0, 20, (1, 40, 2))
    ref, _ = model(tokens, positions)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = model(tokens, positions)
    assert low.isfinite().all()
    assert (low.float() - ref).abs().mean() < 0.05 * ref.abs().mean()


def test_bad_arguments_name_the_value_and_the_fix():
    with pytest.raises(ConfigError, match="segment_len=0"):
        make(segment_len=0)
    with pytest.raises(ConfigError, match="dim=16 .* heads=3"):
        make(heads=3)
    with pytest.raises(ConfigError, match="allowed: .*mem_len"):
        create_context_encoder("transformer_xl", dim=16, memory=4)
    model = make()
    with pytest.raises(InputError, match="width 16"):
        model(torch.zeros(1, 4, 8), torch.zeros(1, 4, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="init must be 'timm' or 'torch'"):
        make(init="xavier")


def test_torch_init_scales_linear_weights_with_fan_in_and_final_norm_can_be_dropped():
    timm_init = TransformerXL(128, depth=1, heads=4)
    torch_init = TransformerXL(128, depth=1, heads=4, init="torch", final_norm=False)
    qkv = [m.attn.q.weight.detach() for m in (timm_init.blocks[0], torch_init.blocks[0])]
    assert qkv[0].std().item() == pytest.approx(0.02, rel=0.1)
    assert qkv[1].std().item() == pytest.approx((3 * 128) ** -0.5, rel=0.1)
    x, pos = torch.randn(1, 6, 128) * 5, torch.zeros(1, 6, 2, dtype=torch.long)
    out, _ = torch_init(x, pos)
    assert out.std() > 2  # not layer-normalised
