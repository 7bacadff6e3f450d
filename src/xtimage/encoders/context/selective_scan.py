"""The selective scan of Mamba, in plain PyTorch, with the CUDA kernels when present.

Mamba (Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
2023, arXiv 2312.00752) runs, for every channel e and state index n, the recurrence

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t,        y_t = C_t . h_t + D x_t,

with a step size dt_t and matrices B_t, C_t that depend on the token. The xT context
encoder (Gupta et al., ICML 2024, arXiv 2403.01915) stacks such layers over region tokens.

A Python loop over tokens is too slow to train with, and the textbook parallel form
``exp(S_t) * cumsum(exp(-S_s) u_s)`` (S the cumulative log decay) overflows once the decay
over the sequence passes ~88 nats in float32. `linear_scan` instead cuts the sequence into
chunks of T tokens and runs three passes that only ever multiply decays in [0, 1]:

1. inside every chunk at once, a loop over its T positions from a zero state, and the
   running product of the decays (``cumprod``, no exp of a positive number);
2. a loop over the K chunks carrying the state from one chunk's end to the next's start;
3. ``h += decay_since_chunk_start * state_at_chunk_start``, all tokens at once.

That is T + K Python steps, ~2 sqrt(L) with the default T = ceil(sqrt(L)), each on a
whole slice of the batch. The backward pass is the same scan run in reverse (a custom
autograd function), so only the decays and the states are kept for it.

Dimension legend: B batch, L tokens, E channels (d_inner), N state size (d_state),
K chunks, T tokens per chunk.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

_KERNEL: dict[str, object] = {}


def _chunked_scan(alpha: Tensor, u: Tensor, h0: Tensor, chunk_size: int | None) -> Tensor:
    """h_t = alpha_t * h_{t-1} + u_t from h_{-1} = h0, without autograd.

    Args:
        alpha: (B, L, ...) decays in [0, 1].
        u: (B, L, ...) inputs, the shape of ``alpha``.
        h0: (B, ...) the state before the first token.
        chunk_size: tokens per chunk; None: ceil(sqrt(L)).

    Returns:
        (B, L, ...) every state h_t.
    """
    batch, length, *rest = u.shape
    chunk = max(1, min(chunk_size or math.isqrt(max(length - 1, 0)) + 1, length))
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:  # decay 1 and input 0 leave the state as it is
        alpha = torch.cat([alpha, alpha.new_ones(batch, pad, *rest)], dim=1)
        u = torch.cat([u, u.new_zeros(batch, pad, *rest)], dim=1)
    a = alpha.reshape(batch, n_chunks, chunk, *rest)  # (B, K, T, ...)
    v = u.reshape(batch, n_chunks, chunk, *rest)  # (B, K, T, ...)

    h = torch.empty_like(v)  # (B, K, T, ...)
    h[:, :, 0] = v[:, :, 0]
    for t in range(1, chunk):  # pass 1: every chunk from a zero state
        torch.addcmul(v[:, :, t], a[:, :, t], h[:, :, t - 1], out=h[:, :, t])
    decay = torch.cumprod(a, dim=2)  # (B, K, T, ...) decay since the chunk's start

    starts = torch.empty_like(h[:, :, 0])  # (B, K, ...)
    carry = h0
    for k in range(n_chunks):  # pass 2: the state entering every chunk
        starts[:, k] = carry
        carry = torch.addcmul(h[:, k, -1], decay[:, k, -1], carry)
    h.addcmul_(decay, starts.unsqueeze(2))  # pass 3
    return h.reshape(batch, n_chunks * chunk, *rest)[:, :length]


class LinearScan(torch.autograd.Function):
    """Autograd for `_chunked_scan`; the backward pass is the same scan in reverse.

    With G_t the gradient reaching h_t through all later states,
    G_t = grad_h_t + alpha_{t+1} G_{t+1}; then grad u_t = G_t,
    grad alpha_t = G_t h_{t-1} and grad h0 = alpha_0 G_0.
    """

    @staticmethod
    def forward(ctx, alpha: Tensor, u: Tensor, h0: Tensor, chunk_size: int | None) -> Tensor:
        h = _chunked_scan(alpha, u, h0, chunk_size)
        ctx.save_for_backward(alpha, h, h0)
        ctx.chunk_size = chunk_size
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        alpha, h, h0 = ctx.saved_tensors
        # reversed in time, the decay applied on the way from t+1 to t is alpha_{t+1}
        alpha_rev = torch.cat([alpha[:, :1], alpha[:, 1:].flip(1)], dim=1)  # (B, L, ...)
        g = _chunked_scan(alpha_rev, grad_h.flip(1), torch.zeros_like(h0), ctx.chunk_size)
        g = g.flip(1)  # (B, L, ...) G_t
        grad_alpha = torch.empty_like(g)
        grad_alpha[:, 0] = g[:, 0] * h0
        torch.mul(g[:, 1:], h[:, :-1], out=grad_alpha[:, 1:])
        return grad_alpha, g, alpha[:, 0] * g[:, 0], None


def linear_scan(alpha: Tensor, u: Tensor, h0: Tensor | None = None, chunk_size: int | None = None):
    """Every state of h_t = alpha_t * h_{t-1} + u_t, differentiable in all inputs.

    Args:
        alpha: (B, L, ...) decays in [0, 1] (larger values work but may overflow).
        u: (B, L, ...) inputs.
        h0: (B, ...) the state before the first token; None: zeros.
        chunk_size: tokens per chunk of the parallel scan (speed only); None: ceil(sqrt(L)).

    Returns:
        (B, L, ...) the states h_0 .. h_{L-1}.
    """
    if h0 is None:
        h0 = u.new_zeros(u.shape[:1] + u.shape[2:])
    if u.shape[1] == 0:
        return u.new_zeros(u.shape)
    return LinearScan.apply(alpha.contiguous(), u.contiguous(), h0.contiguous(), chunk_size)


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
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, dt, A, B, C = (full_precision(t) for t in (x, dt, A, B, C))
        D = full_precision(D) if D is not None else None
        h0 = full_precision(h0) if h0 is not None else None
        kernel = _kernel() if use_kernel and x.is_cuda else None
        if kernel is not None:
            return _kernel_scan(kernel, x, dt, A, B, C, D, h0)
        alpha = torch.exp(dt.unsqueeze(-1) * A)  # (B, L, E, N)
        u = (dt * x).unsqueeze(-1) * B.unsqueeze(2)  # (B, L, E, N)
        h = linear_scan(alpha, u, h0, chunk_size)  # (B, L, E, N)
        y = torch.einsum("blen,bln->ble", h, C)  # (B, L, E)
        if D is not None:
            y = y + D * x
        h_last = h[:, -1] if x.shape[1] else _initial_state(x, A, h0)
        return y, h_last


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32, or as it is if it is float64."""
    return t if t.dtype == torch.float64 else t.float()


def initial_state_response(dt: Tensor, A: Tensor, C: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """What a starting state h0 adds to the outputs and the final state of a scan.

    The scan is linear in (h0, inputs), so a scan from h0 equals the scan from zeros plus
    y_t = C_t . (exp(S_t) h0) and h_last = exp(S_{L-1}) h0 with S_t = sum_{s<=t} dt_s A
    (S <= 0: no overflow). The CUDA kernel takes no starting state; this adds it.

    Args:
        dt: (B, L, E) step sizes.
        A: (E, N) state matrix.
        C: (B, L, N) output matrix.
        h0: (B, E, N) starting state.

    Returns:
        (B, L, E) the added outputs and (B, E, N) the added final state.
    """
    decay = torch.exp(torch.cumsum(dt, dim=1).unsqueeze(-1) * A)  # (B, L, E, N)
    y = torch.einsum("blen,ben,bln->ble", decay, h0, C)  # (B, L, E)
    return y, decay[:, -1] * h0


def _initial_state(x: Tensor, A: Tensor, h0: Tensor | None) -> Tensor:
    return h0 if h0 is not None else x.new_zeros(x.shape[0], *A.shape)


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


def _kernel_scan(kernel, x, dt, A, B, C, D, h0) -> tuple[Tensor, Tensor]:
    """The fused CUDA scan; it works on (B, E, L) and cannot start from a state, so the
    state's response is added (`initial_state_response`)."""
    if x.shape[1] == 0:
        return x.new_zeros(x.shape), _initial_state(x, A, h0)
    y, h_last = kernel(
        x.transpose(1, 2).contiguous(),  # (B, E, L)
        dt.transpose(1, 2).contiguous(),  # (B, E, L)
        A.contiguous(),
        B.transpose(1, 2).contiguous(),  # (B, N, L)
        C.transpose(1, 2).contiguous(),  # (B, N, L)
        D,
        return_last_state=True,
    )
    y = y.transpose(1, 2)  # (B, L, E)
    if h0 is not None:
        y_h0, h_h0 = initial_state_response(dt, A, C, h0)
        y, h_last = y + y_h0, h_last + h_h0
    return y, h_last.detach()
