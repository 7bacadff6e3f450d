"""The head contract: what the model and the streaming engine ask of a task head.

A head maps contextualised tokens to a task's raw outputs. There are two kinds, told
apart by ``dense``:

- *pooled* heads (``dense = False``, e.g. `ClassificationHead`) reduce every token of an
  image to one answer. The engine streams them: `partial` pools a segment of tokens into
  a state, `merge` adds two states, `logits` reads the answer from the final state, and
  ``forward(tokens, mask)`` is ``logits(partial(tokens, mask))``; `loss` is a mean over
  images.
- *dense* heads (``dense = True``, e.g. `DenseHead`) decode each region on its own from
  its skip maps and its tokens, ``forward(skips, tokens, region)``, so the engine can run
  them chunk by chunk. `split` names the output channels, `loss_sum` sums per-pixel
  losses over valid pixels (chunks add up to the whole), `batch_loss` is the mean for
  all-at-once training, and `decomposable` tells whether chunked training is exact.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class Head(nn.Module):
    """Base class of task heads; see the module docstring for the two contracts."""

    dense: ClassVar[bool]

    # pooled heads
    def partial(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> Any:
        raise NotImplementedError(f"{type(self).__name__} is not a pooled head")

    def merge(self, a: Any, b: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} is not a pooled head")

    def logits(self, state: Any) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not a pooled head")

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not a pooled head")

    # dense heads
    @property
    def out_channels(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} is not a dense head")

    @property
    def decomposable(self) -> bool:
        raise NotImplementedError(f"{type(self).__name__} is not a dense head")

    def split(self, out: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} is not a dense head")

    def loss_sum(
        self, out: torch.Tensor, targets: dict[str, torch.Tensor], valid: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not a dense head")

    def batch_loss(
        self, out: torch.Tensor, targets: dict[str, torch.Tensor], valid: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not a dense head")
