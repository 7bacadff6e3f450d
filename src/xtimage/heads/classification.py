"""Image classification from contextualised tokens, by mean or attention pooling, or a CLS token.

Mean and attention pooling have a running form (`partial`, `merge`, `logits`) so that
streamed inference can pool segment by segment without keeping the token sequence;
attention pooling merges partial softmaxes by their log-sum-exp, exactly.

``pool="cls"`` reads the last token only: the learned CLS token `XT` appends after the
image's tokens when its head asks for one (the xT release's classifier: LayerNorm and a
linear layer on the CLS output). ``mlp_ratio`` replaces the pre-norm and the linear layer
by the release's plain ("naive") classifier on the mean of the tokens: Linear to
``mlp_ratio * dim``, GELU, LayerNorm, Linear.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xtimage.errors import ConfigError
from xtimage.heads.base import Head


@dataclass
class PoolState:
    """A partial pool over some tokens of each image.

    Mean pooling: ``total`` is the sum of tokens, ``weight`` their count, ``peak`` unused.
    Attention pooling: softmax accumulators with the running maximum score ``peak``.
    """

    total: torch.Tensor  # (B, D)
    weight: torch.Tensor  # (B,)
    peak: torch.Tensor  # (B,)


class ClassificationHead(Head):
    """Pool the valid tokens of each image, then a linear classifier.

    Args:
        dim: token width.
        num_classes: number of classes.
        pool: "mean", "attention" (a learned query scores every token) or "cls" (the
            last token, a CLS token `XT` appends; not streamable).
        label_smoothing: used by `loss`.
        mlp_ratio: with mean pooling, the release's plain classifier (mean of the raw
            tokens, then Linear, GELU, LayerNorm, Linear) with this hidden ratio.
    """

    dense = False

    def __init__(
        self,
        dim: int,
        num_classes: int,
        pool: str = "mean",
        label_smoothing: float = 0.0,
        mlp_ratio: int | None = None,
    ) -> None:
        super().__init__()
        if pool not in ("mean", "attention", "cls"):
            raise ConfigError(f"unknown pooling '{pool}'; use 'mean', 'attention' or 'cls'")
        if mlp_ratio is not None and pool != "mean":
            raise ConfigError(f"a classifier MLP (mlp_ratio={mlp_ratio}) needs pool='mean'")
        self.pool = pool
        self.label_smoothing = label_smoothing
        self.score = nn.Linear(dim, 1) if pool == "attention" else None
        if mlp_ratio is None:
            self.norm = nn.LayerNorm(dim)
            self.fc = nn.Linear(dim, num_classes)
        else:  # normalised after pooling: the mean of raw tokens is what it sees
            hidden = mlp_ratio * dim
            self.norm = nn.Identity()
            self.fc = nn.Sequential(
                nn.Linear(dim, hidden),
                nn.GELU(),
                nn.LayerNorm(hidden),
                nn.Linear(hidden, num_classes),
            )

    def partial(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> PoolState:
        """Pool a segment: tokens (B, N, D), mask (B, N) True for real tokens.

        With ``pool="cls"`` the segment must end with the CLS token (the whole sequence).
        """
        if self.pool == "cls":
            x = self.norm(tokens[:, -1])  # (B, D)
            return PoolState(x, x.new_ones(x.shape[0]), x.new_zeros(x.shape[0]))
        x = self.norm(tokens)
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if self.score is None:
            m = mask.to(x.dtype)
            total = (x * m[..., None]).sum(1)  # (B, D)
            return PoolState(total, m.sum(1), torch.zeros_like(m[:, 0]))
        s = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf"))  # (B, N)
        peak = s.amax(1).clamp_min(torch.finfo(s.dtype).min)  # (B,), finite if all masked
        w = torch.exp(s - peak[:, None])  # (B, N)
        return PoolState((w[..., None] * x).sum(1), w.sum(1), peak)

    def merge(self, a: PoolState | None, b: PoolState) -> PoolState:
        """Combine the pools of two disjoint segments."""
        if a is None:
            return b
        if self.pool == "cls":
            raise ConfigError("a CLS-token classifier reads one token; it cannot merge segments")
        if self.score is None:
            return PoolState(a.total + b.total, a.weight + b.weight, a.peak)
        peak = torch.maximum(a.peak, b.peak)
        ca, cb = torch.exp(a.peak - peak), torch.exp(b.peak - peak)  # (B,)
        return PoolState(
            a.total * ca[:, None] + b.total * cb[:, None], a.weight * ca + b.weight * cb, peak
        )

    def logits(self, state: PoolState) -> torch.Tensor:
        """Class logits (B, num_classes) from a complete pool."""
        pooled = state.total / state.weight.clamp_min(1e-12)[:, None]
        return self.fc(pooled)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(self.partial(tokens, mask))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the batch, with label smoothing."""
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
