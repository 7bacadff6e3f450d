"""Name -> constructor registries (the timm `register_model` / `create_model` pattern).

A registry maps a short name to a builder; `create(name, **kwargs)` checks the name and
the keyword arguments against the builder's signature, so a typo in a config fails early
with the list of what is allowed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from xtimage.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named family of builders, e.g. the context encoders."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a class or function under ``name``."""

        def decorator(builder: Callable[..., T]) -> Callable[..., T]:
            assert name not in self._builders, f"{self.kind} '{name}' registered twice"
            self._builders[name] = builder
            return builder

        return decorator

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._builders:
            raise ConfigError(
                f"unknown {self.kind} '{name}'; known: {', '.join(self.names()) or '(none)'}"
            )
        return self._builders[name]

    def arguments(self, name: str) -> list[str]:
        """Keyword arguments the builder accepts."""
        params = inspect.signature(self.get(name)).parameters.values()
        return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def create(self, name: str, **kwargs: Any) -> T:
        """Build ``name`` with ``kwargs``; unknown arguments are a `ConfigError`."""
        builder = self.get(name)
        params = inspect.signature(builder).parameters.values()
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            allowed = self.arguments(name)
            unknown = sorted(set(kwargs) - set(allowed))
            if unknown:
                raise ConfigError(
                    f"{self.kind} '{name}' got unknown argument(s) {', '.join(unknown)}; "
                    f"allowed: {', '.join(allowed)}"
                )
        return builder(**kwargs)
