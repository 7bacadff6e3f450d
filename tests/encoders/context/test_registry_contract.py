"""The context-encoder contract, checked on every registered encoder (STYLE.md habit 13).

Registering an encoder without a tiny variant here fails `test_every_encoder_has_a_tiny_config`:
add its entry to `TINY_CONFIGS` (width 32, a couple of layers, CPU float32, well under a
second a test).
"""

import pytest
import torch

from xtimage.encoders.context import CONTEXT_ENCODERS, create_context_encoder
from xtimage.errors import ConfigError

DIM, N = 32, 37

TINY_CONFIGS = {
    "none": dict(dim=DIM),
    "xl": dict(dim=DIM, depth=2, heads=2, segment_len=8, mem_len=6),
    "transformer_xl": dict(dim=DIM, depth=2, heads=2, segment_len=8, mem_len=12, causal=True),
    "windowed": dict(dim=DIM, depth=2, heads=2, window=6, num_global=1),
    "mamba": dict(dim=DIM, depth=2, d_state=8, bidirectional=False),
    "hyper": dict(dim=DIM, depth=2, heads=2, min_seq_len=16, block_size=8, sample_size=4),
}

NAMES = CONTEXT_ENCODERS.names()


def build(name):
    if name not in TINY_CONFIGS:
        pytest.fail(f"context encoder '{name}' has no entry in TINY_CONFIGS ({__file__})")
    return create_context_encoder(name, **TINY_CONFIGS[name]).eval()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(2, N, DIM, generator=g)
    positions = torch.randint(0, 10, (2, N, 2), generator=g)
    mask = torch.rand(2, N, generator=g) > 0.2
    mask[1, 25:] = False  # the second image is shorter, right-padded
    return tokens, positions, mask


def piece_sizes(multiple: int, n: int) -> list[int]:
    """Uneven pieces (base, 2 * base, base, ...) aligned to ``multiple``, any last piece."""
    base = multiple * max(1, round(6 / multiple))
    sizes, step = [], 0
    while sum(sizes) < n:
        sizes.append(min(base * (1 + step % 2), n - sum(sizes)))
        step += 1
    return sizes


def test_every_encoder_has_a_tiny_config():
    assert set(NAMES) <= set(TINY_CONFIGS), sorted(set(NAMES) - set(TINY_CONFIGS))


@pytest.mark.parametrize("name", NAMES)
def test_forward_keeps_shape_and_is_finite(name):
    enc = build(name)
    tokens, positions, mask = batch()
    out, _ = enc(tokens, positions, mask)
    assert enc.dim == DIM and isinstance(enc.streamable, bool)
    assert out.shape == tokens.shape and out.dtype == tokens.dtype
    assert out[mask].isfinite().all()


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter_without_nan(name):
    enc = build(name).train()
    tokens, positions, mask = batch()
    x = tokens.clone().requires_grad_()
    out, _ = enc(x, positions, mask)
    (out[mask] * torch.randn_like(out[mask])).sum().backward()
    assert x.grad.isfinite().all() and x.grad[mask].abs().sum() > 0
    for pname, p in enc.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert p.grad.isfinite().all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"


@pytest.mark.parametrize("name", NAMES)
def test_masked_tokens_do_not_change_real_outputs(name):
    enc = build(name)
    tokens, positions, mask = batch()
    out, _ = enc(tokens, positions, mask)
    noise = torch.randn_like(tokens) * 10
    tokens2 = torch.where(mask[..., None], tokens, noise)
    positions2 = torch.where(mask[..., None], positions, torch.randint_like(positions, 0, 99))
    out2, _ = enc(tokens2, positions2, mask)
    torch.testing.assert_close(out2[mask], out[mask])


@pytest.mark.parametrize("name", NAMES)
def test_streamed_equals_whole_where_streamable(name):
    enc = build(name)
    if not enc.streamable:
        pytest.skip(f"{name} (as configured) is not streamable")
    tokens, positions, mask = batch()
    sizes = piece_sizes(getattr(enc, "chunk_multiple", 1), N)
    assert len(sizes) >= 3

    def run(pieces):
        enc.zero_grad()
        x = tokens.clone().requires_grad_()
        if pieces:
            outs, state, start = [], None, 0
            for size in sizes:
                s = slice(start, start + size)
                out, state = enc(x[:, s], positions[:, s], mask[:, s], state)
                outs.append(out)
                start += size
            out = torch.cat(outs, dim=1)
        else:
            out, _ = enc(x, positions, mask)
        (out[mask] * weights).sum().backward()
        return out[mask], x.grad, [p.grad for p in enc.parameters()]

    weights = torch.randn(int(mask.sum()), DIM)
    streamed, whole = run(pieces=True), run(pieces=False)
    torch.testing.assert_close(streamed[0], whole[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(streamed[1], whole[1], rtol=1e-4, atol=1e-5)
    for got, want in zip(streamed[2], whole[2], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_argument_lists_the_valid_ones(name):
    with pytest.raises(ConfigError, match="allowed: .*dim"):
        create_context_encoder(name, **TINY_CONFIGS.get(name, {}), not_an_argument=1)
