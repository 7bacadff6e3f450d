"""HyperAttention against plain softmax attention written here, in float64 where it helps."""

import math

import pytest
import torch
import torch.nn.functional as F

from xtimage.encoders.context import hyperattention as ha
from xtimage.encoders.context.hyperattention import (
    angular_hash,
    attention_lse,
    causal_attention_with_part,
    causal_levels,
    gray_rank,
    hyper_attention,
    hyper_attention_lse,
    lsh_blocks,
    merge_attention,
)
from xtimage.errors import ConfigError, InputError


def reference(q, k, v, *, causal=False, key_mask=None):
    """Plain softmax attention and log-sum-exp, masks as -inf scores."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Nq, Nk)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], -math.inf)
    if causal:
        n = q.shape[2]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    return scores.softmax(-1) @ v, scores.logsumexp(-1)


def qkv(b=2, h=2, n=67, d=8, dtype=torch.float64):
    return [torch.randn(b, h, n, d, dtype=dtype, requires_grad=True) for _ in range(3)]


def right_padded(b, n, real):
    """(b, n) mask: row 0 all real, row 1 real for its first ``real`` tokens."""
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, real:] = False
    return mask


@pytest.mark.parametrize("bits", [1, 2, 3, 7])
def test_gray_rank_orders_buckets_one_bit_apart(bits):
    buckets = torch.arange(2**bits)
    rank = gray_rank(buckets, bits)
    assert torch.equal(rank.sort().values, buckets)  # a permutation
    ordered = buckets[rank.argsort()]
    flips = ordered[1:] ^ ordered[:-1]
    assert all(bin(int(f)).count("1") == 1 for f in flips)


def test_angular_hash_matches_a_plain_loop_and_ignores_scale():
    x, proj = torch.randn(20, 6), torch.randn(6, 4)
    expected = []
    for row in x:
        code = sum(2**r for r in range(4) if float(row @ proj[:, r]) > 0)
        rank = 0
        while code:  # inverse Gray code: XOR of all right shifts
            rank ^= code
            code >>= 1
        expected.append(rank)
    assert angular_hash(x, proj).tolist() == expected
    assert torch.equal(angular_hash(3.5 * x, proj), angular_hash(x, proj))


@pytest.mark.parametrize("causal", [False, True])
def test_exact_path_equals_reference(causal):
    q, k, v = qkv(n=37)
    mask = right_padded(2, 37, 29)
    ref_out, ref_lse = reference(q, k, v, causal=causal, key_mask=mask)
    out = hyper_attention(q, k, v, causal=causal, key_mask=mask)
    out2, lse = hyper_attention_lse(q, k, v, causal=causal, key_mask=mask)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(out2, ref_out)
    torch.testing.assert_close(lse, ref_lse)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_lsh_path_with_one_block_equals_exact_with_gradients(causal, padded):
    # min_seq_len=8 sends 67 tokens down the LSH path (and the causal recursion through
    # odd lengths 67, 17, 9); block_size >= N puts every key in the query's block.
    n = 67
    q, k, v = qkv(n=n)
    mask = right_padded(2, n, 50) if padded else None
    settings = dict(causal=causal, lsh_num_projs=5, block_size=128, sample_size=16, min_seq_len=8)
    out = hyper_attention(q, k, v, key_mask=mask, query_mask=mask, **settings)
    out_lse, lse = hyper_attention_lse(q, k, v, key_mask=mask, query_mask=mask, **settings)
    ref_out, ref_lse = reference(q, k, v, causal=causal, key_mask=mask)
    real = torch.ones(2, n, dtype=torch.bool) if mask is None else mask
    real = real[:, None, :].expand(2, 2, n)  # (B, H, N)
    torch.testing.assert_close(out[real], ref_out[real])
    torch.testing.assert_close(out_lse[real], ref_out[real])
    torch.testing.assert_close(lse[real], ref_lse[real])

    weight = torch.randn_like(ref_out) * real[..., None]
    grads = torch.autograd.grad((out * weight).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref_out * weight).sum(), (q, k, v))
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("causal", [False, True])
def test_padded_keys_get_no_weight_in_blocks_or_samples(causal):
    # Many blocks and samples; padded values are huge, so any weight on them shows.
    n = 200
    q, k, v = (torch.randn(2, 2, n, 8) for _ in range(3))
    v = v.clamp(-1, 1)
    mask = right_padded(2, n, 120)
    v[1, :, 120:] = 1e6
    out = hyper_attention(
        q, k, v, causal=causal, block_size=32, sample_size=16, min_seq_len=16, key_mask=mask,
        query_mask=mask, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert torch.isfinite(out).all()
    assert out[0].abs().max() <= 1 and out[1, :, :120].abs().max() <= 1


def test_merge_of_disjoint_key_sets_equals_attention_over_all():
    q, k, v = qkv(n=30)
    part = torch.rand(30) < 0.4
    none = torch.full((30,), -math.inf, dtype=torch.float64)
    bias_a = torch.zeros(30, dtype=torch.float64).masked_fill(~part, -math.inf)
    bias_b = torch.zeros(30, dtype=torch.float64).masked_fill(part, -math.inf)
    out, lse = merge_attention(*attention_lse(q, k, v, bias_a), *attention_lse(q, k, v, bias_b))
    ref_out, ref_lse = reference(q, k, v)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(lse, ref_lse)

    # An empty part (no keys) weighs nothing and keeps gradients finite.
    out, lse = merge_attention(*attention_lse(q, k, v), *attention_lse(q, k, v, none))
    torch.testing.assert_close(out, ref_out)
    grads = torch.autograd.grad(out.sum() + lse.sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref_out.sum() + ref_lse.sum(), (q, k, v))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_sampled_residual_is_unbiased():
    # One sequence repeated along the batch: the hash (shared directions) sorts every
    # copy alike, the samples differ, so batch means estimate the expectation.
    copies, n, d, block, samples = 3000, 128, 8, 16, 8
    torch.manual_seed(1)
    q, k, v = (
        0.5 * torch.randn(1, 1, n, d, dtype=torch.float64).expand(copies, 1, n, d) for _ in range(3)
    )
    mask = torch.ones(copies, n, dtype=torch.bool)
    mask[:, 100:] = False  # padding: never sampled
    blocks = lsh_blocks(
        q, k, v, projections=torch.randn(d, 4, dtype=torch.float64), block_size=block,
        sample_size=samples, key_mask=mask, query_mask=mask,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    S = blocks.block_keys
    scale = d**-0.5

    # Sampled part per sorted query: sum of exp(score + bias) and of exp(score + bias) v.
    weights = torch.exp(
        blocks.q @ blocks.k[..., S:, :].transpose(-2, -1) * scale + blocks.bias[..., S:]
    )
    est_z = weights.sum(-1)  # (C, 1, G, L)
    est_num = weights @ blocks.v[..., S:, :]  # (C, 1, G, L, D)

    # Exact residual: every real key outside the query's own block.
    keys, values, bias = blocks.k[0, 0, :, :S], blocks.v[0, 0, :, :S], blocks.bias[0, 0, :, 0, :S]
    G = keys.shape[0]
    all_k, all_v, all_bias = keys.reshape(-1, d), values.reshape(-1, d), bias.reshape(-1)
    outside = torch.arange(G * S)[None, :] // S != torch.arange(G)[:, None]  # (G, G*S)
    res_bias = all_bias + torch.zeros(G, G * S, dtype=torch.float64).masked_fill(
        ~outside, -math.inf
    )
    exact_w = torch.exp(blocks.q[0, 0] @ all_k.T * scale + res_bias[:, None, :])  # (G, L, G*S)
    exact_z, exact_num = exact_w.sum(-1), exact_w @ all_v

    for est, exact in ((est_z, exact_z), (est_num, exact_num)):
        mean, err = est.mean(0)[0], est.std(0)[0] / math.sqrt(copies)
        real = torch.isfinite(exact) & (err > 0)
        z = ((mean - exact) / err)[real]
        assert z.abs().max() < 5, f"sampled residual biased: max |z| = {z.abs().max():.1f}"
    torch.testing.assert_close(est_z.mean(0)[0], exact_z, rtol=0.03, atol=0)


def clustered(n, seed, d=32):
    """Keys from 16 Gaussian clusters; each query a near copy of a random key, so each
    row of attention is dominated by a few large entries, the case LSH is built for."""
    g = torch.Generator().manual_seed(seed)
    centres = 4 * F.normalize(torch.randn(16, d, generator=g), dim=-1)
    keys = centres[torch.randint(16, (n,), generator=g)] + 2 * torch.randn(n, d, generator=g)
    queries = keys[torch.randperm(n, generator=g)] + 0.01 * torch.randn(n, d, generator=g)
    values = torch.randn(n, d, generator=g)
    return (x[None, None] for x in (queries, keys, values))


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("n", "projs"), [(8192, 7), (16384, 9)])
def test_clustered_inputs_beat_uniform_sampling_with_the_same_key_budget(n, projs):
    # 8k at the release's settings; at 16k, two more hash bits keep buckets (n / 2**R
    # keys) well under a block, which near copies need to land in the same block.
    q, k, v = clustered(n, seed=0)
    exact = F.scaled_dot_product_attention(q, k, v)
    approx = hyper_attention(
        q, k, v, lsh_num_projs=projs, block_size=256, sample_size=256, min_seq_len=4096,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    budget = torch.randint(n, (512,), generator=torch.Generator().manual_seed(1))
    uniform = F.scaled_dot_product_attention(q, k[:, :, budget], v[:, :, budget])
    hyper_err, uniform_err = relative_error(approx, exact), relative_error(uniform, exact)
    assert uniform_err > 1.0  # the large entries are missed by uniform sampling
    assert hyper_err <= 0.5 * uniform_err
    assert hyper_err <= 0.5


def test_bf16_inputs_match_float32_closely():
    q, k, v = (torch.randn(1, 2, 600, 16).bfloat16() for _ in range(3))
    settings = dict(block_size=64, sample_size=32, min_seq_len=64)
    low = hyper_attention(q, k, v, generator=torch.Generator().manual_seed(3), **settings)
    high = hyper_attention(
        q.float(), k.float(), v.float(), generator=torch.Generator().manual_seed(3), **settings
    )
    assert low.dtype == torch.bfloat16
    assert relative_error(low.float(), high) < 0.02


def test_bad_settings_and_shapes_raise_user_errors():
    q = torch.randn(1, 1, 10, 4)
    with pytest.raises(ConfigError, match="block_size"):
        hyper_attention(q, q, q, block_size=0)
    with pytest.raises(InputError, match="as many queries as keys"):
        hyper_attention(q, q[:, :, :5], q[:, :, :5], causal=True)
    with pytest.raises(InputError, match="key_mask"):
        hyper_attention(q, q, q, key_mask=torch.ones(1, 9, dtype=torch.bool))


@pytest.mark.parametrize(
    ("n", "min_seq_len", "expected"),
    [(100, 100, (0, 100)), (200, 100, (0, 200)), (201, 100, (1, 101)), (16384, 4096, (1, 8192)),
     (32768, 4096, (2, 8192)), (67, 8, (3, 9))],
)  # fmt: skip
def test_causal_levels_stop_at_twice_min_seq_len(n, min_seq_len, expected):
    levels, leaf = causal_levels(n, min_seq_len)
    assert (levels, leaf) == expected
    assert leaf <= 2 * min_seq_len and leaf * 2**levels >= n


@pytest.mark.parametrize("masked", [False, True])
def test_causal_attention_with_part_equals_the_lse_merge_with_gradients(masked):
    # A part over other keys, known by output and lse (some rows empty), merged inside one
    # SDPA call through an extra key: the same as merging explicit softmaxes.
    b, h, n, d = 2, 2, 23, 8
    q, k, v = qkv(b, h, n, d)
    other_k, other_v = qkv(b, h, 5, d)[:2]
    part_out, part_lse = attention_lse(q, other_k, other_v)
    empty = torch.rand(b, h, n) < 0.3
    part_out = part_out.masked_fill(empty[..., None], 0.0)
    part_lse = part_lse.masked_fill(empty, -math.inf)
    mask = right_padded(b, n, 15) if masked else None
    mask = None if mask is None else mask & (torch.arange(n) != 3)  # a hole too
    got = causal_attention_with_part(q, k, v, part_out, part_lse, mask)

    causal = torch.ones(n, n, dtype=torch.bool).tril()
    allowed = causal if mask is None else causal & mask[:, None, None, :]
    bias = torch.zeros(allowed.shape, dtype=q.dtype).masked_fill(~allowed, -math.inf)
    want, _ = merge_attention(*attention_lse(q, k, v, bias), part_out, part_lse)
    real = torch.ones(b, n, dtype=torch.bool) if mask is None else mask
    real = real[:, None, :].expand(b, h, n)
    torch.testing.assert_close(got[real], want[real])

    weight = torch.randn_like(want) * real[..., None]
    inputs = (q, k, v, other_k, other_v)
    grads = torch.autograd.grad((got * weight).sum(), inputs, retain_graph=True)
    want_grads = torch.autograd.grad((want * weight).sum(), inputs)
    for g, w in zip(grads, want_grads, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("padded", [False, True])
def test_causal_fused_path_equals_explicit_path_with_many_blocks(padded):
    # Real LSH blocks and samples at three levels (300 -> 4 leaves of 75 plus padding):
    # hyper_attention (fused leaves) and hyper_attention_lse (explicit) draw the same
    # hashes and samples, so they agree, gradients included.
    n = 300
    q, k, v = qkv(n=n)
    mask = right_padded(2, n, 240) if padded else None
    settings = dict(causal=True, lsh_num_projs=4, block_size=16, sample_size=8, min_seq_len=40)
    out = hyper_attention(
        q, k, v, key_mask=mask, generator=torch.Generator().manual_seed(0), **settings
    )
    ref, _ = hyper_attention_lse(
        q, k, v, key_mask=mask, generator=torch.Generator().manual_seed(0), **settings
    )
    real = torch.ones(2, n, dtype=torch.bool) if mask is None else mask
    real = real[:, None, :].expand(2, 2, n)
    torch.testing.assert_close(out[real], ref[real])
    weight = torch.randn_like(ref) * real[..., None]
    grads = torch.autograd.grad((out * weight).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * weight).sum(), (q, k, v))
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want)


def test_samples_are_the_drawn_rows_of_the_sorted_keys_with_gradients():
    # The residual's keys and values are rows of the sorted ones, picked by indexing (its
    # backward keeps no input); the same as gathering them, gradients included.
    q, k, v = qkv(n=64)
    mask = right_padded(2, 64, 50)
    blocks = lsh_blocks(q, k, v, projections=torch.randn(8, 3, dtype=torch.float64),
                        block_size=8, sample_size=5, key_mask=mask,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    B, H, G, _, D = blocks.k.shape
    S, M = blocks.block_keys, 5
    u = torch.rand(B, H, M, generator=torch.Generator().manual_seed(0))  # the same draw
    n_real = mask.sum(-1)[:, None, None]  # (B, 1, 1)
    index = (u * n_real).long().clamp(max=n_real - 1)[..., None].expand(-1, -1, -1, D)
    weight = torch.randn(B, H, G, M, D, dtype=torch.float64)
    for x, source in ((blocks.k, k), (blocks.v, v)):
        got = x[:, :, :, S:]  # (B, H, G, M, D)
        want = x[:, :, :, :S].reshape(B, H, G * S, D).gather(2, index)[:, :, None]
        torch.testing.assert_close(got, want.expand_as(got), rtol=0, atol=0)
        grad, want_grad = (torch.autograd.grad((y * weight).sum(), source, retain_graph=True)[0]
                           for y in (got, want))  # fmt: skip
        assert grad.abs().sum() > 0
        torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)


def chained_levels(q, k, v, key_mask, levels, settings):
    """The causal recursion's off-diagonal levels as they were merged before: each level's
    part merged into the levels before it by `merge_attention`."""
    out = lse = None
    for level in range(levels):
        nodes = 2**level
        qf, kf, vf = (ha._fold(x, nodes) for x in (q, k, v))
        mask = ha._fold_mask(key_mask, nodes)
        half = qf.shape[2] // 2
        part_out, part_lse = ha._lsh_attention_lse(
            qf[:, :, half:], kf[:, :, :half], vf[:, :, :half], mask[:, :half], mask[:, half:],
            settings,
        )  # fmt: skip
        part_out = ha._unfold(F.pad(part_out, (0, 0, half, 0)), nodes)
        part_lse = ha._unfold(F.pad(part_lse, (half, 0), value=-math.inf), nodes)
        if out is None:
            out, lse = part_out, part_lse
        else:
            out, lse = merge_attention(out, lse, part_out, part_lse)
    return out, lse


@pytest.mark.parametrize("recompute_parts", [False, True])
def test_running_merge_of_the_levels_equals_the_chained_merges(recompute_parts):
    # Three levels of real LSH blocks and samples over 320 tokens (40 padded), some
    # queries without keys at any level: the running sum, rescaled by its running
    # maximum and normalised once, equals a merge_attention per level, with gradients.
    n, levels = 320, 3
    q, k, v = qkv(n=n)
    mask = right_padded(2, n, 280)
    results = []
    for run in (ha._off_diagonal, chained_levels):
        torch.manual_seed(0)  # the same hash directions and samples
        settings = ha._settings(q, 4, 16, 8, 40, None, recompute_parts)
        out, lse = run(q, k, v, mask, levels, settings)
        empty = lse == -math.inf
        weights = torch.Generator().manual_seed(1)
        w_out = torch.randn(out.shape, dtype=out.dtype, generator=weights)
        w_lse = torch.randn(lse.shape, dtype=lse.dtype, generator=weights)
        loss = (out * w_out).sum() + (lse.masked_fill(empty, 0.0) * w_lse).sum()
        results.append((out.detach(), lse.detach(), torch.autograd.grad(loss, (q, k, v))))
    (out, lse, grads), (want, want_lse, want_grads) = results
    assert (want_lse == -math.inf).any() and (want_lse > -math.inf).any()
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)
    for got, expected in zip(grads, want_grads, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_causal_up_to_twice_min_seq_len_is_exact_attention():
    # Its halves and its off-diagonal block are all within min_seq_len: exact.
    q, k, v = (torch.randn(1, 2, 64, 8) for _ in range(3))
    out = hyper_attention(q, k, v, causal=True, block_size=4, sample_size=2, min_seq_len=32)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_causal_bf16_matches_float32_closely():
    # One block per off-diagonal part (exact), so only rounding differs; the part's lse
    # enters the fused call as bf16 high and low halves.
    q, k, v = (2 * torch.randn(1, 2, 600, 16) for _ in range(3))
    settings = dict(causal=True, block_size=1024, sample_size=16, min_seq_len=64)
    low = hyper_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), **settings)
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert low.dtype == torch.bfloat16
    assert relative_error(low.float(), exact) < 0.02


def test_recomputed_parts_refuse_a_generator_that_the_backward_would_find_moved_on():
    q = torch.randn(1, 2, 64, 8, requires_grad=True)
    with pytest.raises(ConfigError, match="recompute_parts"):
        hyper_attention(q, q, q, causal=True, min_seq_len=8, block_size=8, sample_size=4,
                        recompute_parts=True, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # nothing is recomputed without autograd
        hyper_attention(q, q, q, causal=True, min_seq_len=8, block_size=8, sample_size=4,
                        recompute_parts=True, generator=torch.Generator().manual_seed(0))
