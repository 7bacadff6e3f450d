"""The Hyper context encoder against a plain PyTorch block written here."""

import math

import pytest
import torch
import torch.nn.functional as F

from xtimage.encoders.context import CONTEXT_ENCODERS, create_context_encoder
from xtimage.errors import ConfigError


def tiny(**kwargs):
    settings = dict(dim=32, depth=2, heads=2) | kwargs
    return create_context_encoder("hyper", **settings)


def batch(n=24, dim=32, real=17, dtype=torch.float32):
    tokens = torch.randn(2, n, dim, dtype=dtype)
    positions = torch.stack(
        torch.meshgrid(torch.arange(4), torch.arange(n // 4), indexing="ij"), -1
    )
    positions = positions.reshape(1, n, 2).expand(2, n, 2).clone()
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, real:] = False
    return tokens, positions, mask


def sincos(positions, dim):
    """The 2-D sin-cos table, entry by entry."""
    quarter = dim // 4
    out = torch.empty(*positions.shape[:2], dim, dtype=torch.float64)
    for b, n in torch.cartesian_prod(
        torch.arange(positions.shape[0]), torch.arange(positions.shape[1])
    ):
        row, col = positions[b, n].tolist()
        for i in range(quarter):
            freq = 10000 ** (-i / quarter)
            out[b, n, i], out[b, n, quarter + i] = math.sin(row * freq), math.cos(row * freq)
            out[b, n, 2 * quarter + i] = math.sin(col * freq)
            out[b, n, 3 * quarter + i] = math.cos(col * freq)
    return out


def rms_norm(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def reference(encoder, tokens, positions, mask, heads, causal, final_norm=True):
    """Pre-norm blocks: RMSNorm, SDPA attention, gated GELU MLP; then a final RMSNorm."""
    x = tokens + sincos(positions, tokens.shape[-1]).to(tokens.dtype)
    attn_mask = mask[:, None, None, :]
    if causal:
        attn_mask = attn_mask & torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
    for block in encoder.blocks:
        h = rms_norm(x, block.norm1.weight)
        q, k, v = (h @ block.attn.qkv.weight.T).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + a.transpose(1, 2).flatten(2) @ block.attn.proj.weight.T
        h = rms_norm(x, block.norm2.weight)
        gate, up = (h @ block.mlp.fc_in.weight.T).chunk(2, dim=-1)
        x = x + (F.gelu(gate) * up) @ block.mlp.fc_out.weight.T
    return rms_norm(x, encoder.norm.weight) if final_norm else x


@pytest.mark.parametrize(("causal", "final_norm"), [(False, True), (True, True), (False, False)])
def test_exact_range_equals_plain_reference(causal, final_norm):
    encoder = tiny(causal=causal, final_norm=final_norm).double().eval()
    for p in encoder.parameters():  # norms away from 1, so their weights count
        torch.nn.init.normal_(p, 1.0 if p.dim() == 1 else 0.0, 0.3)
    tokens, positions, mask = batch(dtype=torch.float64)
    out, state = encoder(tokens, positions, mask)
    ref = reference(encoder, tokens, positions, mask, heads=2, causal=causal, final_norm=final_norm)
    assert state is None and out.shape == tokens.shape
    torch.testing.assert_close(out[mask], ref[mask])


def test_registered_global_and_refuses_state():
    encoder = tiny()
    assert "hyper" in CONTEXT_ENCODERS and not encoder.streamable
    tokens, positions, mask = batch()
    with pytest.raises(ConfigError, match="whole token sequence"):
        encoder(tokens, positions, mask, state=torch.zeros(1))


def test_padding_leaves_real_tokens_unchanged():
    encoder = tiny().eval()
    tokens, positions, mask = batch(n=24, real=24)
    short, _ = encoder(tokens[:1, :16], positions[:1, :16])
    padded = mask[:1].clone()
    padded[:, 16:] = False
    long, _ = encoder(tokens[:1], positions[:1], padded)
    torch.testing.assert_close(long[:, :16], short)


def test_lsh_range_trains_every_parameter_and_repeats_in_eval():
    # 96 tokens with min_seq_len=32: the approximate path, with padding.
    encoder = tiny(min_seq_len=32, block_size=16, sample_size=8, drop_path=0.1, drop=0.1)
    tokens, positions, mask = batch(n=96, real=70)
    out, _ = encoder(tokens, positions, mask)
    out[mask].square().mean().backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    encoder.eval()
    first, _ = encoder(tokens, positions, mask)
    second, _ = encoder(tokens, positions, mask)
    assert torch.isfinite(first).all()
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    reseeded = tiny(min_seq_len=32, block_size=16, sample_size=8, seed=1).eval()
    reseeded.load_state_dict(encoder.state_dict())
    assert not torch.allclose(reseeded(tokens, positions, mask)[0], first)


@pytest.mark.parametrize(("mlp_chunk", "drop", "causal"),
                         [(4096, 0.1, False), (16, 0.0, False), (16, 0.0, True)])  # fmt: skip
def test_checkpointed_blocks_give_the_same_outputs_and_gradients(
    monkeypatch, mlp_chunk, drop, causal
):
    """Training mode on the approximate path: the recomputation redraws the same hashes,
    samples and dropout masks (RNG state restored); chunks of 16 tokens split the MLP;
    causal, the off-diagonal blocks' scores are recomputed head by head."""
    from xtimage.encoders.context import hyper

    monkeypatch.setattr(hyper, "MLP_CHUNK", mlp_chunk)
    settings = dict(min_seq_len=16, block_size=8, sample_size=4, drop_path=0.1, drop=drop,
                    causal=causal, heads=4)  # fmt: skip
    results = []
    for checkpoint in (False, True):
        torch.manual_seed(0)
        encoder = tiny(checkpoint=checkpoint, **settings).double()
        tokens, positions, mask = batch(n=96, real=70, dtype=torch.float64)
        tokens.requires_grad_()
        torch.manual_seed(1)
        out, _ = encoder(tokens, positions, mask)
        out[mask].square().mean().backward()
        grads = {n: p.grad for n, p in encoder.named_parameters()}
        results.append((out.detach(), tokens.grad, grads))
    (out, grad, grads), (out_c, grad_c, grads_c) = results
    torch.testing.assert_close(out_c, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_c, grad, rtol=1e-10, atol=1e-12)
    assert grads.keys() == grads_c.keys()
    for name in grads:
        assert grads[name].abs().sum() > 0, name
        torch.testing.assert_close(grads_c[name], grads[name], rtol=1e-10, atol=1e-12, msg=name)


def test_checkpointing_leaves_gradients_in_eval_mode_unchanged():
    """In eval the hashes come from a seeded generator that a recomputation would find
    advanced: checkpointing applies in training only, so eval gradients stay exact."""
    grads = []
    for checkpoint in (False, True):
        torch.manual_seed(0)
        encoder = tiny(checkpoint=checkpoint, causal=True, min_seq_len=16, block_size=8,
                       sample_size=4, heads=4).double().eval()  # fmt: skip
        tokens, positions, mask = batch(n=96, real=70, dtype=torch.float64)
        tokens.requires_grad_()
        out, _ = encoder(tokens, positions, mask)
        out[mask].square().mean().backward()
        grads.append(tokens.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_inference_without_autograd_equals_the_autograd_forward(monkeypatch, causal):
    """Without autograd the MLP runs in chunks added in place and the explicit-softmax
    attention head by head (less memory); the same numbers as the forward with autograd,
    which runs both all at once."""
    from xtimage.encoders.context import hyper

    monkeypatch.setattr(hyper, "MLP_CHUNK", 16)
    settings = dict(min_seq_len=16, block_size=8, sample_size=4, heads=4, causal=causal)
    encoder = tiny(**settings).double().eval()
    tokens, positions, mask = batch(n=96, real=70, dtype=torch.float64)
    with torch.no_grad():
        lean, _ = encoder(tokens, positions, mask)
    full, _ = encoder(tokens.requires_grad_(), positions, mask)
    torch.testing.assert_close(lean, full.detach(), rtol=1e-12, atol=1e-12)


def test_bf16_autocast_close_to_float32():
    encoder = tiny().eval()
    tokens, positions, mask = batch()
    full, _ = encoder(tokens, positions, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = encoder(tokens, positions, mask)
    err = (low.float() - full)[mask].norm() / full[mask].norm()
    assert err < 0.05


@pytest.mark.parametrize(("dim", "heads"), [(30, 2), (32, 3)])
def test_bad_width_raises_config_error(dim, heads):
    with pytest.raises(ConfigError, match=f"dim={dim}"):
        create_context_encoder("hyper", dim=dim, heads=heads)


def former_forward(encoder, tokens, positions, mask):
    """The encoder as it ran before q, k and v came padded from the projection: the
    composite RMSNorm, the projections over the N tokens, and the causal recursion
    padding its own copies of q, k and v."""
    from einops import rearrange

    from xtimage.encoders.context.hyper import sincos_2d
    from xtimage.encoders.context.hyperattention import hyper_attention

    def norm(x, module):
        return F.rms_norm(x, (x.shape[-1],), module.weight, module.eps)

    x = tokens if encoder.release else tokens + sincos_2d(positions, encoder.dim, tokens.dtype)
    for block in encoder.blocks:
        attn = block.attn
        q, k, v = rearrange(attn.qkv(norm(x, block.norm1)), "b n (three h d) -> three b h n d",
                            three=3, h=attn.heads)  # fmt: skip
        settings = {name: getattr(attn, name) for name in ("causal", "lsh_num_projs",
                    "block_size", "sample_size", "min_seq_len")}  # fmt: skip
        out = hyper_attention(q, k, v, key_mask=mask, query_mask=mask, **settings)
        out = attn.drop(attn.proj(rearrange(out, "b h n d -> b n (h d)")))
        x = x + block.drop_path1(out)
        x = x + block.drop_path2(block.mlp(norm(x, block.norm2)))
    return x if encoder.release else norm(x, encoder.norm)


@pytest.mark.parametrize("release", [False, True])
@pytest.mark.parametrize(("causal", "n"), [(False, 97), (True, 97), (True, 98), (True, 96)])
def test_padded_projection_and_lean_norm_equal_the_former_encoder(release, causal, n):
    """Causal, q, k and v come padded from the projection of rows the norm writes as zeros
    (N = 97 and 98 pad to 100; 96 needs none); with the release's biases a padded row
    projects to the bias, masked as a key and dropped as a query. The same outputs and
    gradients as the former encoder, in training (hashes, samples, dropout redrawn)."""
    results = []
    for run in ("current", "former"):
        torch.manual_seed(0)
        encoder = tiny(min_seq_len=16, block_size=8, sample_size=4, heads=4, causal=causal,
                       release=release, drop=0.1, drop_path=0.1).double()  # fmt: skip
        for name, p in encoder.named_parameters():  # biases and norm weights away from 0, 1
            torch.nn.init.normal_(p, 1.0 if "norm" in name else 0.0, 0.3)
        tokens, positions, mask = (t[:, :n].clone() for t in batch(100, 32, 70, torch.float64))
        tokens.requires_grad_()
        torch.manual_seed(1)
        if run == "current":
            out, _ = encoder(tokens, positions, mask)
        else:
            out = former_forward(encoder, tokens, positions, mask)
        out[mask].square().mean().backward()
        grads = {name: p.grad for name, p in encoder.named_parameters()}
        results.append((out.detach(), tokens.grad, grads))
    (out, grad, grads), (want, want_grad, want_grads) = results
    torch.testing.assert_close(out[mask], want[mask], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)
    assert grads.keys() == want_grads.keys()
    for name in grads:
        assert grads[name].abs().sum() > 0, name
        torch.testing.assert_close(grads[name], want_grads[name], rtol=1e-10, atol=1e-12,
                                   msg=name)  # fmt: skip


def test_lean_rms_norm_equals_the_composite_with_its_padding_zero():
    from xtimage.encoders.context.hyper import RMSNorm

    norm = RMSNorm(8, eps=1e-5).double()
    torch.nn.init.normal_(norm.weight, 1.0, 0.3)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    out = norm(x, 7)  # (2, 7, 8)
    want = F.rms_norm(x, (8,), norm.weight, 1e-5)
    assert out.shape == (2, 7, 8) and (out[:, 5:] == 0).all()
    torch.testing.assert_close(out[:, :5], want, rtol=1e-14, atol=1e-14)
    weight = torch.randn(2, 7, 8, dtype=torch.float64)
    grads = torch.autograd.grad((out * weight).sum(), (x, norm.weight))
    want_grads = torch.autograd.grad((want * weight[:, :5]).sum(), (x, norm.weight))
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("training", "most"), [(False, 10.4), (True, 18.2)])
def test_causal_release_context_memory_in_floats_a_token(training, most):
    """Peak bytes of the release's causal context (2 blocks, 768 wide, 6 heads) over
    65,537 tokens, traced on the meta device as the planner does, in (N x D) floats:
    inference 10.31 (14.12 before the padded projection, the lean norm and the freed
    level output), the checkpointed training step 18.07 (19.32), input and its gradient
    included."""
    from xtimage.engine.planner import _LiveBytes, _MetaAttention

    n, dim = 65537, 768
    with torch.device("meta"):
        encoder = tiny(dim=dim, heads=6, causal=True, release=True, checkpoint=True)
    encoder.train(training)
    tokens = torch.empty(1, n, dim, device="meta", requires_grad=training)
    positions = torch.zeros(1, n, 2, dtype=torch.long, device="meta")
    with torch.set_grad_enabled(training), _MetaAttention(), _LiveBytes() as trace:
        out, _ = encoder(tokens, positions)
        if training:
            out[:, -1].sum().backward()
    assert trace.peak / (n * dim * 4) < most
