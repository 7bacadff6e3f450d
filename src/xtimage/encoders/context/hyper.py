"""Hyper context encoder: LLaMA-style blocks with HyperAttention over the region tokens.

xT (Gupta et al., "xT: Nested Tokenization for Larger Context in Large Images", ICML 2024)
names this encoder "Hyper"; its attention is HyperAttention (Han et al., ICLR 2024, see
`hyperattention`). As in the authors' release: a fixed 2-D sin-cos embedding of each
token's global (row, col) added at the input, pre-norm blocks with RMSNorm, a gated MLP
(4x, no biases) gated with GELU, attention projections without biases; a final RMSNorm
closes the stack, as in LLaMA. The release ran its context causally (logits from the
last position); for images we default to two-way attention and offer ``causal=True``.

HyperAttention is global: every token attends to every other one, so the encoder cannot
stream. It is exact while the sequence is at most ``min_seq_len`` tokens and approximate,
in near-linear time, above. In training the hash directions and samples are drawn afresh
each call; in eval they come from a generator seeded with ``seed``, so results repeat.

``release=True`` is the authors' block as released, for their checkpoints
(`xtimage.convert`): qkv and output projections with biases, RMSNorm with eps 1e-5, no
final norm, and no positions added here (`XT` adds them once; by default this encoder
adds the same sin-cos codes a second time, which the release does not).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath
from torch import nn
from torch.autograd.function import once_differentiable

from xtimage.encoders.context.base import CONTEXT_ENCODERS, ContextEncoder, State
from xtimage.encoders.context.hyperattention import causal_levels, hyper_attention
from xtimage.errors import ConfigError
from xtimage.runtime import recompute, seeded_generator

Gather = Callable[[torch.Tensor, int], torch.Tensor]

MLP_CHUNK = 4096  # tokens a chunked MLP runs at once: 4096 x 8 x D floats transient


def sincos_2d(
    positions: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding (MAE style): a quarter of the channels each for
    sin(row), cos(row), sin(col), cos(col) at frequencies ``10000 ** (-i / (dim / 4))``.

    Args:
        positions: (B, N, 2) int64 global (row, col).
        dim: embedding width, a multiple of 4.
        dtype: result type; computed in at least float32.

    Returns:
        (B, N, dim).
    """
    work = torch.promote_types(dtype, torch.float32)
    quarter = dim // 4
    index = torch.arange(quarter, device=positions.device, dtype=work)
    omega = 10000.0 ** (-index / quarter)  # (dim/4,)
    angles = positions.to(work).unsqueeze(-1) * omega  # (B, N, 2, dim/4)
    rows, cols = angles.unbind(-2)  # (B, N, dim/4) each
    table = torch.cat([rows.sin(), rows.cos(), cols.sin(), cols.cos()], dim=-1)  # (B, N, dim)
    return table.to(dtype)


class RMSNorm(nn.RMSNorm):
    """`nn.RMSNorm` (with its weight) whose backward keeps only the input and its inverse
    RMS (B, N, 1): the composite also keeps the normalised input, N x D floats. Given a
    ``length``, the result is the first N rows of zeros of that length (the padding of
    causal HyperAttention, made here so that q, k and v are projected padded, not copied
    padded)."""

    def forward(self, x: torch.Tensor, length: int | None = None) -> torch.Tensor:
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        return _RMSNorm.apply(x, self.weight, eps, x.shape[1] if length is None else length)


class _RMSNorm(torch.autograd.Function):
    """``x * rsqrt(mean(x^2) + eps) * weight`` over the last dimension, computed in at least
    float32 as `F.rms_norm`, written into (B, length, D) with zeros after x's N rows."""

    @staticmethod
    def forward(ctx, x, weight, eps, length):
        work = torch.promote_types(x.dtype, torch.float32)
        B, N, D = x.shape
        rstd = x.to(work).pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()  # (B, N, 1)
        out = torch.empty(B, length, D, dtype=work, device=x.device)
        out[:, N:] = 0.0
        torch.mul(x, rstd, out=out[:, :N]).mul_(weight)
        ctx.save_for_backward(x, weight, rstd)
        return out.to(x.dtype)  # (B, length, D)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        work = rstd.dtype
        grad = grad[:, : x.shape[1]].to(work)  # (B, N, D): the padding's rows are constant
        normed = x.to(work) * rstd  # (B, N, D)
        grad_weight = (grad * normed).flatten(0, -2).sum(0).to(weight.dtype)  # (D,)
        grad_normed = grad * weight.to(work)
        dot = (grad_normed * normed).mean(-1, keepdim=True)  # (B, N, 1)
        grad_x = grad_normed.sub_(normed.mul_(dot)).mul_(rstd)
        return grad_x.to(x.dtype), grad_weight, None, None


class GatedMLP(nn.Module):
    """``fc_out(gelu(x W_gate) * x W_up)``, no biases (LLaMA's MLP with GELU, as released)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc_in = nn.Linear(dim, 2 * hidden, bias=False)  # gate and up, fused
        self.fc_out = nn.Linear(hidden, dim, bias=False)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc_in(x).chunk(2, dim=-1)  # (B, N, hidden) each
        return self.drop(self.fc_out(F.gelu(gate) * up))  # (B, N, D)


class HyperSelfAttention(nn.Module):
    """Multi-head self-attention by `hyper_attention`, projections without biases."""

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        causal: bool,
        lsh_num_projs: int,
        block_size: int,
        sample_size: int,
        min_seq_len: int,
        drop: float = 0.0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.lsh_num_projs = lsh_num_projs
        self.block_size = block_size
        self.sample_size = sample_size
        self.min_seq_len = min_seq_len
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.drop = nn.Dropout(drop)

    def length(self, n: int, gather: Gather | None) -> int:
        """Tokens the attention runs over for ``n`` real ones: causal HyperAttention pads
        its recursion to ``leaf * 2**levels`` (`causal_levels`); else ``n``."""
        if not self.causal or gather is not None:
            return n
        levels, leaf = causal_levels(n, self.min_seq_len)
        return leaf * 2**levels

    def forward(
        self,
        x: torch.Tensor,
        n: int,
        mask: torch.Tensor | None,
        generator: torch.Generator | None,
        gather: Gather | None = None,
        recompute_parts: bool = False,
    ) -> torch.Tensor:
        """Attention of the first ``n`` rows of x (B, `length`, D); the rows after them are
        padding, masked as keys and dropped: the recursion then copies no padded q, k and
        v (3 x N x D floats beside the unpadded ones). ``mask``: (B, n) or None.
        ``recompute_parts``: see `hyper_attention`."""
        if x.shape[1] > n:
            real = torch.ones(x.shape[0], n, dtype=torch.bool, device=x.device)
            mask = F.pad(real if mask is None else mask, (0, x.shape[1] - n), value=False)
        qkv = self.qkv(x)  # (B, L, 3D); a padded row is the bias, masked
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.heads)
        key_mask = mask
        if gather is not None:  # this slice's queries against every process's keys
            k, v = gather(k, 2), gather(v, 2)  # (B, H, N_all, D/H)
            key_mask = None if mask is None else gather(mask, 1)
        out = hyper_attention(
            q,
            k,
            v,
            causal=self.causal,
            lsh_num_projs=self.lsh_num_projs,
            block_size=self.block_size,
            sample_size=self.sample_size,
            min_seq_len=self.min_seq_len,
            key_mask=key_mask,
            query_mask=mask,
            generator=generator,
            recompute_parts=recompute_parts,
        )[:, :, :n]  # (B, H, n, D/H)
        out = rearrange(out, "b h n d -> b n (h d)")  # a copy: the heads' layout is freed
        return self.drop(self.proj(out))  # (B, n, D)


class HyperBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(
        self,
        attn: HyperSelfAttention,
        dim: int,
        *,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim, eps=eps)
        self.attn = attn
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = RMSNorm(dim, eps=eps)
        self.mlp = GatedMLP(dim, int(mlp_ratio * dim), drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, mask, generator, gather=None, mlp_chunk: int | None = None):
        """``mlp_chunk``: run the MLP over that many tokens at a time, each chunk
        recomputed in the backward (its activations, 3 x the hidden width a token, are
        never all alive), and the attention's parts level by level and head by head
        (``recompute_parts``);
        None: all at once. Inference without autograd always runs the MLP ``MLP_CHUNK``
        tokens at a time, adding into the residual in place."""
        n = x.shape[1]
        h = self.norm1(x, self.attn.length(n, gather))  # (B, L, D), zero rows after n
        attn = self.attn(h, n, mask, generator, gather, mlp_chunk is not None)  # (B, n, D)
        del h  # without autograd, freed before the MLP
        x = x + self.drop_path1(attn)  # (B, N, D)
        if not torch.is_grad_enabled() and not self.training:
            for part in x.split(MLP_CHUNK, 1):  # views of x: (B, chunk, D)
                part += self._mlp(part)
            return x
        if mlp_chunk is None:
            return x + self.drop_path2(self._mlp(x))
        parts = [recompute(self._mlp, part) for part in x.split(mlp_chunk, 1)]
        return x + self.drop_path2(torch.cat(parts, 1))  # drop path: one draw for the sample

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm2(x))


@CONTEXT_ENCODERS.register("hyper")
class HyperContext(ContextEncoder):
    """Stack of Hyper blocks over the whole token sequence (global; not streamable).

    Args:
        dim: token width D, a multiple of 4 (sin-cos positions) and of ``heads``.
        depth: number of blocks (the release used 1-2).
        heads: attention heads; the release used 6 of width 128 at D = 768.
        mlp_ratio: hidden width of the gated MLP over D.
        causal: token i sees tokens j <= i in region-major order (the release's choice).
        lsh_num_projs: hash hyperplanes of HyperAttention.
        block_size: keys per LSH block.
        sample_size: uniformly sampled keys for the residual.
        min_seq_len: exact attention up to this many tokens.
        drop: dropout after the attention projection and the MLP.
        drop_path: stochastic depth of the last block, rising linearly from 0.
        seed: seed of the hash and samples in eval mode.
        release: the authors' released block (see the module docstring): projection
            biases, RMSNorm eps 1e-5, no final norm, no positions added here.
        checkpoint: in training, keep each block's input instead of its activations and
            recompute them in the backward, the MLP ``MLP_CHUNK`` tokens at a time
            (activation checkpointing): the same gradients for about a third more
            compute, for exact-mode training of long sequences (docs/performance.md).
        final_norm: close the stack with an RMSNorm (LLaMA's; off in the release). Off,
            weak far-context channels keep their scale, as in the ``demo`` recipe's
            Transformer-XL (``final_norm: false``).
    """

    streamable = False
    recomputable = True

    def __init__(
        self,
        dim: int,
        depth: int = 2,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        causal: bool = False,
        lsh_num_projs: int = 7,
        block_size: int = 256,
        sample_size: int = 256,
        min_seq_len: int = 4096,
        drop: float = 0.0,
        drop_path: float = 0.0,
        seed: int = 0,
        release: bool = False,
        checkpoint: bool = False,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        if dim % 4 or dim % heads:
            raise ConfigError(
                f"hyper context encoder: dim={dim} must be a multiple of 4 (2-D sin-cos "
                f"positions) and of heads={heads}; change dim or heads"
            )
        if depth < 1:
            raise ConfigError(f"hyper context encoder: depth must be >= 1, got {depth}")
        self.dim = dim
        self.seed = seed
        self.release = release
        self.checkpoint = checkpoint
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()  # meta-safe
        self.blocks = nn.ModuleList(
            HyperBlock(
                HyperSelfAttention(
                    dim,
                    heads,
                    causal=causal,
                    lsh_num_projs=lsh_num_projs,
                    block_size=block_size,
                    sample_size=sample_size,
                    min_seq_len=min_seq_len,
                    drop=drop,
                    bias=release,
                ),
                dim,
                mlp_ratio=mlp_ratio,
                drop=drop,
                drop_path=rate,
                eps=1e-5 if release else 1e-6,
            )
            for rate in rates
        )
        self.norm = RMSNorm(dim, eps=1e-6) if final_norm and not release else nn.Identity()

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None = None,
        state: State = None,
    ) -> tuple[torch.Tensor, State]:
        if state is not None:
            raise ConfigError(
                "the hyper context encoder is global (streamable = False) and takes no "
                "state: the engine must give it the whole token sequence in one call"
            )
        return self._run(tokens, positions, mask, None), None

    def shardable(self, num_tokens: int) -> bool:
        """Whether `forward_sharded` equals `forward` on a sequence of ``num_tokens``:
        two-way attention, exact (at most ``min_seq_len`` keys). HyperAttention's hashed
        path sorts every query among all queries, so a slice of them cannot run alone."""
        attn = self.blocks[0].attn
        return not attn.causal and num_tokens <= attn.min_seq_len

    def forward_sharded(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        gather: Gather,
    ) -> torch.Tensor:
        """`forward` on one process's contiguous slice of the sequence (context
        parallelism, `xtimage.engine.parallel`).

        Norms, projections and the MLP run on the slice; each attention takes the
        slice's queries against every process's keys and values, joined by ``gather``.
        Equal to the slice of `forward`'s output where `shardable`; the memory of the
        MLP and of the attention scores falls with the number of processes, the keys
        and values (2 x N x D a block) do not.

        Args:
            tokens: (B, n, D) this process's slice.
            positions: (B, n, 2).
            mask: (B, n) or None.
            gather: ``gather(t, dim)``: every process's ``t`` concatenated along ``dim``
                in sequence order, differentiable.

        Returns:
            (B, n, D).
        """
        return self._run(tokens, positions, mask, gather)

    def _run(self, tokens, positions, mask, gather: Gather | None) -> torch.Tensor:
        x = tokens if self.release else tokens + sincos_2d(positions, self.dim, tokens.dtype)
        generator = None
        if not self.training:
            generator = seeded_generator(tokens.device, self.seed)
        for block in self.blocks:
            if self.checkpoint and self.training and torch.is_grad_enabled():
                # training only: the recomputation redraws from the global RNG, which
                # checkpointing restores; eval's seeded generator would have moved on
                x = recompute(block, x, mask, generator, gather, MLP_CHUNK)
            else:
                x = block(x, mask, generator, gather)  # (B, N, D)
        return self.norm(x)
