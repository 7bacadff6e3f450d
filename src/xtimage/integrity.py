"""Digests that let a reader tell a damaged file from a good one.

A checkpoint stores the digest of its tensors in its metadata and checks it on load, so
a flipped byte (a bad disk, a damaged copy) is an error naming the file, not weights that
load and predict garbage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def digest_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()
