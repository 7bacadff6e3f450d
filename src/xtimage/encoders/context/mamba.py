"""Mamba context encoder: selective state-space blocks over the region tokens.

Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023,
arXiv 2312.00752), as used by xT (Gupta et al., "xT: Nested Tokenization for Larger
Context in Large Images", ICML 2024, arXiv 2403.01915): pre-norm residual blocks whose
mixer is in_proj -> (x, z); causal depthwise conv over x; SiLU; x_proj -> (dt, B, C);
dt_proj + softplus; the selective scan; y * SiLU(z); out_proj. The release uses 4 layers
of width 768 with ``d_state=16, d_conv=4, expand=2``; layers 0 and 2 read the sequence
reversed and 1 and 3 forward, so every token sees context from both sides.

Streaming. A forward-only stack (``bidirectional=False``) is a recurrence: each layer's
state is the last ``d_conv - 1`` conv inputs and the SSM state, so running consecutive
segments while carrying the state equals one call on the whole sequence (``streamable``).
A reversed layer needs the end of the sequence before its first output, so a
bidirectional stack runs only on whole sequences; passing it a state is a `ConfigError`.

Masked tokens (``mask`` False) do not exist for the model: the SSM skips them (dt = 0,
so the decay is 1 and the input 0) and the conv window slides over real tokens only (they
are gathered to the front before the conv and scattered back). The outputs at real tokens
therefore equal those of the sequence with the masked tokens removed, in either direction
and across segments. Masked tokens may hold any finite values; their outputs are
unspecified. This encoder does not use ``positions`` itself: Mamba reads position from the
token order (region-major, see `xtimage.tiling`); the tokens it receives from `XT` carry the
2-D sin-cos codes `XT.contextualise` adds for every context encoder, as in the release.

``release=True`` is the authors' block as released, for their checkpoints
(`xtimage.convert`): a LayerNorm (eps 1e-5, with bias) instead of the RMSNorm, the
residual taken from the *normed* tokens (``h = norm(x); h + mixer(h)``, their Block),
and no final norm.

Dimension legend: B batch, L tokens, D width (``dim``), E inner width (``expand * dim``),
N state size (``d_state``), R rank of dt (``dt_rank``), W conv width (``d_conv``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from xtimage.encoders.context.base import CONTEXT_ENCODERS, ContextEncoder, State
from xtimage.encoders.context.layers import check_inputs
from xtimage.encoders.context.selective_scan import full_precision, selective_scan
from xtimage.errors import ConfigError, InputError

LayerState = tuple[Tensor, Tensor]


class MambaMixer(nn.Module):
    """The Mamba mixer of one layer, causal over the sequence, with a carried state.

    Args:
        dim: token width D.
        d_state: SSM state size N per channel.
        d_conv: width of the causal depthwise conv.
        expand: inner width E = expand * dim.
        dt_rank: rank of the dt projection; None: ceil(dim / 16).
        dt_min: smallest initial step size.
        dt_max: largest initial step size.
        chunk_size: tokens per chunk of the pure-PyTorch scan (speed only).
        use_kernel: use mamba_ssm's CUDA kernel when it is installed and the input is on
            CUDA (its final state carries no gradient).
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        chunk_size: int | None = None,
        use_kernel: bool = True,
    ) -> None:
        super().__init__()
        inner = expand * dim
        self.d_state = d_state
        self.d_conv = d_conv
        self.dt_rank = dt_rank or math.ceil(dim / 16)
        self.chunk_size = chunk_size
        self.use_kernel = use_kernel
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner)  # applied by `_conv`
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1.0, d_state + 1).repeat(inner, 1)))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, dim, bias=False)

        # Mamba's init: step sizes log-uniform in [dt_min, dt_max] through softplus, so
        # each channel starts with its own time scale (S4D-real A = -1..-N above).
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        log_dt = torch.empty(inner).uniform_(math.log(dt_min), math.log(dt_max))
        dt = log_dt.exp().clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, state: LayerState | None = None
    ) -> tuple[Tensor, LayerState]:
        """Mix ``x`` (B, L, D) causally; ``state`` is (conv (B, E, W-1), ssm (B, E, N))."""
        conv_state, ssm_state = state if state is not None else (None, None)
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, E) each
        xs, conv_state = self._conv(xs, mask, conv_state)
        xs = F.silu(xs)
        dt, B, C = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(full_precision(self.dt_proj(dt)))  # (B, L, E)
        if mask is not None:
            dt = dt.masked_fill(~mask.unsqueeze(-1), 0.0)  # decay 1, input 0: state kept
        A = -torch.exp(full_precision(self.A_log))  # (E, N)
        y, ssm_state = selective_scan(
            xs,
            dt,
            A,
            B,
            C,
            self.D,
            ssm_state,
            chunk_size=self.chunk_size,
            use_kernel=self.use_kernel,
        )  # (B, L, E), (B, E, N)
        y = y * F.silu(full_precision(z))  # (B, L, E)
        return self.out_proj(y.to(x.dtype)), (conv_state, ssm_state)

    def _conv(
        self, xs: Tensor, mask: Tensor | None, conv_state: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Causal depthwise conv of (B, L, E) over real tokens only, after ``conv_state``.

        The new state is the last W-1 conv inputs of (old state, real tokens).
        """
        batch, length, inner = xs.shape
        if conv_state is None:
            conv_state = xs.new_zeros(batch, inner, self.d_conv - 1)
        n_real = torch.full((batch,), length, device=xs.device)
        if mask is not None:  # real tokens first, in order; the masked tail is zero
            order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # (B, L)
            real = mask.gather(1, order)  # (B, L)
            xs = xs.gather(1, order.unsqueeze(-1).expand_as(xs)).masked_fill(~real[..., None], 0)
            n_real = mask.sum(dim=1)
        seq = torch.cat([conv_state.transpose(1, 2).to(xs.dtype), xs], dim=1)  # (B, W-1+L, E)
        out = F.conv1d(seq.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, groups=inner)
        out = out.transpose(1, 2)  # (B, L, E)
        last = n_real[:, None] + torch.arange(self.d_conv - 1, device=xs.device)  # (B, W-1)
        new_state = seq.gather(1, last.unsqueeze(-1).expand(-1, -1, inner)).transpose(1, 2)
        if mask is not None:
            out = torch.zeros_like(out).scatter(1, order.unsqueeze(-1).expand_as(out), out)
        return out, new_state  # (B, L, E), (B, E, W-1)


class MambaBlock(nn.Module):
    """Pre-norm residual block x + drop_path(dropout(mixer(norm(x)))), read forward or
    reversed.

    Args:
        dim: token width.
        reverse: run the mixer on the reversed sequence (no state: not streamable).
        drop: dropout on the mixer output.
        drop_path: stochastic-depth rate of the residual branch.
        release: the authors' block: LayerNorm, residual from the normed tokens.
        **mixer_kwargs: `MambaMixer` arguments.
    """

    def __init__(
        self,
        dim: int,
        reverse: bool = False,
        drop: float = 0.0,
        drop_path: float = 0.0,
        release: bool = False,
        **mixer_kwargs,
    ) -> None:
        super().__init__()
        self.reverse = reverse
        self.release = release
        self.norm = nn.LayerNorm(dim, eps=1e-5) if release else nn.RMSNorm(dim, eps=1e-5)
        self.mixer = MambaMixer(dim, **mixer_kwargs)
        self.drop = nn.Dropout(drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: Tensor, mask: Tensor | None = None, state: LayerState | None = None
    ) -> tuple[Tensor, LayerState]:
        h = self.norm(x)  # (B, L, D)
        if self.reverse:
            assert state is None, "a reversed layer cannot carry a state"
            y, state = self.mixer(h.flip(1), None if mask is None else mask.flip(1))
            y = y.flip(1)
        else:
            y, state = self.mixer(h, mask, state)
        return (h if self.release else x) + self.drop_path(self.drop(y)), state


@CONTEXT_ENCODERS.register("mamba")
class MambaContext(ContextEncoder):
    """A stack of Mamba blocks with a final RMSNorm; forward-only stacks stream.

    Args:
        dim: token width.
        depth: number of blocks.
        heads: not used (a Mamba layer has no heads); accepted so that one config can
            switch between context encoders.
        d_state: SSM state size per channel.
        d_conv: width of the causal depthwise conv.
        expand: inner width = expand * dim.
        dt_rank: rank of the dt projection; None: ceil(dim / 16).
        bidirectional: even layers (0, 2, ...) read the sequence reversed, as in the
            paper; then the encoder is not streamable. False: every layer reads forward
            and the state carries across segments.
        drop: dropout on every mixer output.
        drop_path: stochastic depth, rising linearly from 0 to this over the blocks.
        chunk_size: tokens per chunk of the pure-PyTorch scan (speed only).
        use_kernel: use mamba_ssm's CUDA kernel when installed and on CUDA (its final
            state carries no gradient: stream with a detached state, or set False).
        release: the authors' released blocks (see the module docstring): LayerNorm,
            residual from the normed tokens, no final norm.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 4,
        heads: int | None = None,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        bidirectional: bool = True,
        drop: float = 0.0,
        drop_path: float = 0.0,
        chunk_size: int | None = None,
        use_kernel: bool = True,
        release: bool = False,
    ) -> None:
        super().__init__()
        for name, value in [("dim", dim), ("depth", depth), ("d_state", d_state),
                            ("d_conv", d_conv), ("expand", expand)]:  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"mamba {name} must be a positive integer, got {value!r}")
        for name, value in [("drop", drop), ("drop_path", drop_path)]:
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"mamba {name} must be in [0, 1), got {value!r}")
        self.dim = dim
        self.bidirectional = bidirectional
        self.streamable = not bidirectional
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()  # meta-safe
        self.layers = nn.ModuleList(
            MambaBlock(
                dim,
                reverse=bidirectional and i % 2 == 0,
                drop=drop,
                drop_path=rates[i],
                d_state=d_state,
                d_conv=d_conv,
                expand=expand,
                dt_rank=dt_rank,
                chunk_size=chunk_size,
                use_kernel=use_kernel,
                release=release,
            )
            for i in range(depth)
        )
        self.norm = nn.Identity() if release else nn.RMSNorm(dim, eps=1e-5)
        with torch.no_grad():  # residual branches summed over depth stay O(1) (GPT-2, Mamba)
            for layer in self.layers:
                layer.mixer.out_proj.weight.div_(math.sqrt(depth))

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor,
        mask: Tensor | None = None,
        state: State = None,
    ) -> tuple[Tensor, State]:
        """Contextualise (B, N, D) tokens; the state is a tuple of (conv, ssm) per layer."""
        mask = check_inputs(self.dim, tokens, positions, mask)
        if state is not None and not self.streamable:
            raise ConfigError(
                "the bidirectional mamba encoder cannot continue from a state: its reversed "
                "layers need the whole sequence; run it on whole sequences, or build it "
                "with bidirectional=False to stream segment by segment"
            )
        if state is not None and len(state) != len(self.layers):
            raise InputError(
                f"mamba state has {len(state)} layers, the encoder {len(self.layers)}; "
                "pass the state this encoder returned for the previous segment"
            )
        if tokens.shape[1] == 0:  # an empty segment leaves the state as it is
            return self.norm(tokens), state
        if bool(mask.all()):
            mask = None  # nothing to skip: the faster path
        x = tokens
        new_state = []
        for i, layer in enumerate(self.layers):
            x, layer_state = layer(x, mask, None if state is None else state[i])
            new_state.append(layer_state)
        out = self.norm(x)  # (B, N, D)
        return out, tuple(new_state) if self.streamable else None
