import pytest
import torch

from xtimage.errors import ConfigError
from xtimage.heads import ClassificationHead


@pytest.mark.parametrize("pool", ["mean", "attention"])
def test_running_pool_over_segments_equals_pooling_everything(pool):
    head = ClassificationHead(8, 4, pool=pool).double()
    tokens = torch.randn(2, 23, 8, dtype=torch.float64)
    mask = torch.rand(2, 23) > 0.3
    expected = head(tokens, mask)
    state = None
    for start, stop in [(0, 5), (5, 6), (6, 17), (17, 23)]:
        state = head.merge(state, head.partial(tokens[:, start:stop], mask[:, start:stop]))
    torch.testing.assert_close(head.logits(state), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pool", ["mean", "attention"])
def test_masked_tokens_do_not_count(pool):
    head = ClassificationHead(8, 3, pool=pool)
    tokens = torch.randn(1, 10, 8)
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, :6] = True
    noisy = tokens.clone()
    noisy[0, 6:] = 1e3
    torch.testing.assert_close(head(tokens, mask), head(noisy, mask))
    torch.testing.assert_close(head(tokens, mask), head(tokens[:, :6]))


def test_mean_pool_is_the_plain_mean():
    head = ClassificationHead(4, 2, pool="mean")
    tokens = torch.randn(1, 5, 4)
    expected = head.fc(head.norm(tokens).mean(1))
    torch.testing.assert_close(head(tokens), expected)


def test_unknown_pooling_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown pooling 'max'"):
        ClassificationHead(4, 2, pool="max")
