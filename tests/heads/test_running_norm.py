"""RunningNorm2d: BatchNorm's per-channel rescaling by statistics of earlier steps."""

import pytest
import torch

from xtimage.heads.running_norm import RunningNorm2d, commit_running_norms


def norm_with_stats(mean, var):
    m = RunningNorm2d(3).double()
    m.running_mean.copy_(torch.tensor(mean))
    m.running_var.copy_(torch.tensor(var))
    with torch.no_grad():
        m.weight.copy_(torch.tensor([1.0, 2.0, -0.5]))
        m.bias.copy_(torch.tensor([0.0, 0.1, 3.0]))
    return m


def test_forward_is_per_pixel_with_the_running_statistics_in_training_and_eval():
    m = norm_with_stats([1.0, -2.0, 0.5], [4.0, 0.25, 9.0])
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    mean, var = m.running_mean[:, None, None], m.running_var[:, None, None]
    w, b = m.weight[:, None, None], m.bias[:, None, None]
    expected = (x - mean) / torch.sqrt(var + m.eps) * w + b
    torch.testing.assert_close(m.train()(x), expected)
    torch.testing.assert_close(m.eval()(x), expected)
    # one pixel alone is normalised as it is among the others
    torch.testing.assert_close(m(x[1:, :, 2:3, 4:5]), expected[1:, :, 2:3, 4:5])


def test_commit_takes_the_first_steps_statistics_whole_then_a_moving_average():
    m = RunningNorm2d(3, momentum=0.25).double().train()
    x1 = (
        torch.randn(4, 3, 6, 6, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.1])[:, None, None]
        + 5
    )
    m(x1[:3]), m(x1[3:])  # one step taken in two chunks
    commit_running_norms(m)
    flat1 = x1.transpose(0, 1).flatten(1)  # (C, n)
    torch.testing.assert_close(m.running_mean, flat1.mean(1))
    torch.testing.assert_close(m.running_var, flat1.var(1))  # unbiased, as BatchNorm's
    x2 = torch.randn(2, 3, 4, 4, dtype=torch.float64) - 1
    m(x2)
    commit_running_norms(m)
    flat2 = x2.transpose(0, 1).flatten(1)
    torch.testing.assert_close(m.running_mean, 0.75 * flat1.mean(1) + 0.25 * flat2.mean(1))
    torch.testing.assert_close(m.running_var, 0.75 * flat1.var(1) + 0.25 * flat2.var(1))
    assert int(m.steps) == 2


@pytest.mark.parametrize("how", ["eval", "no_grad"])
def test_forwards_outside_training_gather_nothing(how):
    m = RunningNorm2d(3)
    m.train(how != "eval")
    with torch.set_grad_enabled(how != "no_grad"):
        m(torch.randn(2, 3, 4, 4) + 7)
    commit_running_norms(m)
    assert int(m.steps) == 0 and torch.equal(m.running_mean, torch.zeros(3))


def test_statistics_survive_a_state_dict_round_trip_and_sums_are_not_saved():
    m = RunningNorm2d(3).train()
    m(torch.randn(2, 3, 4, 4) * 2)
    commit_running_norms(m)
    m(torch.randn(2, 3, 4, 4))  # gathered, not committed
    state = m.state_dict()
    assert set(state) == {"weight", "bias", "running_mean", "running_var", "steps"}
    fresh = RunningNorm2d(3)
    fresh.load_state_dict(state)
    x = torch.randn(1, 3, 2, 2)
    torch.testing.assert_close(fresh(x), m.eval()(x))
