import pytest
import torch

from xtimage.encoders.context import CONTEXT_ENCODERS, create_context_encoder, detach_state
from xtimage.errors import ConfigError


def test_none_is_identity_and_streamable():
    enc = create_context_encoder("none", dim=8)
    x = torch.randn(2, 10, 8)
    out, state = enc(x, torch.zeros(2, 10, 2, dtype=torch.long))
    assert out is x and state is None and enc.streamable
    assert "none" in CONTEXT_ENCODERS


def test_unknown_encoder_lists_known_ones():
    with pytest.raises(ConfigError, match="known: .*none"):
        create_context_encoder("transformer-xxl", dim=8)


def test_detach_state_detaches_nested_tensors():
    w = torch.ones(3, requires_grad=True)
    state = {"mem": [w * 2, w * 3], "n": 4}
    cut = detach_state(state)
    assert not cut["mem"][0].requires_grad and cut["n"] == 4
    assert torch.equal(cut["mem"][1], w.detach() * 3)
