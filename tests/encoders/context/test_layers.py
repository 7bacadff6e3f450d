"""Banded attention and the 2-D relative bias against plain slow implementations."""

import math

import pytest
import torch

from xtimage.encoders.context.layers import (
    BandedAttention,
    RelativePositionBias2d,
    check_inputs,
    check_width,
    relative_bucket,
)
from xtimage.errors import ConfigError, InputError


def plain_attention(attn: BandedAttention, x, context, mask):
    """Softmax attention of x (B, Lq, D) to context (B, Lk, D), mask (B, H, Lq, Lk), float64."""
    B, Lq, D = x.shape
    H = attn.heads
    q = (x @ attn.q.weight.T + attn.q.bias).view(B, Lq, H, -1).transpose(1, 2)
    k, v = (context @ attn.kv.weight.T + attn.kv.bias).chunk(2, dim=-1)
    k = k.reshape(B, -1, H, D // H).transpose(1, 2)
    v = v.reshape(B, -1, H, D // H).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // H) + mask, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(B, Lq, D)
    return out @ attn.proj.weight.T + attn.proj.bias


def test_banded_attention_equals_per_block_plain_attention():
    B, S, b, K, G, D, H = 2, 3, 4, 7, 2, 12, 3
    attn = BandedAttention(D, H).double()
    x = torch.randn(B, S, b, D, dtype=torch.float64)
    context = torch.randn(B, (S - 1) * b + K, D, dtype=torch.float64)
    extra = torch.randn(B, G, D, dtype=torch.float64)
    mask = torch.randn(B, S, H, b, K + G, dtype=torch.float64)
    mask[..., 1] = float("-inf")
    out = attn(x, context, mask, extra)
    for s in range(S):
        keys = torch.cat([context[:, s * b : s * b + K], extra], dim=1)
        expected = plain_attention(attn, x[:, s], keys, mask[:, s])
        torch.testing.assert_close(out[:, s], expected, rtol=1e-10, atol=1e-10)


def test_relative_bucket_exact_near_log_far_and_antisymmetric():
    d = torch.arange(-600, 601)
    bucket = relative_bucket(d, buckets=8, max_distance=64)
    assert torch.equal(bucket, -relative_bucket(-d, buckets=8, max_distance=64))
    near = d.abs() < 4
    assert torch.equal(bucket[near], d[near])  # exact below buckets // 2
    positive = bucket[600:]
    assert (positive.diff() >= 0).all()  # monotone in distance
    assert positive.max() == 7 and (positive[64:] == 7).all()  # clipped from max_distance on
    assert len(positive.unique()) == 8  # every bucket used


def test_relative_bias_looks_up_both_axes_and_is_translation_invariant():
    rel = RelativePositionBias2d(heads=2, buckets=4, max_distance=8)
    q = torch.randint(0, 30, (5, 2))
    k = torch.randint(0, 30, (6, 2))
    bias = rel(q, k)  # (H, 5, 6)
    for i in range(5):
        for j in range(6):
            br, bc = (relative_bucket(q[i] - k[j], 4, 8) + 3).tolist()
            torch.testing.assert_close(bias[:, i, j], rel.table[:, br * 7 + bc])
    shift = torch.tensor([11, -3])
    torch.testing.assert_close(rel(q + shift, k + shift), bias)


def test_bad_widths_and_inputs_name_the_values():
    with pytest.raises(ConfigError, match="dim=10 .* heads=4"):
        check_width(10, 4)
    with pytest.raises(ConfigError, match="buckets=1"):
        RelativePositionBias2d(heads=2, buckets=1)
    tokens = torch.zeros(1, 5, 8)
    with pytest.raises(InputError, match="width 16 .* \\(1, 5, 8\\)"):
        check_inputs(16, tokens, torch.zeros(1, 5, 2, dtype=torch.long), None)
    with pytest.raises(InputError, match="positions"):
        check_inputs(8, tokens, torch.zeros(1, 5, 3, dtype=torch.long), None)
    with pytest.raises(InputError, match="mask must be bool"):
        check_inputs(8, tokens, torch.zeros(1, 5, 2, dtype=torch.long), torch.ones(1, 5))
