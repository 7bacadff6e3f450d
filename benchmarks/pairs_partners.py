"""Probe (not in the package): partner paths beside the context encoder on ``pairs``.

Registers two context encoders and trains one through `context_pays.run_one` with the
``film_max`` recipe plus overrides; each row (with its overrides) goes to
``results/pairs_partners.json`` and stdout:

    python benchmarks/pairs_partners.py NAME pairs SEED STEPS model.context=xl_pos

- ``mirror_oracle``: each token plus a projection of its point mirror's (no XL).
- ``xl_sym`` (session 16's rows): XL's output plus projections of the raw tokens at the
  row, column and point mirrors; now the package's ``model.partners=[vflip, hflip, rot180]``
  (`xtimage.encoders.context.partners`), so the probe is gone.
- ``xl_pos``: XL plus an attention whose weights depend on the two image-normalised
  positions only (a mirror is a sign pattern of its bilinear form, a shift a rotation).

``xl_pos`` reads the grid's extent from the call's positions: whole images only.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch
from torch import nn

from common import save_rows  # noqa: E402
from xtimage.encoders.context.base import CONTEXT_ENCODERS, ContextEncoder, IdentityContext
from xtimage.encoders.context.partners import SymmetricPartners
from xtimage.encoders.context.transformer_xl import TransformerXL


@CONTEXT_ENCODERS.register("mirror_oracle")
def mirror_oracle(dim):
    """Each token plus a projection of its point mirror's, no XL: the partner handed over."""
    return SymmetricPartners(IdentityContext(dim), ["rot180"])


def axis_features(coord, extent, freqs):
    """(B, N) integer coordinate on an axis of `extent` cells -> (B, N, 2F) cos/sin of pi k u."""
    u = (coord.double() + 0.5) / extent
    k = torch.arange(1, freqs + 1, dtype=torch.float64, device=coord.device)
    ang = torch.pi * u[..., None] * k
    return torch.cat([ang.cos(), ang.sin()], -1).to(torch.get_default_dtype())


class PositionMixer(nn.Module):
    """Attention whose weights depend on the two positions only (normalised to the image):
    logit_h(p, q) = f_r(p)^T A_h f_r(q) + f_c(p)^T B_h f_c(q); A, B zero at init (uniform)."""

    def __init__(self, dim, heads=4, freqs=4, init_std=0.0):
        super().__init__()
        self.heads, self.freqs = heads, freqs
        self.A = nn.Parameter(torch.randn(heads, 2 * freqs, 2 * freqs) * init_std)
        self.B = nn.Parameter(torch.randn(heads, 2 * freqs, 2 * freqs) * init_std)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, tokens, positions):
        B, N, D = tokens.shape
        R = positions[..., 0].max() + 1
        C = positions[..., 1].max() + 1
        fr = axis_features(positions[..., 0], R, self.freqs)  # (B, N, 2F)
        fc = axis_features(positions[..., 1], C, self.freqs)
        logits = torch.einsum("bpi,hij,bqj->bhpq", fr, self.A, fr) + torch.einsum(
            "bpi,hij,bqj->bhpq", fc, self.B, fc
        )
        attn = logits.softmax(-1)  # (B, H, N, N)
        v = self.v(tokens).view(B, N, self.heads, D // self.heads).transpose(1, 2)
        out = (attn @ v).transpose(1, 2).reshape(B, N, D)
        return self.o(out)


@CONTEXT_ENCODERS.register("xl_pos")
class XLPos(ContextEncoder):
    """XL beside a position-only mixer of the raw tokens."""

    def __init__(self, dim, pos_heads=4, pos_freqs=4, pos_init=0.0, **kw):
        super().__init__()
        self.dim = dim
        self.xl = TransformerXL(dim, **kw)
        self.mix = PositionMixer(dim, pos_heads, pos_freqs, pos_init)

    def forward(self, tokens, positions, mask=None, state=None):
        out, _ = self.xl(tokens, positions, mask)
        return out + self.mix(tokens, positions), None


if __name__ == "__main__":
    import context_pays as cp

    name, task, seed, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    extra = sys.argv[5:]
    cp.RECIPES[name] = [*cp.RECIPES["film_max"], *extra]
    row = {**cp.run_one(name, task, "xt", seed, steps, 48), "overrides": extra}
    row.pop("marked", None)
    print("RESULT", json.dumps(row))
    save_rows("pairs_partners", [row], key=cp.GROUP)
