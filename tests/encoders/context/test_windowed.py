"""Windowed attention: blocked windows equal a dense band mask; causal pieces equal the whole."""

import pytest
import torch

from xtimage.encoders.context import create_context_encoder, detach_state
from xtimage.encoders.context.windowed import MIN_BLOCK, WindowedContext
from xtimage.errors import ConfigError

N = 45  # not a multiple of any block length used below


def make(**kwargs):
    kw = dict(dim=16, depth=2, heads=2) | kwargs
    return WindowedContext(**kw).double().eval()


def batch(n=N, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, n, 16, generator=g, dtype=torch.float64)
    positions = torch.randint(0, 12, (B, n, 2), generator=g)
    mask = torch.rand(B, n, generator=g) > 0.25
    mask[-1, 30:] = False  # the last image is shorter, right-padded
    return tokens, positions, mask


def dense_reference(model, tokens, positions, mask, window, causal, num_global):
    """One dense pass over [globals, tokens] under the band mask, built from scratch."""
    B, n, D = tokens.shape
    G = num_global
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    band = ((i - j).abs() <= window // 2) & mask[:, None, :]  # (B, n, n)
    if causal:
        band &= j <= i
    allowed = torch.ones(B, G + n, G + n, dtype=torch.bool)
    allowed[:, :, G:] = mask[:, None, :]  # everyone sees the globals; globals see real tokens
    allowed[:, G:, G:] = band
    allowed |= torch.eye(G + n, dtype=torch.bool)  # any finite value for rows with no key
    bias = torch.zeros(B, model.blocks[0].attn.heads, G + n, G + n, dtype=torch.float64)
    bias[:, :, G:, G:] = model.rel_pos(positions, positions)
    attn_mask = bias.masked_fill(~allowed[:, None], float("-inf"))[:, None]  # (B, 1, H, G+n, G+n)
    h = tokens
    if G:
        h = torch.cat([model.global_tokens.expand(B, G, D), tokens], dim=1)
    for block in model.blocks:
        h = block(h[:, None], h, attn_mask)[:, 0]
    return model.norm(h[:, G:])


@pytest.mark.parametrize(
    ("window", "causal", "num_global"),
    [(1, False, 0), (6, False, 0), (7, True, 0), (2 * MIN_BLOCK + 9, False, 0), (10, False, 2)],
)
def test_blocked_windows_equal_dense_band_mask(window, causal, num_global):
    model = make(window=window, causal=causal, num_global=num_global)
    tokens, positions, mask = batch()
    out, state = model(tokens, positions, mask)
    expected = dense_reference(model, tokens, positions, mask, window, causal, num_global)
    torch.testing.assert_close(out[mask], expected[mask], rtol=1e-10, atol=1e-10)
    assert (state is None) != model.streamable


@pytest.mark.parametrize(("window", "sizes"), [(7, [3, 20, 1, 21]), (40, [17, 17, 11])])
def test_causal_pieces_with_state_equal_whole_outputs_and_gradients(window, sizes):
    model = make(window=window, causal=True)
    tokens, positions, mask = batch()
    weights = torch.randn(tokens.shape, dtype=torch.float64) * mask[..., None]

    def grads(run):
        model.zero_grad()
        x = tokens.clone().requires_grad_()
        out = run(x)
        (out * weights).sum().backward()
        return out, x.grad, [p.grad.clone() for p in model.parameters()]

    def pieces(x):
        outs, state, start = [], None, 0
        for size in sizes:
            s = slice(start, start + size)
            out, state = model(x[:, s], positions[:, s], mask[:, s], state)
            assert state["hidden"][1].shape[1] == min(start + size, window // 2)
            outs.append(out)
            start += size
        return torch.cat(outs, dim=1)

    whole = grads(lambda x: model(x, positions, mask)[0])
    streamed = grads(pieces)
    torch.testing.assert_close(streamed[0][mask], whole[0][mask], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(streamed[1], whole[1], rtol=1e-10, atol=1e-10)
    for got, want in zip(streamed[2], whole[2], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_receptive_field_is_depth_times_radius():
    model = make(window=6, depth=2)  # radius 3: token 20 sees tokens 14..26
    tokens, positions, _ = batch(B=1)  # all tokens real (no mask)
    out, _ = model(tokens, positions)
    for far, changes in ((13, False), (14, True), (26, True), (27, False)):
        moved = tokens.clone()
        moved[0, far] = torch.randn(16, dtype=torch.float64)  # LayerNorm cancels a constant shift
        assert (model(moved, positions)[0][0, 20] != out[0, 20]).any() == changes, far


def test_states_are_refused_where_streaming_cannot_be_exact():
    tokens, positions, mask = batch()
    causal = make(window=6, causal=True)
    _, state = causal(tokens[:, :10], positions[:, :10], mask[:, :10])
    for model in (make(window=6), make(window=6, num_global=1)):
        assert not model.streamable
        with pytest.raises(ConfigError, match="cannot stream"):
            model(tokens[:, 10:], positions[:, 10:], mask[:, 10:], detach_state(state))
    with pytest.raises(ConfigError, match="num_global=1 with causal=True"):
        make(window=6, causal=True, num_global=1)
    with pytest.raises(ConfigError, match="window=0"):
        make(window=0)


def test_autocast_bf16_stays_close_to_float32():
    model = create_context_encoder("windowed", dim=32, depth=2, heads=2, window=8, num_global=1)
    tokens = torch.randn(1, 40, 32)
    positions = torch.randint(0, 20, (1, 40, 2))
    ref, _ = model(tokens, positions)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = model(tokens, positions)
    assert low.isfinite().all()
    assert (low.float() - ref).abs().mean() < 0.05 * ref.abs().mean()
