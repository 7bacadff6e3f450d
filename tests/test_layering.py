"""The package's layers import downward only (docs/architecture.md).

Every ``import xtimage...`` in every module, at the top or inside a function (a lazy
import is still a dependency), must name a module of the same layer or a lower one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import xtimage

PACKAGE = Path(xtimage.__file__).parent

# Lowest first; a module belongs to the first layer with a prefix that matches it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "registry", "runtime", "allocator", "distributed", "limits", "integrity")),
    ("geometry", ("window", "tiling")),
    ("io", ("io",)),
    ("models", ("encoders", "heads", "model", "baselines")),
    ("metrics", ("metrics",)),
    ("config", ("config",)),  # run configs: models never see them; data and tasks read them
    ("data", ("data",)),
    ("tasks", ("tasks",)),
    ("engine", ("engine",)),
    ("build", ("build", "checkpoint")),
    ("predict", ("predict", "evaluate")),
    ("train", ("train",)),
    ("app", ("cli", "commands", "demo", "report", "api", "view", "archive", "convert", "paper")),
]


def layer_of(module: str) -> int:
    """The layer index of ``xtimage.a.b`` (by its first component ``a``)."""
    parts = module.split(".")
    if parts == ["xtimage"]:
        return len(LAYERS) - 1  # the package's public API re-exports the top
    first = parts[1]
    for index, (_, prefixes) in enumerate(LAYERS):
        if first in prefixes:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every xtimage import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("xtimage")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name.startswith("xtimage"):
                found.append((node.lineno, name))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_go_downward_only(path):
    mine = layer_of(module_name(path))
    upward = [
        f"line {line}: {name} ({LAYERS[layer_of(name)][0]})"
        for line, name in imports(path)
        if layer_of(name) > mine
    ]
    assert not upward, f"{module_name(path)} ({LAYERS[mine][0]}) imports upward: {upward}"


def test_every_module_has_a_layer():
    assert all(layer_of(module_name(p)) >= 0 for p in MODULES)
