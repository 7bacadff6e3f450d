"""HyperAttention: approximate softmax attention in near-linear time.

Han et al., "HyperAttention: Long-context Attention in Near-Linear Time", ICLR 2024
(arXiv 2310.05869), the attention of xT's "Hyper" context encoder (Gupta et al., ICML 2024).

Non-causal, for more than ``min_seq_len`` keys:

1. Hash queries and keys by angular LSH: the signs of ``lsh_num_projs`` random
   projections give a bucket; buckets are ranked along a Gray code, so neighbouring
   ranks differ in one sign (one hyperplane) and sorting puts similar directions together.
2. Sort queries and keys by rank and cut both into the same number of blocks (about
   ``block_size`` keys each). Each query block attends exactly to its key block.
3. Residual: ``sample_size`` keys drawn uniformly (with replacement) from all real keys,
   shared by every query; a sample that lies in the query's own block is dropped (it is
   counted exactly already) and the others weigh ``n_keys / sample_size``, so the sampled
   sum is an unbiased estimate of the softmax mass outside the block.
4. Merge both parts by their log-sum-exps. One softmax over the concatenated keys, with
   ``log(n_keys / sample_size)`` added to the sampled keys' scores, is that merge exactly;
   it lets one ``scaled_dot_product_attention`` call do blocks and samples together, so
   fused kernels are used where they exist.

Causal, for more than ``min_seq_len`` keys: split the sequence in halves; the two diagonal
blocks recurse causally, the off-diagonal block (second-half queries, first-half keys) is
the non-causal path; both are merged by log-sum-exp. A part of at most ``2 * min_seq_len``
tokens is exact causal attention (its halves and its off-diagonal block are all within
``min_seq_len``), so the recursion stops there (`causal_levels`), and it is run flattened:
the off-diagonal blocks of every level first (explicit softmaxes, for their log-sum-exps,
over blocks of ``block_size`` plus samples: linear in N), merged into one part per query;
then every leaf is one causal ``scaled_dot_product_attention`` call that merges that part
in as one extra key per query (`causal_attention_with_part`), so the quadratic work runs
in fused kernels, and no log-sum-exp is needed from them. Up to ``2 * min_seq_len``
tokens this is exactly causal SDPA.

Masks: padded keys (``key_mask`` False) are sorted last, get -inf in their block and are
never sampled; padded queries (``query_mask`` False) are sorted last so that they take no
block from real queries. A query with no real key gets zeros.

Differences from the authors' code (github.com/insuhan/hyper-attn), for the record: the
bucket order is the inverse Gray code (theirs maps bucket b to gray(b), which for more than
two projections puts buckets that differ in two bits side by side); the exact/approximate
switch looks at the key length; padding tokens are masked instead of attended to as zeros.

Dimensions: B batch, H heads, N sequence (Nq queries, Nk keys), D head width, R LSH
projections, G blocks, L queries per block, S keys per block, M samples.

Over 500 lines because it is one algorithm (hashing, block-sorted and sampled attention,
their log-sum-exp merge, the causal recursion), read against the paper top to bottom.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange

from xtimage.errors import ConfigError, InputError
from xtimage.runtime import autocast_off, recompute

NEG_INF = float("-inf")
MASKED = -1e30  # a masked score, finite: far below any real one, exp() of it is 0


def gray_rank(bits: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Rank of each bucket along the reflected Gray code (the inverse Gray code).

    Buckets of consecutive ranks differ in exactly one bit, so sorting by rank keeps
    buckets that share all but one hyperplane side by side.
    """
    rank = bits.clone()
    for shift in range(1, num_bits):
        rank ^= bits >> shift
    return rank


def angular_hash(x: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """Angular LSH bucket rank of each vector: signs of random projections, Gray-ranked.

    Args:
        x: vectors, (..., N, D).
        projections: random directions, (D, R).

    Returns:
        int64 ranks in ``[0, 2**R)``, (..., N).
    """
    # In float32 at least, autocast off: a bf16 copy of x hashes as x itself does.
    dtype = torch.promote_types(x.dtype, torch.float32)
    with autocast_off(x.device):
        signs = (x.to(dtype) @ projections.to(dtype)) > 0  # (..., N, R)
    powers = 2 ** torch.arange(projections.shape[1], device=x.device)  # (R,)
    return gray_rank((signs.long() * powers).sum(-1), projections.shape[1])  # (..., N)


def attention_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and its log-sum-exp, by explicit scores (SDPA gives no lse).

    -inf in ``bias`` enters as `MASKED` (finite), so that a row without real keys stays
    finite through softmax and its gradient; such rows are then set to out 0, lse -inf.
    Few passes over the scores: one fused ``baddbmm`` where it applies, ``softmax``, and
    the lse read off the largest weight.

    Args:
        q: (..., L, D); k, v: (..., S, D).
        bias: added to the scaled scores, -inf to mask; broadcast to (..., L, S).

    Returns:
        out (..., L, D) in v's dtype, lse (..., L) in at least float32; rows without a
        finite score give out 0 and lse -inf, with finite gradients.
    """
    dtype = torch.promote_types(q.dtype, torch.float32)
    *batch, L, D = q.shape
    S = k.shape[-2]
    if bias is not None:
        bias = bias.to(dtype).clamp(min=MASKED)
    if q.dtype == dtype and bias is not None and bias.shape[:-2] == tuple(batch):
        # One fused call: bias + scale * q @ k^T, the bias broadcast over queries.
        scores = torch.baddbmm(
            bias.reshape(-1, bias.shape[-2], S),
            q.reshape(-1, L, D),
            k.reshape(-1, S, D).transpose(1, 2),
            alpha=D**-0.5,
        ).view(*batch, L, S)
    else:
        scores = (q @ k.transpose(-2, -1)).to(dtype) * D**-0.5  # (..., L, S)
        if bias is not None:
            scores = scores + bias
    p = scores.softmax(-1)  # (..., L, S)
    # lse from the largest weight (>= 1/S, never underflows): lse = s_j - log p_j.
    top, where = p.max(-1, keepdim=True)  # (..., L, 1)
    lse = (scores.gather(-1, where) - top.log()).squeeze(-1)  # (..., L)
    empty = (lse < MASKED / 2).detach()
    out = p.to(v.dtype) @ v  # (..., L, D)
    return out.masked_fill(empty[..., None], 0.0), lse.masked_fill(empty, NEG_INF)


def merge_attention(
    out1: torch.Tensor, lse1: torch.Tensor, out2: torch.Tensor, lse2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the union of two disjoint key sets, from each set's result.

    The weight of part 1 is ``c = 1 / (1 + exp(lse2 - lse1))``; -inf parts (no keys)
    weigh nothing, with finite gradients.

    Args:
        out1, out2: (..., N, D); lse1, lse2: (..., N).
    """
    top = torch.maximum(lse1, lse2).detach()  # (..., N)
    empty = top == NEG_INF
    top = top.masked_fill(empty, 0.0)
    w1, w2 = (lse1 - top).exp(), (lse2 - top).exp()  # (..., N)
    z = (w1 + w2).masked_fill(empty, 1.0)
    out = (w1 / z).unsqueeze(-1) * out1 + (w2 / z).unsqueeze(-1) * out2  # (..., N, D)
    lse = (z.log() + top).masked_fill(empty, NEG_INF)
    return out.to(out1.dtype), lse


def _key_bias(key_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, Nk) bool -> (B, 1, 1, Nk) additive bias, 0 for real keys and -inf for padding."""
    if key_mask is None:
        return None
    zeros = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device)
    return zeros.masked_fill(~key_mask, NEG_INF)[:, None, None, :]


def _causal_bias(
    n: int, key_mask: torch.Tensor | None, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(B or 1, 1, N, N) additive bias of causal attention with padded keys."""
    future = torch.ones(n, n, dtype=torch.bool, device=device).triu(1)  # (N, N)
    bias = torch.zeros(n, n, dtype=dtype, device=device).masked_fill(future, NEG_INF)
    bias = bias[None, None]  # (1, 1, N, N)
    key_bias = _key_bias(key_mask, dtype)
    return bias if key_bias is None else bias + key_bias


def exact_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact softmax attention by ``scaled_dot_product_attention``, with padded keys."""
    if key_mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    mask = key_mask[:, None, None, :]  # (B, 1, 1, Nk)
    if causal:
        n = q.shape[2]
        mask = mask & torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class LshBlocks(NamedTuple):
    """Queries in sorted blocks, each with its keys (own block, then the samples)."""

    q: torch.Tensor  # (B, H, G, L, D) sorted queries
    k: torch.Tensor  # (B, H, G, S + M, D)
    v: torch.Tensor  # (B, H, G, S + M, D)
    bias: torch.Tensor  # (B, H, G, 1, S + M) 0, -inf, or log(n_real / M) on samples
    q_order: torch.Tensor  # (B, H, Nq) original index of each sorted query
    block_keys: int  # S: keys per block; the first S of the S + M are the block's own


def _sort_pad(x: torch.Tensor, order: torch.Tensor, length: int) -> torch.Tensor:
    """x (B, H, N, D) gathered in ``order`` (B, H, N), zero-padded to ``length``."""
    index = order.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1])
    x = x.gather(2, index)  # (B, H, N, D)
    return F.pad(x, (0, 0, 0, length - x.shape[2]))


def lsh_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    projections: torch.Tensor,
    block_size: int,
    sample_size: int,
    key_mask: torch.Tensor | None = None,
    query_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> LshBlocks:
    """Sort by angular LSH, cut into blocks, and draw the residual samples (steps 1-3)."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    sentinel = 2 ** projections.shape[1]  # after every bucket: padding goes last
    q_rank = angular_hash(q, projections)  # (B, H, Nq)
    k_rank = angular_hash(k, projections)  # (B, H, Nk)
    if query_mask is not None:
        q_rank = q_rank.masked_fill(~query_mask[:, None, :], sentinel)
    if key_mask is not None:
        k_rank = k_rank.masked_fill(~key_mask[:, None, :], sentinel)
    q_order = q_rank.argsort(dim=-1, stable=True)  # (B, H, Nq)
    k_order = k_rank.argsort(dim=-1, stable=True)  # (B, H, Nk)

    # Balanced blocks: G blocks of S keys and L queries; for Nq == Nk, L == S, so a real
    # query's block always starts with a real key (both are sorted real-first).
    G = math.ceil(Nk / block_size)
    S, L = math.ceil(Nk / G), math.ceil(Nq / G)
    qs = _sort_pad(q, q_order, G * L).view(B, H, G, L, D)
    ks = _sort_pad(k, k_order, G * S)  # (B, H, G*S, D)
    vs = _sort_pad(v, k_order, G * S)
    if key_mask is None:
        real = torch.ones(B, H, Nk, dtype=torch.bool, device=k.device)
    else:
        real = key_mask[:, None, :].expand(B, H, Nk).gather(2, k_order)  # (B, H, Nk)
    real = F.pad(real, (0, G * S - Nk), value=False)  # (B, H, G*S)
    dtype = torch.promote_types(q.dtype, torch.float32)
    bias = torch.zeros(real.shape, dtype=dtype, device=q.device).masked_fill(~real, NEG_INF)
    bias = bias.view(B, H, G, 1, S)
    ks, vs = ks.view(B, H, G, S, D), vs.view(B, H, G, S, D)

    if G > 1 and sample_size > 0:
        # Real keys are sorted first, so a uniform draw over [0, n_real) is over real keys.
        M = sample_size
        n_real = real.sum(-1, keepdim=True)  # (B, H, 1)
        u = torch.rand(B, H, M, generator=generator, device=_device(generator, q))
        pick = (u.to(q.device) * n_real).long().clamp(max=n_real - 1).clamp(min=0)  # (B,H,M)
        flat_k, flat_v = ks.view(B, H, G * S, D), vs.view(B, H, G * S, D)
        # indexing, not gather: its backward keeps the indices, gather's also its input
        b, h = torch.arange(B, device=q.device)[:, None, None], torch.arange(H, device=q.device)
        k_samp = flat_k[b, h[:, None], pick].unsqueeze(2).expand(B, H, G, M, D)
        v_samp = flat_v[b, h[:, None], pick].unsqueeze(2).expand(B, H, G, M, D)
        own = (pick // S).unsqueeze(2) == torch.arange(G, device=q.device)[:, None]  # (B,H,G,M)
        log_w = (n_real.to(dtype) / M).log().unsqueeze(-1)  # (B, H, 1, 1); -inf if none
        samp_bias = log_w.expand(B, H, G, M).masked_fill(own, NEG_INF)  # (B, H, G, M)
        ks = torch.cat([ks, k_samp], dim=3)  # (B, H, G, S+M, D)
        vs = torch.cat([vs, v_samp], dim=3)
        bias = torch.cat([bias, samp_bias.unsqueeze(3)], dim=-1)  # (B, H, G, 1, S+M)
    return LshBlocks(qs, ks, vs, bias, q_order, S)


def _device(generator: torch.Generator | None, like: torch.Tensor) -> torch.device:
    return like.device if generator is None else generator.device


def _unsort(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Rows of x (B, H, G*L, ...) back from sorted ``order`` (B, H, N) to input order."""
    n = order.shape[-1]
    x = x[:, :, :n]
    index = order.view(*order.shape, *([1] * (x.dim() - 3))).expand_as(x)
    return torch.zeros_like(x).scatter(2, index, x)


class _Settings(NamedTuple):
    projections: torch.Tensor  # (D, R)
    block_size: int
    sample_size: int
    min_seq_len: int
    generator: torch.Generator | None
    recompute_parts: bool = False


def _blocks(q, k, v, key_mask, query_mask, settings: _Settings) -> LshBlocks:
    return lsh_blocks(
        q,
        k,
        v,
        projections=settings.projections,
        block_size=settings.block_size,
        sample_size=settings.sample_size,
        key_mask=key_mask,
        query_mask=query_mask,
        generator=settings.generator,
    )


def _lsh_attention(q, k, v, key_mask, query_mask, settings: _Settings) -> torch.Tensor:
    """Non-causal LSH attention by one SDPA call over blocks and samples (step 4)."""
    blocks = _blocks(q, k, v, key_mask, query_mask, settings)
    B, H, G, L, D = blocks.q.shape
    out = F.scaled_dot_product_attention(
        blocks.q.reshape(B * H, G, L, D),
        blocks.k.reshape(B * H, G, -1, D),
        blocks.v.reshape(B * H, G, -1, D),
        attn_mask=blocks.bias.reshape(B * H, G, 1, -1).to(q.dtype),
    )  # (B*H, G, L, D)
    return _unsort(out.view(B, H, G * L, D), blocks.q_order)  # (B, H, Nq, D)


def _head_by_head(q, k, v, bias, recompute_parts: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention_lse` over (B, H, ...) one head at a time, so that one head's scores
    exist at once (H x fewer bytes): without autograd, and with it when
    ``recompute_parts`` (each head's scores recomputed in the backward, not kept).
    Otherwise all heads at once, every head's weights kept for the backward."""
    grad = torch.is_grad_enabled()
    if (grad and not recompute_parts) or q.shape[1] == 1:
        return attention_lse(q, k, v, bias)
    # split, not slices: the backward joins the heads' gradients by one cat, where each
    # slice's would be a zero tensor of all heads, summed one head at a time
    biases = bias.split(1, 1) if bias.shape[1] > 1 else [bias] * q.shape[1]
    heads = [(recompute if grad else _call)(attention_lse, *parts)
             for parts in zip(q.split(1, 1), k.split(1, 1), v.split(1, 1), biases,
                              strict=True)]  # fmt: skip
    return torch.cat([o for o, _ in heads], 1), torch.cat([lse for _, lse in heads], 1)


def _lsh_attention_lse(q, k, v, key_mask, query_mask, settings: _Settings):
    """Non-causal LSH attention and its log-sum-exp, by explicit softmax."""
    blocks = _blocks(q, k, v, key_mask, query_mask, settings)
    out, lse = _head_by_head(blocks.q, blocks.k, blocks.v, blocks.bias,
                             settings.recompute_parts)  # (B,H,G,L,D), (B,H,G,L)
    B, H, G, L, D = out.shape
    out = _unsort(out.reshape(B, H, G * L, D), blocks.q_order)  # (B, H, Nq, D)
    lse = _unsort(lse.reshape(B, H, G * L), blocks.q_order)  # (B, H, Nq)
    return out, lse


def causal_levels(n: int, min_seq_len: int) -> tuple[int, int]:
    """Halvings of a causal sequence of ``n`` tokens and the length of its leaves.

    A part of at most ``2 * min_seq_len`` tokens is exact causal attention (its halves and
    its off-diagonal block are at most ``min_seq_len`` keys, all exact), so the recursion
    stops there: after ``levels`` halvings every leaf has ``leaf`` tokens, the sequence
    padded at its end to ``leaf * 2**levels``.
    """
    levels = 0
    while math.ceil(n / 2**levels) > 2 * min_seq_len:
        levels += 1
    return levels, math.ceil(n / 2**levels)


def _fold(x: torch.Tensor, parts: int) -> torch.Tensor:
    """(B, H, parts * n, ...) -> (parts * B, H, n, ...): consecutive parts into the batch."""
    return rearrange(x, "b h (g n) ... -> (g b) h n ...", g=parts)


def _unfold(x: torch.Tensor, parts: int) -> torch.Tensor:
    """Inverse of `_fold`."""
    return rearrange(x, "(g b) h n ... -> b h (g n) ...", g=parts)


def _fold_mask(mask: torch.Tensor | None, parts: int) -> torch.Tensor | None:
    """(B, parts * n) -> (parts * B, n)."""
    return None if mask is None else rearrange(mask, "b (g n) -> (g b) n", g=parts)


def _off_diagonal(q, k, v, key_mask, levels: int, settings: _Settings):
    """Every level's off-diagonal blocks, merged per query by log-sum-exp.

    At level l the sequence is cut into ``2**l`` nodes; the second half of each node
    attends to its first half by the non-causal LSH path. A query is in a second half at
    some levels only: the others add nothing. With autograd and
    ``settings.recompute_parts`` each level is recomputed in the backward, so one level's
    sorted blocks and scores exist at a time.

    The merge is a running sum of the levels' outputs weighted by ``exp(lse - top)``,
    ``top`` a detached running maximum of their lse (the sum rescaled when it rises),
    normalised once at the end: `merge_attention`'s result, but nothing of width D is
    kept for the backward, where a chain of merges would keep every level's merged output
    (one (B, H, N, D) tensor a level).

    Returns:
        out (B, H, N, D) and lse (B, H, N), -inf (with out 0) where no level adds keys.
    """
    run = recompute if settings.recompute_parts and torch.is_grad_enabled() else _call
    total = weight = top = None  # (B, H, N, D), (B, H, N), (B, H, N)
    for level in range(levels):
        part, part_weight, new_top = run(_level, q, k, v, key_mask, level, settings, top)
        if total is None:
            total, weight = part, part_weight
        else:  # exp(old top - new top), 1 where both are -inf; constant for autograd
            scale = (top - new_top).exp().masked_fill(new_top == NEG_INF, 1.0)
            total = torch.addcmul(part, total, scale.unsqueeze(-1))
            weight = torch.addcmul(part_weight, weight, scale)
        top = new_top
        del part  # summed: freed before the next level runs (one (B, H, N, D) tensor)
    empty = weight == 0
    weight = weight.masked_fill(empty, 1.0)
    lse = (weight.log() + top).masked_fill(empty, NEG_INF)
    return _Normalise.apply(total, weight), lse


def _level(q, k, v, key_mask, level: int, settings: _Settings, top):
    """One level of `_off_diagonal`: its output weighted by ``exp(lse - new top)``, that
    weight, and the new running maximum of the lse (``top`` before it, None at the first),
    detached: (B, H, N, D), (B, H, N), (B, H, N)."""
    nodes = 2**level
    qf, kf, vf = (_fold(x, nodes) for x in (q, k, v))
    mask = _fold_mask(key_mask, nodes)
    half = qf.shape[2] // 2
    part_out, part_lse = _lsh_attention_lse(
        qf[:, :, half:],
        kf[:, :, :half],
        vf[:, :, :half],
        None if mask is None else mask[:, :half],
        None if mask is None else mask[:, half:],
        settings,
    )  # (nodes*B, H, half, D), (nodes*B, H, half)
    part_out = _unfold(F.pad(part_out, (0, 0, half, 0)), nodes)  # (B, H, N, D)
    part_lse = _unfold(F.pad(part_lse, (half, 0), value=NEG_INF), nodes)  # (B, H, N)
    top = part_lse.detach() if top is None else torch.maximum(top, part_lse.detach())
    weight = (part_lse - top.masked_fill(top == NEG_INF, 0.0)).exp()  # 0 where no keys
    return part_out * weight.unsqueeze(-1).to(part_out.dtype), weight, top


class _Normalise(torch.autograd.Function):
    """``total / weight`` over the last dimension, keeping only its output and ``weight``
    for the backward (a division keeps its dividend too: one more (B, H, N, D) tensor)."""

    @staticmethod
    def forward(ctx, total, weight):
        out = total / weight.unsqueeze(-1).to(total.dtype)  # (B, H, N, D)
        ctx.save_for_backward(out, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        out, weight = ctx.saved_tensors
        grad_total = grad / weight.unsqueeze(-1).to(grad.dtype)
        grad_weight = -(grad * out).sum(-1).to(weight.dtype) / weight  # (B, H, N)
        return grad_total, grad_weight


def causal_attention_with_part(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    part_out: torch.Tensor,
    part_lse: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention over k, v merged with a part given by its output and log-sum-exp.

    One ``scaled_dot_product_attention(is_causal=True)`` call, so fused kernels run: the
    part enters as one extra key per query, put first (a zero dummy query put first keeps
    the causal mask square). Its score is the part's lse, carried by an extra feature
    column of q (two for bf16: high and low halves) against ones in the extra key; its value
    is one-hot in an extra column, so the call's softmax is the log-sum-exp merge and the
    result is ``out[:D] + out[D] * part_out``. Padded keys get a large negative score
    through one more column; off the CPU, zero columns pad the width to a multiple of 8.
    No log-sum-exp is needed from the kernel.

    Args:
        q, k, v: (B, H, L, D).
        part_out: (B, H, L, D); part_lse: (B, H, L), -inf where the part has no keys.
        key_mask: (B, L) bool, True for real keys, or None.

    Returns:
        (B, H, L, D) in v's dtype.
    """
    B, H, L, D = q.shape
    scale = D**-0.5
    dtype = torch.promote_types(q.dtype, torch.float32)
    # An empty part weighs exp(-1e4) = 0 beside the query's own key (always real).
    own = ((q * k).sum(-1).to(dtype) * scale).detach()  # (B, H, L)
    c = torch.where(part_lse == NEG_INF, own - 1e4, part_lse.to(dtype)) / scale
    high = c.to(q.dtype)
    q_cols = [high[..., None]]
    if q.dtype != dtype:  # bf16 / fp16: the rounding error of high in a second column
        q_cols.append((c - high.to(dtype)).to(q.dtype)[..., None])
    key_cols = [1.0] * len(q_cols)  # the extra key's columns
    k_cols = [k.new_zeros(B, H, L, len(q_cols))]
    if key_mask is not None:
        q_cols.append(q.new_ones(B, H, L, 1))
        padded = (~key_mask).to(k.dtype)[:, None, :, None].expand(B, H, L, 1)
        k_cols.append(padded * (-1e4 / scale))
        key_cols.append(0.0)
    width = D + len(key_cols)
    if q.device.type != "cpu":  # zero columns to a multiple of 8, which GPU kernels need
        width = -(-width // 8) * 8
    fill = width - D - len(key_cols)
    extra_key = k.new_zeros(B, H, 1, width)
    extra_key[..., D : D + len(key_cols)] = torch.tensor(key_cols, dtype=k.dtype)
    extra_value = v.new_zeros(B, H, 1, width)
    extra_value[..., D] = 1.0
    q_aug = F.pad(torch.cat([q, *q_cols], -1), (0, fill, 1, 0))  # zero dummy query first
    k_aug = torch.cat([extra_key, F.pad(torch.cat([k, *k_cols], -1), (0, fill))], 2)
    v_aug = torch.cat([extra_value, F.pad(v, (0, width - D))], 2)
    out = F.scaled_dot_product_attention(q_aug, k_aug, v_aug, is_causal=True, scale=scale)
    del q_aug, k_aug, v_aug  # without autograd, freed before the merge below
    out = out[:, :, 1:]  # (B, H, L, width)
    return torch.addcmul(out[..., :D], out[..., D : D + 1], part_out.to(out.dtype))


def _causal(q, k, v, key_mask, settings: _Settings, with_lse: bool):
    """Causal HyperAttention: the recursion on halves, flattened.

    The off-diagonal blocks of all levels are computed first and merged into one part per
    query; then each leaf is exact causal attention merged with that part, by one fused
    call (`causal_attention_with_part`) or, ``with_lse``, by explicit softmax.

    Returns:
        out (B, H, N, D) and lse (B, H, N) (None unless ``with_lse``).
    """
    n = q.shape[2]
    levels, leaf = causal_levels(n, settings.min_seq_len)
    if levels == 0 and key_mask is None and not with_lse:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True), None
    padded = leaf * 2**levels
    if padded > n:  # masked padding at the end; real queries never see it
        q, k, v = (F.pad(x, (0, 0, 0, padded - n)) for x in (q, k, v))
        if key_mask is None:
            key_mask = torch.ones(q.shape[0], n, dtype=torch.bool, device=q.device)
        key_mask = F.pad(key_mask, (0, padded - n), value=False)
    B, H, _, D = q.shape
    if levels:
        part_out, part_lse = _off_diagonal(q, k, v, key_mask, levels, settings)
    else:
        dtype = torch.promote_types(q.dtype, torch.float32)
        part_out = q.new_zeros(B, H, padded, D)
        part_lse = torch.full((B, H, padded), NEG_INF, dtype=dtype, device=q.device)
    parts = 2**levels
    qf, kf, vf, part_out = (_fold(x, parts) for x in (q, k, v, part_out))
    part_lse, mask = _fold(part_lse, parts), _fold_mask(key_mask, parts)
    if with_lse:
        dtype = torch.promote_types(q.dtype, torch.float32)
        leaf_out, leaf_lse = attention_lse(qf, kf, vf, _causal_bias(leaf, mask, dtype, q.device))
        out, lse = merge_attention(leaf_out, leaf_lse, part_out, part_lse)
        return _unfold(out, parts)[:, :, :n], _unfold(lse, parts)[:, :, :n]
    out = causal_attention_with_part(qf, kf, vf, part_out, part_lse, mask)
    return _unfold(out, parts)[:, :, :n], None


def _check(q, k, v, causal, key_mask, query_mask, lsh_num_projs, block_size, sample_size):
    for name, value, low in (
        ("lsh_num_projs", lsh_num_projs, 1),
        ("block_size", block_size, 1),
        ("sample_size", sample_size, 0),
    ):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"HyperAttention {name} must be an integer >= {low}, got {value!r}")
    if q.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise InputError(
            f"HyperAttention expects q (B, H, Nq, D) and k, v (B, H, Nk, D), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if causal and q.shape[2] != k.shape[2]:
        raise InputError(
            f"causal HyperAttention needs as many queries as keys, got {q.shape[2]} and "
            f"{k.shape[2]}"
        )
    for name, mask, n in (
        ("key_mask", key_mask, k.shape[2]),
        ("query_mask", query_mask, q.shape[2]),
    ):
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (q.shape[0], n)):
            raise InputError(
                f"{name} must be a bool tensor of shape ({q.shape[0]}, {n}), got "
                f"{mask.dtype} {tuple(mask.shape)}"
            )


def _settings(q, lsh_num_projs, block_size, sample_size, min_seq_len, generator,
              recompute_parts) -> _Settings:  # fmt: skip
    """Draw the hash directions (D, R) from ``generator`` (global RNG if None)."""
    proj = torch.randn(
        q.shape[-1], lsh_num_projs, generator=generator, device=_device(generator, q)
    )
    proj = proj.to(q.device)
    return _Settings(proj, block_size, sample_size, min_seq_len, generator, recompute_parts)


def _call(function, *args):
    return function(*args)


def hyper_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    lsh_num_projs: int = 7,
    block_size: int = 256,
    sample_size: int = 256,
    min_seq_len: int = 4096,
    key_mask: torch.Tensor | None = None,
    query_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    recompute_parts: bool = False,
) -> torch.Tensor:
    """HyperAttention of queries over keys, scores scaled by ``D ** -0.5``.

    Args:
        q: queries, (B, H, Nq, D).
        k, v: keys and values, (B, H, Nk, D).
        causal: query i sees keys j <= i (needs Nq == Nk; ``key_mask`` then also marks
            the padded queries).
        lsh_num_projs: random hyperplanes of the angular hash (2**R buckets).
        block_size: about this many sorted keys per block, attended exactly.
        sample_size: uniformly sampled keys for the residual; 0 for blocks only.
        min_seq_len: exact attention (SDPA) while Nk is at most this (causal: at most
            twice this, see `causal_levels`).
        key_mask: (B, Nk) bool, True for real keys; padded keys never get weight.
        query_mask: (B, Nq) bool, True for real queries; padded ones are sorted last so
            that they take no block from real queries. Their outputs are unspecified.
        generator: source of the hash directions and samples (global RNG if None).
        recompute_parts: with autograd, recompute the causal path's off-diagonal work in
            the backward instead of keeping it: each level of the recursion (its sorted
            blocks, samples and merge) and, inside it, each head's explicit-softmax
            scores (activation checkpointing of the attention's parts; the RNG is
            restored, so the same samples are drawn). Without autograd the scores are
            always computed one head at a time.

    Returns:
        (B, H, Nq, D), v's dtype.
    """
    _check(q, k, v, causal, key_mask, query_mask, lsh_num_projs, block_size, sample_size)
    if k.shape[2] <= min_seq_len:
        return exact_attention(q, k, v, causal=causal, key_mask=key_mask)
    if recompute_parts and generator is not None and torch.is_grad_enabled():
        raise ConfigError(
            "hyper_attention: recompute_parts redraws the samples in the backward from the "
            "global RNG, which checkpointing restores; a generator would have moved on by "
            "then: pass generator=None, or recompute_parts=False"
        )
    settings = _settings(q, lsh_num_projs, block_size, sample_size, min_seq_len, generator,
                         recompute_parts)  # fmt: skip
    if causal:
        return _causal(q, k, v, key_mask, settings, with_lse=False)[0]
    return _lsh_attention(q, k, v, key_mask, query_mask, settings)


def hyper_attention_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    lsh_num_projs: int = 7,
    block_size: int = 256,
    sample_size: int = 256,
    min_seq_len: int = 4096,
    key_mask: torch.Tensor | None = None,
    query_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`hyper_attention` and its log-sum-exp (B, H, Nq), by explicit softmaxes.

    The same randomness as `hyper_attention` with the same generator state.
    """
    _check(q, k, v, causal, key_mask, query_mask, lsh_num_projs, block_size, sample_size)
    dtype = torch.promote_types(q.dtype, torch.float32)
    if k.shape[2] <= min_seq_len:
        bias = (
            _causal_bias(k.shape[2], key_mask, dtype, q.device)
            if causal
            else _key_bias(key_mask, dtype)
        )
        return attention_lse(q, k, v, bias)
    settings = _settings(q, lsh_num_projs, block_size, sample_size, min_seq_len, generator,
                         False)  # fmt: skip
    if causal:
        return _causal(q, k, v, key_mask, settings, with_lse=True)
    return _lsh_attention_lse(q, k, v, key_mask, query_mask, settings)
