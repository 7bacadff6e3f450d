"""The selective scan of Mamba, in plain PyTorch, with the CUDA kernels when present.

Mamba (Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
2023, arXiv 2312.00752) runs, for every channel e and state index n, the recurrence

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t,        y_t = C_t . h_t + D x_t,

with a step size dt_t and matrices B_t, C_t that depend on the token. The xT context
encoder (Gupta et al., ICML 2024, arXiv 2403.01915) stacks such layers over region tokens.

A Python loop over tokens is too slow to train with; the textbook parallel form
``exp(S_t) * cumsum(exp(-S_s) u_s)`` (S the cumulative log decay) overflows once the decay
passes ~88 nats in float32; and any form that holds the states of all tokens needs
E * N floats a token (32x the width for Mamba's defaults). `selective_scan` instead cuts
the sequence into K chunks of T tokens and runs three passes, all chunks at once, that
only ever multiply by decays in [0, 1] and hold one (B, K, E, N) state at a time:

1. a loop over the T positions of every chunk from a zero state: each chunk's final state;
2. a loop over the K chunks: the true state entering each chunk, carried from the last;
3. the loop of pass 1 again from those states, giving y_t = C_t . h_t token by token.

That is 2T + K Python steps, ~3 sqrt(L) with the default T = ceil(sqrt(L)). The backward
pass (a custom autograd function) runs the same passes from the end for the gradient of
the state, recomputing the states chunk group by chunk group, so training keeps only the
inputs and one state a chunk.

Dimension legend: B batch, L tokens, E channels (d_inner), N state size (d_state),
K chunks, T tokens a chunk, G chunks in a group.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from xtimage.runtime import autocast_off

logger = logging.getLogger(__name__)

_KERNEL: dict[str, object] = {}

# At most this many state values are recomputed at once in the backward pass (a memory
# bound only: the grouping changes no result beyond the rounding of grad A's sum).
_GROUP_ELEMENTS = 2**24


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32, or as it is if it is float64."""
    return t if t.dtype == torch.float64 else t.float()


def _chunks(t: Tensor, n_chunks: int, chunk: int) -> Tensor:
    """(B, L, ...) -> (B, K, T, ...), zero-padded at the end (dt = 0: state unchanged)."""
    pad = n_chunks * chunk - t.shape[1]
    if pad:
        t = torch.cat([t, t.new_zeros(t.shape[0], pad, *t.shape[2:])], dim=1)
    return t.reshape(t.shape[0], n_chunks, chunk, *t.shape[2:])


def _unchunk(t: Tensor, length: int) -> Tensor:
    """(B, K, T, ...) -> (B, L, ...), the padding dropped."""
    return t.flatten(1, 2)[:, :length]


class SelectiveScan(torch.autograd.Function):
    """y_t = C_t . h_t and the final state, with h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t.

    Backward, with Q_t the gradient reaching h_t (from y_t and from later states) and
    P_t = exp(dt_t A) Q_t the part passed on to h_{t-1}:
    Q_t = grad_y_t C_t + P_{t+1} (P_L = the final state's gradient); then
    grad (dt x)_t = Q_t . B_t, grad B_t = sum_e Q_t (dt x)_t, grad C_t = sum_e grad_y_t h_t,
    grad of the log decay dt_t A is P_t h_{t-1} (to dt_t and A), and grad h0 = P_0.
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, chunk_size):
        batch, length, inner = x.shape
        chunk = max(1, min(chunk_size or math.isqrt(max(length - 1, 0)) + 1, length))
        n_chunks = -(-length // chunk)
        w = _chunks(dt * x, n_chunks, chunk)  # (B, K, T, E) input scale dt x
        d = _chunks(dt, n_chunks, chunk)  # (B, K, T, E)
        b = _chunks(B, n_chunks, chunk)  # (B, K, T, N)
        c = _chunks(C, n_chunks, chunk)  # (B, K, T, N)

        local = torch.zeros(batch, n_chunks, *A.shape, dtype=x.dtype, device=x.device)
        for t in range(chunk):  # pass 1: each chunk's final state from a zero start
            local = _step(local, w[:, :, t], d[:, :, t], b[:, :, t], A)  # (B, K, E, N)
        starts, h_last = _carry(local, _chunk_decay(d, A), h0, reverse=False)

        y = x.new_empty(batch, n_chunks, chunk, inner)  # (B, K, T, E)
        h = starts
        for t in range(chunk):  # pass 3: every state again, from the true starts
            h = _step(h, w[:, :, t], d[:, :, t], b[:, :, t], A)  # (B, K, E, N)
            y[:, :, t] = (h @ c[:, :, t, :, None]).squeeze(-1)  # (B, K, E)

        ctx.save_for_backward(x, dt, A, B, C, starts)
        ctx.chunking = (chunk, n_chunks)
        return _unchunk(y, length), h_last

    @staticmethod
    def backward(ctx, grad_y, grad_h_last):
        x, dt, A, B, C, starts = ctx.saved_tensors
        chunk, n_chunks = ctx.chunking
        batch, length, _ = x.shape
        w = _chunks(dt * x, n_chunks, chunk)  # (B, K, T, E)
        d = _chunks(dt, n_chunks, chunk)  # (B, K, T, E)
        b = _chunks(B, n_chunks, chunk)  # (B, K, T, N)
        c = _chunks(C, n_chunks, chunk)  # (B, K, T, N)
        gy = _chunks(grad_y, n_chunks, chunk)  # (B, K, T, E)

        p = torch.zeros_like(starts)  # (B, K, E, N)
        for t in reversed(range(chunk)):  # pass 1: P at each chunk's first token
            q = torch.addcmul(p, gy[:, :, t, :, None], c[:, :, t, None, :])  # Q_t
            p = torch.exp(d[:, :, t, :, None] * A) * q
        incoming, grad_h0 = _carry(p, _chunk_decay(d, A), grad_h_last, reverse=True)

        grads = [torch.empty_like(t) for t in (w, d, b, c)]  # of dt x, dt (decay), B, C
        grad_A = torch.zeros_like(A)
        per_chunk = batch * chunk * A.numel()
        group = max(1, _GROUP_ELEMENTS // per_chunk)
        for k in range(0, n_chunks, group):  # pass 3, chunk group by chunk group
            g = slice(k, k + group)
            grad_A += _backward_chunks(
                w[:, g], d[:, g], b[:, g], c[:, g], gy[:, g], A, starts[:, g], incoming[:, g],
                [t[:, g] for t in grads],
            )  # fmt: skip
        grad_w, grad_dt_decay, grad_B, grad_C = (_unchunk(t, length) for t in grads)
        grad_x = grad_w * dt
        grad_dt = grad_w * x + grad_dt_decay
        return grad_x, grad_dt, grad_A, grad_B, grad_C, grad_h0, None


def _step(
    h: Tensor, w: Tensor, d: Tensor, b: Tensor, A: Tensor, out: Tensor | None = None
) -> Tensor:
    """One token of every chunk: exp(dt A) h + (dt x) B; (B, K, E, N) -> (B, K, E, N).

    Args:
        h: (B, K, E, N) the states before the token.
        w, d: (B, K, E) dt x and dt of the token.
        b: (B, K, N) B of the token.
        A: (E, N).
        out: where to write the new states, or None.
    """
    return torch.addcmul(w[..., None] * b[..., None, :], torch.exp(d[..., None] * A), h, out=out)


def _chunk_decay(d: Tensor, A: Tensor) -> Tensor:
    """The decay over each whole chunk, exp(A sum_t dt_t): (B, K, T, E) -> (B, K, E, N)."""
    return torch.exp(d.sum(dim=2)[..., None] * A)


def _carry(local: Tensor, decay: Tensor, first: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
    """Pass 2: the value entering each chunk, given each chunk's value from a zero start.

    Args:
        local: (B, K, E, N) each chunk's outgoing value from a zero incoming one.
        decay: (B, K, E, N) what each chunk multiplies its incoming value by.
        first: (B, E, N) the value entering the first chunk (the last when ``reverse``).
        reverse: run from the last chunk to the first.

    Returns:
        (B, K, E, N) the value entering each chunk, and (B, E, N) the one leaving the last.
    """
    entering = torch.empty_like(local)
    carry = first
    for k in reversed(range(local.shape[1])) if reverse else range(local.shape[1]):
        entering[:, k] = carry
        carry = torch.addcmul(local[:, k], decay[:, k], carry)
    return entering, carry


def _backward_chunks(w, d, b, c, gy, A, starts, incoming, grads) -> Tensor:
    """Pass 3 of the backward pass over a group of G chunks; fills ``grads``, returns grad A.

    Args:
        w, d: (B, G, T, E) dt x and dt. b, c: (B, G, T, N) B and C.
        gy: (B, G, T, E) gradient of y.
        A: (E, N).
        starts: (B, G, E, N) the state entering each chunk.
        incoming: (B, G, E, N) P entering each chunk from its end.
        grads: (B, G, T, E), (B, G, T, E), (B, G, T, N), (B, G, T, N) outputs: the
            gradients of dt x, of dt through the decay, of B and of C.
    """
    grad_w, grad_d, grad_b, grad_c = grads
    chunk = w.shape[2]
    states = starts.new_empty(*w.shape[:3], *A.shape)  # (B, G, T, E, N)
    h = starts
    for t in range(chunk):  # the states again, from the saved chunk starts
        h = _step(h, w[:, :, t], d[:, :, t], b[:, :, t], A, out=states[:, :, t])
    grad_A = torch.zeros_like(starts)  # (B, G, E, N) sum_t P_t h_{t-1} dt_t
    p = incoming
    for t in reversed(range(chunk)):
        h_prev = states[:, :, t - 1] if t else starts
        grad_c[:, :, t] = (gy[:, :, t, None, :] @ states[:, :, t]).squeeze(-2)  # (B, G, N)
        q = torch.addcmul(p, gy[:, :, t, :, None], c[:, :, t, None, :])  # Q_t (B, G, E, N)
        grad_w[:, :, t] = (q @ b[:, :, t, :, None]).squeeze(-1)  # (B, G, E)
        grad_b[:, :, t] = (w[:, :, t, None, :] @ q).squeeze(-2)  # (B, G, N)
        p = torch.exp(d[:, :, t, :, None] * A) * q  # P_t (B, G, E, N)
        m = p * h_prev  # gradient of the log decay dt_t A
        grad_d[:, :, t] = (m * A).sum(-1)  # (B, G, E)
        grad_A.addcmul_(m, d[:, :, t, :, None])
    return grad_A.sum(dim=(0, 1))  # (E, N)


def selective_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    h0: Tensor | None = None,
    *,
    chunk_size: int | None = None,
    use_kernel: bool = True,
) -> tuple[Tensor, Tensor]:
    """Mamba's selective scan, y_t = C_t . h_t + D x_t, h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t.

    Computed in float32 (float64 for float64 inputs; autocast off), as the CUDA kernels do.
    A token with ``dt = 0`` leaves the state unchanged: that is how masked tokens are
    skipped. On CUDA tensors, with ``mamba_ssm`` installed and ``use_kernel``, its fused
    kernel runs instead; the kernel gives no gradient to the returned final state, so that
    path returns it detached (carry it only as streaming memory, or pass
    ``use_kernel=False``).

    Args:
        x: (B, L, E) inputs.
        dt: (B, L, E) step sizes, >= 0 (after softplus).
        A: (E, N) negative state matrix (diagonal per channel).
        B: (B, L, N) input matrix per token.
        C: (B, L, N) output matrix per token.
        D: (E,) skip connection, or None.
        h0: (B, E, N) the state before the first token, or None for zeros.
        chunk_size: tokens per chunk of the pure-PyTorch scan (speed only).
        use_kernel: use mamba_ssm's kernel when it applies.

    Returns:
        y (B, L, E) and the final state h_{L-1} (B, E, N), both in full precision.
    """
    with autocast_off(x.device):
        x, dt, A, B, C = (full_precision(t) for t in (x, dt, A, B, C))
        zeros = x.new_zeros(x.shape[0], *A.shape)  # (B, E, N)
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), zeros if h0 is None else full_precision(h0)
        kernel = _kernel() if use_kernel and x.is_cuda else None
        if kernel is not None:
            y, h_last = _kernel_scan(kernel, x, dt, A, B, C)
            if h0 is not None:  # linear in (x, h0): add the response to h0 alone
                y_h0, h_h0 = SelectiveScan.apply(
                    torch.zeros_like(x), dt, A, B, C, full_precision(h0), chunk_size
                )
                y, h_last = y + y_h0, (h_last + h_h0).detach()
        else:
            h0 = zeros if h0 is None else full_precision(h0)
            y, h_last = SelectiveScan.apply(x, dt, A, B, C, h0, chunk_size)
        if D is not None:
            y = y + full_precision(D) * x
        return y, h_last


def _kernel():
    """mamba_ssm's ``selective_scan_fn``, imported once; None (logged) when missing."""
    if "fn" not in _KERNEL:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        except ImportError:
            logger.info(
                "mamba_ssm is not installed: the Mamba context encoder uses its pure-PyTorch "
                "scan on CUDA (install it with `pip install 'xtimage[cuda]'` for the kernels)"
            )
            selective_scan_fn = None
        _KERNEL["fn"] = selective_scan_fn
    return _KERNEL["fn"]


def _kernel_scan(kernel, x, dt, A, B, C) -> tuple[Tensor, Tensor]:
    """The fused CUDA scan from a zero state; it works on (B, E, L) and gives no gradient to
    the final state, which is returned detached."""
    y, h_last = kernel(
        x.transpose(1, 2).contiguous(),  # (B, E, L)
        dt.transpose(1, 2).contiguous(),  # (B, E, L)
        A.contiguous(),
        B.transpose(1, 2).contiguous(),  # (B, N, L)
        C.transpose(1, 2).contiguous(),  # (B, N, L)
        return_last_state=True,
    )
    return y.transpose(1, 2), h_last.detach()  # (B, L, E), (B, E, N)
