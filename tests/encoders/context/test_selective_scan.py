import importlib.util

import pytest
import torch

from xtimage.encoders.context import selective_scan as scan_module
from xtimage.encoders.context.selective_scan import selective_scan


def loop_selective_scan(x, dt, A, B, C, D, h0):
    """Mamba's recurrence written plainly: x, dt (B, L, E); A (E, N); B, C (B, L, N)."""
    h, ys = h0, []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t, :, None] * A)  # (B, E, N)
        h = decay * h + (dt[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * x[:, t])
    return torch.stack(ys, dim=1), h


def scan_inputs(batch=2, length=23, inner=5, state=3, dtype=torch.float64, dt_max=2.0):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, length, inner, generator=g, dtype=dtype)
    dt = torch.rand(batch, length, inner, generator=g, dtype=dtype) * dt_max
    A = -torch.rand(inner, state, generator=g, dtype=dtype) * 4 - 0.1
    B = torch.randn(batch, length, state, generator=g, dtype=dtype)
    C = torch.randn(batch, length, state, generator=g, dtype=dtype)
    D = torch.randn(inner, generator=g, dtype=dtype)
    h0 = torch.randn(batch, inner, state, generator=g, dtype=dtype)
    return [x, dt, A, B, C, D, h0]


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 23, 100, None])
def test_scan_equals_the_recurrence_for_any_chunk_size(chunk_size):
    x, dt, A, B, C, D, h0 = scan_inputs()
    y, h = selective_scan(x, dt, A, B, C, D, h0, chunk_size=chunk_size)
    y_ref, h_ref = loop_selective_scan(x, dt, A, B, C, D, h0)
    assert torch.allclose(y, y_ref, atol=1e-12) and torch.allclose(h, h_ref, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [2, None])
def test_scan_backward_passes_gradcheck(chunk_size):
    inputs = [t.requires_grad_() for t in scan_inputs(batch=1, length=9, inner=3, state=2)]
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, chunk_size=chunk_size), inputs)


def test_selective_scan_equals_the_recurrence_in_values_and_gradients():
    inputs = [t.requires_grad_() for t in scan_inputs()]
    weight_y = torch.randn(2, 23, 5, dtype=torch.float64)
    weight_h = torch.randn(2, 5, 3, dtype=torch.float64)

    def run(fn):
        y, h = fn(*inputs)
        grads = torch.autograd.grad((y * weight_y).sum() + (h * weight_h).sum(), inputs)
        return y, h, grads

    y, h, grads = run(lambda *a: selective_scan(*a, chunk_size=4))
    y_ref, h_ref, grads_ref = run(loop_selective_scan)
    assert y.dtype == torch.float64
    assert torch.allclose(y, y_ref, atol=1e-10) and torch.allclose(h, h_ref, atol=1e-10)
    for name, g, g_ref in zip(["x", "dt", "A", "B", "C", "D", "h0"], grads, grads_ref, strict=True):
        assert torch.allclose(g, g_ref, atol=1e-9), name


def test_scan_is_stable_where_the_cumulative_decay_overflows_exp():
    # decays of up to exp(-300) a token, ~1e4 nats over the sequence: exp(-S) is inf in
    # float32, so a scan built on it would return inf or NaN
    x, dt, A, B, C, D, h0 = scan_inputs(length=64, dt_max=60.0)
    A = A * 5
    y_ref, h_ref = loop_selective_scan(x, dt, A, B, C, D, h0)
    inputs = [t.float().requires_grad_() for t in (x, dt, A, B, C, D, h0)]
    y, h = selective_scan(*inputs)
    (y.sum() + h.sum()).backward()
    assert torch.allclose(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    assert torch.allclose(h.double(), h_ref, rtol=1e-4, atol=1e-4)
    assert all(torch.isfinite(t.grad).all() for t in inputs)


def test_scan_continued_from_its_state_equals_one_scan():
    x, dt, A, B, C, D, h0 = [t.requires_grad_() for t in scan_inputs(length=30)]
    y_full, h_full = selective_scan(x, dt, A, B, C, D, h0)
    ys, h = [], h0
    for piece in [slice(0, 7), slice(7, 8), slice(8, 30)]:
        y, h = selective_scan(x[:, piece], dt[:, piece], A, B[:, piece], C[:, piece], D, h)
        ys.append(y)
    assert torch.allclose(torch.cat(ys, dim=1), y_full, atol=1e-12)
    assert torch.allclose(h, h_full, atol=1e-12)
    # the gradient of the last state reaches the first piece's inputs
    g_piece = torch.autograd.grad(h.sum(), x)[0]
    g_full = torch.autograd.grad(h_full.sum(), x)[0]
    assert torch.allclose(g_piece, g_full, atol=1e-12) and g_piece[:, 0].abs().sum() > 0


def test_tokens_with_zero_step_leave_the_state_unchanged():
    x, dt, A, B, C, D, h0 = scan_inputs(length=12)
    skip = torch.zeros(12, dtype=torch.bool)
    skip[[0, 4, 5, 11]] = True
    y, h = selective_scan(x, dt.masked_fill(skip[:, None], 0), A, B, C, D, h0)
    keep = ~skip
    y_kept, h_kept = selective_scan(x[:, keep], dt[:, keep], A, B[:, keep], C[:, keep], D, h0)
    assert torch.allclose(y[:, keep], y_kept, atol=1e-12) and torch.allclose(h, h_kept, atol=1e-12)


def test_scan_is_linear_in_input_and_starting_state():
    # the CUDA path adds the response to h0 (a pure scan with x = 0) to the kernel's output
    x, dt, A, B, C, D, h0 = scan_inputs()
    y, h = selective_scan(x, dt, A, B, C, D, h0)
    y_x, h_x = selective_scan(x, dt, A, B, C, D, None)
    y_h0, h_h0 = selective_scan(torch.zeros_like(x), dt, A, B, C, D, h0)
    assert torch.allclose(y, y_x + y_h0, atol=1e-10) and torch.allclose(h, h_x + h_h0, atol=1e-10)
    assert (y_h0.abs() > 1e-6).any()


def test_chunk_groups_of_the_backward_pass_change_nothing(monkeypatch):
    inputs = [t.requires_grad_() for t in scan_inputs(length=40)]

    def grads():
        y, h = selective_scan(*inputs, chunk_size=4)
        return torch.autograd.grad(y.square().sum() + h.sum(), inputs)

    whole = grads()
    monkeypatch.setattr(scan_module, "_GROUP_ELEMENTS", 1)  # one chunk a group
    for name, got, want in zip(["x", "dt", "A", "B", "C", "D", "h0"], grads(), whole, strict=True):
        # grad A sums over groups in another order; the rest is computed the same way
        assert torch.allclose(got, want, rtol=1e-12) if name == "A" else torch.equal(got, want)


def test_empty_sequence_returns_the_starting_state():
    x, dt, A, B, C, D, h0 = (t[:, :0] if t.ndim == 3 else t for t in scan_inputs())
    y, h = selective_scan(x, dt, A, B, C, D, h0)
    assert y.shape == (2, 0, 5) and torch.equal(h, h0)


def test_scan_runs_in_float32_under_autocast():
    x, dt, A, B, C, D, h0 = (t.float() for t in scan_inputs())
    y, h = selective_scan(x, dt, A, B, C, D, h0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto, h_auto = selective_scan(x, dt, A, B, C, D, h0)
    assert y_auto.dtype == torch.float32
    assert torch.equal(y_auto, y) and torch.equal(h_auto, h)


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("mamba_ssm") is None,
    reason="needs CUDA and mamba_ssm",
)
def test_cuda_kernel_equals_the_pure_path():
    inputs = [t.float().cuda().requires_grad_() for t in scan_inputs(length=300, dt_max=0.5)]

    def run(use_kernel):
        y, h = selective_scan(*inputs, use_kernel=use_kernel)
        return (y, h, *torch.autograd.grad((y * y).sum(), inputs))

    for got, want in zip(run(True), run(False), strict=True):
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-3)
