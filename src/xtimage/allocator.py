"""The host allocator's trade of memory for time, and the switch to the lean side.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves a block above
its mmap threshold with a fresh mapping that goes back to the kernel when freed, and
anything smaller from its heap, which it keeps. The threshold starts at 128 KiB and rises
to the size of each mapped block freed, up to 32 MiB; after a region encoder's first
pass, activations of 128 KiB-32 MiB all live in the heap, which keeps its high-water
mark and whose holes rarely fit the next tensor. A fixed threshold gives freed tensors
back at once, for the kernel's time to hand out fresh zeroed pages. Measured
(docs/performance.md, "Host memory"; Swin-V2-T + Hyper inference at 4,096², 16 regions a
batch): +1,144 MiB -> +764 MiB over the built model, for 1.32x the time.

`lean_host_memory` fixes the threshold at 128 KiB for the rest of the process. The memory
planner reads `host_memory_is_lean` to choose the overhead it adds to the live bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import warnings

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
LEAN_THRESHOLD = 128 * 1024  # bytes: glibc's initial threshold, kept fixed
# glibc reads a fixed threshold from this variable at start-up (for child processes)
THRESHOLD_VARIABLE = "MALLOC_MMAP_THRESHOLD_"

_lean = False


def lean_host_memory() -> bool:
    """Make freed tensors above 128 KiB go back to the kernel at once (glibc only).

    Peak resident memory then follows the live tensors instead of the heap's high-water
    mark, for more time (1.1-1.3x in the paper configuration's inference). Irreversible
    for the process; a second call does nothing. Returns whether the process's allocator
    is now lean: False (with a warning) where the C library is not glibc (macOS, musl),
    which keeps its own allocator.
    """
    global _lean
    if not _lean:
        _lean = _fix_threshold()
        if not _lean:
            warnings.warn("lean host memory needs glibc's malloc (Linux); the default "
                          "allocator stays", stacklevel=2)  # fmt: skip
    return _lean


def _fix_threshold() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, LEAN_THRESHOLD) == 1  # 1: success


def host_memory_is_lean() -> bool:
    """Whether `lean_host_memory` has taken effect in this process, or glibc was started
    with a fixed threshold (``MALLOC_MMAP_THRESHOLD_`` in the environment)."""
    return _lean or THRESHOLD_VARIABLE in os.environ
