"""Context encoders over region tokens, behind one interface and one registry.

``create_context_encoder("none", dim=64)`` builds one by name; see `base.ContextEncoder`
for the interface every encoder implements.
"""

from xtimage.encoders.context import hyper, mamba, transformer_xl, windowed  # noqa: F401  (register)
from xtimage.encoders.context.base import (
    CONTEXT_ENCODERS,
    ContextEncoder,
    IdentityContext,
    create_context_encoder,
    detach_state,
)

__all__ = [
    "CONTEXT_ENCODERS",
    "ContextEncoder",
    "IdentityContext",
    "create_context_encoder",
    "detach_state",
]
