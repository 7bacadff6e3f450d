import importlib.util

import pytest
import torch
import torch.nn.functional as F

from xtimage.encoders.context import CONTEXT_ENCODERS, create_context_encoder
from xtimage.encoders.context.mamba import MambaMixer
from xtimage.errors import ConfigError, InputError


def tiny(**kwargs):
    """The tiny variant the tests build: width 32, 2 layers, state 8."""
    return create_context_encoder("mamba", dim=32, depth=2, d_state=8, **kwargs).eval()


def batch(n=37, b=2, dtype=torch.float32):
    tokens = torch.randn(b, n, 32, dtype=dtype)
    positions = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(1), indexing="ij"), -1)
    return tokens, positions.reshape(1, n, 2).expand(b, n, 2)


def run_in_pieces(enc, tokens, positions, mask, sizes):
    outs, state, start = [], None, 0
    for size in sizes:
        piece = slice(start, start + size)
        m = None if mask is None else mask[:, piece]
        out, state = enc(tokens[:, piece], positions[:, piece], m, state)
        outs.append(out)
        start += size
    return torch.cat(outs, dim=1), state


def reference_mixer(mixer, x, mask, conv_state, ssm_state):
    """One batch row of `MambaMixer`, token by token, skipping masked tokens plainly."""
    p = {k: v.detach() for k, v in mixer.named_parameters()}
    A = -torch.exp(p["A_log"])
    window = list(conv_state.T)  # the last d_conv - 1 real conv inputs
    h = ssm_state
    outs = {}
    for t in range(x.shape[0]):
        if not mask[t]:
            continue
        xz = p["in_proj.weight"] @ x[t]
        xi, z = xz.chunk(2)
        window = [*window, xi][-mixer.d_conv :]
        conv = sum(p["conv1d.weight"][:, 0, k] * window[k] for k in range(mixer.d_conv))
        xc = F.silu(conv + p["conv1d.bias"])
        dt_low, B, C = (p["x_proj.weight"] @ xc).split([mixer.dt_rank, *[mixer.d_state] * 2])
        dt = F.softplus(p["dt_proj.weight"] @ dt_low + p["dt_proj.bias"])
        h = torch.exp(dt[:, None] * A) * h + (dt * xc)[:, None] * B[None, :]
        y = (h @ C + p["D"] * xc) * F.silu(z)
        outs[t] = p["out_proj.weight"] @ y
        window = window[1:]
    return outs, torch.stack(window, dim=1), h


def test_registered_and_streamable_only_when_every_layer_reads_forward():
    assert "mamba" in CONTEXT_ENCODERS
    two_way = create_context_encoder("mamba", dim=32, depth=4)
    assert [layer.reverse for layer in two_way.layers] == [True, False, True, False]
    assert not two_way.streamable
    one_way = tiny(bidirectional=False)
    assert one_way.streamable and not any(layer.reverse for layer in one_way.layers)


def test_mixer_equals_a_plain_token_by_token_recurrence_with_mask_and_state():
    mixer = MambaMixer(8, d_state=4, d_conv=3, chunk_size=4).double()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    mask = torch.rand(2, 11) > 0.3
    mask[1, :4] = False
    conv_state = torch.randn(2, 16, 2, dtype=torch.float64)
    ssm_state = torch.randn(2, 16, 4, dtype=torch.float64)
    out, (conv_new, ssm_new) = mixer(x, mask, (conv_state, ssm_state))
    for b in range(2):
        outs, conv_ref, ssm_ref = reference_mixer(mixer, x[b], mask[b], conv_state[b], ssm_state[b])
        assert sorted(outs) == mask[b].nonzero().flatten().tolist()
        for t, o in outs.items():
            assert torch.allclose(out[b, t], o, atol=1e-10), (b, t)
        assert torch.allclose(conv_new[b], conv_ref, atol=1e-12)
        assert torch.allclose(ssm_new[b], ssm_ref, atol=1e-10)


@pytest.mark.parametrize("with_mask", [False, True])
def test_segments_with_carried_state_equal_the_whole_sequence(with_mask):
    enc = tiny(bidirectional=False).double()
    tokens, positions = batch(dtype=torch.float64)
    mask = (torch.rand(2, 37) > 0.25) if with_mask else None
    tokens.requires_grad_()
    whole, whole_state = enc(tokens, positions, mask)
    pieces, state = run_in_pieces(enc, tokens, positions, mask, [5, 0, 1, 13, 18])
    real = torch.ones(2, 37, dtype=torch.bool) if mask is None else mask
    assert torch.allclose(pieces[real], whole[real], atol=1e-10)
    for got, want in zip(state, whole_state, strict=True):
        assert all(torch.allclose(g, w, atol=1e-10) for g, w in zip(got, want, strict=True))
    weight = torch.randn(2, 37, 32, dtype=torch.float64) * real[..., None]
    grads = [torch.autograd.grad((out * weight).sum(), [tokens, *enc.parameters()])
             for out in (pieces, whole)]  # fmt: skip
    for g_pieces, g_whole in zip(*grads, strict=True):
        assert torch.allclose(g_pieces, g_whole, atol=1e-9)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_masked_tokens_do_not_exist_for_the_model(bidirectional):
    enc = tiny(bidirectional=bidirectional)
    tokens, positions = batch(n=20)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, [0, 3, 4, 9, 19]] = False
    mask[1, 12:] = False  # right padding of a shorter image
    tokens = torch.where(mask[..., None], tokens, 100 * torch.randn_like(tokens))
    out, _ = enc(tokens, positions, mask)
    for b in range(2):
        alone, _ = enc(tokens[b : b + 1, mask[b]], positions[b : b + 1, mask[b]])
        assert torch.allclose(out[b, mask[b]], alone[0], atol=1e-5), b


def test_two_way_stack_sees_both_sides_and_one_way_stack_is_causal():
    tokens, positions = batch(n=16, dtype=torch.float64)
    changed = tokens.clone()
    changed[:, -1] += 1
    for bidirectional in (True, False):
        enc = tiny(bidirectional=bidirectional).double()
        before, after = enc(tokens, positions)[0], enc(changed, positions)[0]
        change = (before - after)[:, :-1].abs().amax(dim=-1)  # (B, N - 1)
        if bidirectional:  # small at init (slow decays, small steps), but there
            assert (change > 1e-9).all()
        else:
            assert (change < 1e-12).all()


def test_two_way_stack_refuses_a_state_and_says_how_to_stream():
    enc = tiny()
    tokens, positions = batch()
    out, state = enc(tokens, positions)
    assert state is None
    with pytest.raises(ConfigError, match="bidirectional=False"):
        enc(tokens, positions, state=tiny(bidirectional=False)(tokens, positions)[1])


def test_backward_reaches_every_parameter():
    enc = tiny().train()
    tokens, positions = batch()
    mask = torch.rand(2, 37) > 0.2
    out, _ = enc(tokens, positions, mask)
    out[mask].square().mean().backward()
    for name, param in enc.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_bfloat16_autocast_on_cpu_stays_close_to_float32():
    enc = tiny()
    tokens, positions = batch()
    out, _ = enc(tokens, positions)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16, _ = enc(tokens, positions)
    assert torch.isfinite(out_bf16).all()
    assert (out_bf16.float() - out).norm() / out.norm() < 0.05


def test_dropout_and_drop_path_act_only_in_training():
    enc = tiny(drop=0.3, drop_path=0.5)
    plain = tiny()
    plain.load_state_dict(enc.state_dict())
    tokens, positions = batch()
    assert torch.equal(enc(tokens, positions)[0], plain(tokens, positions)[0])
    enc.train()
    assert not torch.allclose(enc(tokens, positions)[0], plain(tokens, positions)[0])


def test_heads_is_accepted_and_changes_nothing():
    with_heads, without = tiny(heads=6), tiny()
    without.load_state_dict(with_heads.state_dict())  # strict: the same parameters
    tokens, positions = batch()
    assert torch.equal(with_heads(tokens, positions)[0], without(tokens, positions)[0])


def test_bad_arguments_name_the_value():
    with pytest.raises(ConfigError, match="depth must be a positive integer, got 0"):
        create_context_encoder("mamba", dim=32, depth=0)
    with pytest.raises(ConfigError, match=r"drop must be in \[0, 1\), got 1.0"):
        tiny(drop=1.0)
    enc = tiny(bidirectional=False)
    tokens, positions = batch()
    with pytest.raises(InputError, match="width 32"):
        enc(tokens[..., :16], positions)
    state = create_context_encoder("mamba", dim=32, depth=3, bidirectional=False)(
        tokens, positions
    )[1]
    with pytest.raises(InputError, match="3 layers, the encoder 2"):
        enc(tokens, positions, state=state)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_on_gpu_stays_close_to_float32(dtype):
    enc = tiny().cuda()
    tokens, positions = (t.cuda() for t in batch())
    out, _ = enc(tokens, positions)
    with torch.autocast("cuda", dtype=dtype):
        out_low, _ = enc(tokens, positions)
        out_low.float().square().mean().backward()
    assert (out_low.float() - out).norm() / out.norm() < 0.05
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters())


@needs_cuda
@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is None, reason="needs mamba_ssm")
def test_cuda_kernel_encoder_streams_like_the_pure_path():
    kernel = tiny(bidirectional=False).cuda()
    pure = tiny(bidirectional=False, use_kernel=False).cuda()
    pure.load_state_dict(kernel.state_dict())
    tokens, positions = (t.cuda() for t in batch(n=300))
    mask = torch.rand(2, 300, device="cuda") > 0.1
    want, _ = pure(tokens, positions, mask)
    got, _ = run_in_pieces(kernel, tokens, positions, mask, [100, 37, 163])
    assert torch.allclose(got[mask], want[mask], rtol=1e-3, atol=1e-3)
