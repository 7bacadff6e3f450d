import pytest

from xtimage.errors import ConfigError
from xtimage.registry import Registry


def test_registry_builds_by_name_and_rejects_unknown_names_and_arguments():
    reg: Registry[tuple] = Registry("widget")

    @reg.register("pair")
    def pair(a: int, b: int = 2) -> tuple:
        return a, b

    assert reg.create("pair", a=1) == (1, 2)
    assert reg.arguments("pair") == ["a", "b"]
    with pytest.raises(ConfigError, match="unknown widget 'pear'; known: pair"):
        reg.create("pear")
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) c; allowed: a, b"):
        reg.create("pair", a=1, c=3)
