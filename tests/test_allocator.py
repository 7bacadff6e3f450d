"""The lean host allocator: freed tensors go back to the kernel instead of the heap."""

import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

# Frees a mapped 4 MiB tensor (glibc then raises its threshold to 4 MiB), then allocates
# two more and frees the lower one: the resident growth is what the heap kept.
PATTERN = textwrap.dedent("""
    import sys, torch
    from xtimage.allocator import host_memory_is_lean, lean_host_memory
    if sys.argv[1] == "lean":
        assert lean_host_memory() and lean_host_memory()
    assert host_memory_is_lean() == (sys.argv[1] == "lean")
    def resident():
        return int(open("/proc/self/statm").read().split()[1]) * 4096
    n = 1 << 20
    a = torch.ones(n); del a
    before = resident()
    b = torch.ones(n); c = torch.ones(n); del b
    print((resident() - before) / 2**20)
""")


def kept_mib(mode: str) -> float:
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* settings inherited
    out = subprocess.run([sys.executable, "-c", PATTERN, mode], capture_output=True,
                         text=True, check=True, env=env)  # fmt: skip
    return float(out.stdout.split()[-1])


@glibc
def test_the_lean_allocator_returns_a_freed_tensor_that_the_default_heap_keeps():
    default, lean = kept_mib("default"), kept_mib("lean")
    assert default >= 7.5  # b's hole below c stays resident
    assert lean <= 4.5  # only c: b's pages went back to the kernel


def test_the_planner_counts_less_slack_under_the_lean_allocator(monkeypatch):
    from xtimage import allocator
    from xtimage.engine import planner

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setattr(allocator, "_lean", False)
    default = planner.overhead_constants("cpu")
    monkeypatch.setattr(allocator, "_lean", True)
    lean = planner.overhead_constants("cpu")
    assert lean[0] == default[0] and 1.0 <= lean[1] < default[1]
    assert planner.overhead_constants("cuda") == (planner.CUDA_OVERHEAD, planner.CUDA_FACTOR)


def test_without_glibc_the_request_warns_and_nothing_changes(monkeypatch):
    from xtimage import allocator

    monkeypatch.setattr(allocator, "_lean", False)
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    with pytest.warns(UserWarning, match="needs glibc"):
        assert allocator.lean_host_memory() is False
    assert allocator._lean is False
