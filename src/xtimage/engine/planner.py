"""Memory planner: the region batch (and training mode) with which a run fits a budget.

xT (Gupta et al., "xT: Nested Tokenization for Larger Context in Large Images", ICML 2024)
streams regions through the model; how many are encoded at once, ``region_batch``, is a
memory knob that never changes results. The planner estimates a run's peak memory for a
given image size and picks the largest region batch that fits a budget; for training it
prefers exact mode and falls back to streaming mode (a streamable context only).

How the estimate is made: a *dry run*. The engine's own code runs on a copy of the model
whose weights live on PyTorch's ``meta`` device (shapes only: nothing is computed or
allocated), reading a meta image, while a dispatch mode adds up the bytes of every tensor
storage that comes alive and subtracts them when it dies; the peak of that sum is the
run's activation peak. It follows the engine's passes as they are: what it keeps between
passes (tokens, their gradients, positions), the context encoder at the image's full
sequence length, the loss and the backward. Values do not exist on meta: ``.item()``
reads 0 (True for a bool), so value-dependent branches take the all-valid path.

Tracing a backbone costs a fraction of a second per call and a 100k image has 150k
regions, so the region encoder is traced once, on 1 and 2 regions (activations are linear
in the region count), and replayed: in the dry run `XT.encode` returns empty maps and
tokens of the right shapes, raises the peak by the traced forward peak and, with
autograd, holds the traced saved activations until its backward, which raises the peak
by the traced backward peak.

The estimate of the increase over the idle process (imports, weights and data loaded):

    increase = OVERHEAD + FACTOR * (activations + read-ahead) + gradients + optimizer

with read-ahead two chunks of float pixels (the next chunk read and stacked on a thread
while the current one is encoded), gradients and AdamW's two moments the size of the
trainable weights. ``OVERHEAD`` (the runtime's own working memory) and ``FACTOR`` (the
allocator's slack over live tensor bytes) depend on the device the run is planned for:

- CPU: fitted by ``benchmarks/planner_check.py`` on some sizes and checked on others
  (within 25% of the measured increase of the resident size), under glibc's default
  allocator, whose heap keeps freed activations of 128 KiB-32 MiB: large backbones at
  mid region batches (Swin-T at 16) then peak 25-40% above the estimate. Under
  `xtimage.allocator.lean_host_memory` the resident peak follows the live bytes, and
  ``LEAN_FACTOR`` replaces ``FACTOR``.
- CUDA: *unfitted estimates* (no GPU has been lent to fit them yet). The budget is
  what torch's caching allocator reserves on the device at the peak
  (``torch.cuda.max_memory_reserved``, which is what runs out first), not the CUDA
  context (0.3-1 GiB outside torch: give a budget of the card's memory less about
  1 GiB). ``CUDA_OVERHEAD`` stands for cuBLAS/cuBLASLt/cuDNN workspaces, which torch
  allocates through its allocator (tens of MiB a handle on recent GPUs, cuDNN's up to
  hundreds for large convolutions: 256 MiB is a round guess on the safe side); ``CUDA_FACTOR``
  for the allocator's rounding and fragmentation (block sizes rounded up, 2 MiB and
  20 MiB segments, freed blocks that do not fit the next request). Read-ahead is host
  memory on CUDA, so it is not counted. To fit both: run ``benchmarks/gpu_suite.py`` on
  a GPU; its xT rows hold the live bytes the dry run traced (``planned_live_mb``), the
  gradients and optimizer states (``planned_states_mb``) and the measured reserved peak
  of the same run, and a least-squares line through (reserved - idle - states) =
  overhead + factor * live gives the two constants.

The estimate is float32 (the dry run does not autocast): under bf16/fp16 autocast the
activations are about half as large, so the plan is on the safe side by up to that.

Over 500 lines because the dry run (the meta twin, the byte-counting dispatch mode, the
replayed encoder) and the estimate built on it are one mechanism, read together.
"""

from __future__ import annotations

import copy
import math
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from xtimage.allocator import host_memory_is_lean
from xtimage.engine.runner import Engine
from xtimage.engine.source import RegionSource
from xtimage.errors import ConfigError
from xtimage.limits import format_bytes as _format_bytes
from xtimage.limits import parse_bytes as parse_size
from xtimage.model import XT
from xtimage.tiling import RegionPlan

# Fitted on CPU (see the module docstring and benchmarks/planner_check.py).
OVERHEAD = 52 * 2**20  # bytes: oneDNN scratch, thread arenas, interpreter objects
FACTOR = 1.11  # resident bytes per live tensor byte at the peak (allocator slack)
# CUDA: unfitted estimates until benchmarks/gpu_suite.py has run on a GPU (module docstring).
CUDA_OVERHEAD = 256 * 2**20  # bytes: cuBLAS/cuBLASLt/cuDNN workspaces through the allocator
CUDA_FACTOR = 1.25  # reserved bytes per live tensor byte at the peak (rounding, fragments)
# CPU under xtimage.allocator's lean mode: freed tensors leave the process at once, so the
# resident peak follows the live bytes (fitted on the paper configuration's lean runs).
LEAN_FACTOR = 1.02
CONSTANTS = {  # allocator -> (overhead bytes, factor)
    "glibc default": (OVERHEAD, FACTOR),
    "lean": (OVERHEAD, LEAN_FACTOR),
    "cuda caching": (CUDA_OVERHEAD, CUDA_FACTOR),
}


def allocator_for(device: str | torch.device) -> str:
    """The allocator a run on ``device`` gets in this process (a key of ``CONSTANTS``)."""
    if torch.device(device).type == "cuda":
        return "cuda caching"
    return "lean" if host_memory_is_lean() else "glibc default"


def overhead_constants(device: str | torch.device) -> tuple[int, float]:
    """(overhead bytes, factor) of the estimate on ``device``'s type (module docstring),
    on CPU for this process's allocator (`xtimage.allocator.host_memory_is_lean`)."""
    return CONSTANTS[allocator_for(device)]

MODES = ("inference", "exact", "streaming")

@dataclass(frozen=True)
class MemoryPlan:
    """A run's memory plan.

    Attributes:
        mode: "inference", "exact" or "streaming" (training modes of `Engine`).
        region_batch: regions encoded at once.
        estimate_bytes: the process at its peak: idle + the estimated increase.
        breakdown: bytes by part: idle (imports, weights), activations, read_ahead,
            gradients, optimizer, overhead (runtime working memory and allocator slack).
        budget_bytes: the budget planned for, or None.
        device: the device type planned for ("cpu" or "cuda").
        checkpoint: the context encoder's blocks are recomputed in the backward
            (activation checkpointing, for encoders that are ``recomputable``).
        allocator: the allocator the overhead was chosen for: "glibc default", "lean"
            (`xtimage.allocator`) or "cuda caching".
    """

    mode: str
    region_batch: int
    estimate_bytes: int
    breakdown: dict[str, int] = field(default_factory=dict)
    budget_bytes: int | None = None
    device: str = "cpu"
    checkpoint: bool = False
    allocator: str = "glibc default"

    @property
    def increase_bytes(self) -> int:
        """The estimated peak above the idle process."""
        return self.estimate_bytes - self.breakdown.get("idle", 0)

    @property
    def fits(self) -> bool:
        return self.budget_bytes is None or self.estimate_bytes <= self.budget_bytes

    def describe(self) -> dict:
        """The plan as plain numbers (for `xt info --json`)."""
        return {
            "mode": self.mode,
            "device": self.device,
            "region_batch": self.region_batch,
            "checkpoint": self.checkpoint,
            "allocator": self.allocator,
            "estimate_bytes": self.estimate_bytes,
            "increase_bytes": self.increase_bytes,
            "budget_bytes": self.budget_bytes,
            "fits": self.fits,
            "breakdown": dict(self.breakdown),
        }

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {_format_bytes(v)}" for k, v in self.breakdown.items() if v)
        budget = "" if self.budget_bytes is None else f" of {_format_bytes(self.budget_bytes)}"
        verdict = "" if self.budget_bytes is None else (" (fits)" if self.fits else " (too big)")
        regions = "region" if self.region_batch == 1 else "regions"
        recomputed = ", context recomputed in the backward" if self.checkpoint else ""
        return (
            f"{self.mode} on {self.device}, {self.region_batch} {regions} at once"
            f"{recomputed}: peak {_format_bytes(self.estimate_bytes)}{budget}{verdict} = {parts}"
        )


# ---------------------------------------------------------------------------- tracing


class _LiveBytes(TorchDispatchMode):
    """Adds up the bytes of tensor storages created under it while they live; keeps the peak.

    A storage's Python object lives exactly as long as the storage (PyTorch preserves
    it), so a weak reference's callback says when the bytes are freed. Outputs that alias
    an input (views, in-place ops) allocate nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, weakref.ref] = {}

    def bump(self, extra: int) -> None:
        """Record a transient of ``extra`` bytes on top of what lives now."""
        self.peak = max(self.peak, self.current + extra)

    def _free(self, key: int, nbytes: int) -> None:
        self._live.pop(key, None)
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].is_meta:
            return True if args[0].dtype == torch.bool else 0
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if _dense(t)}
        for t in tree_leaves(out):
            if not _dense(t):
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in inputs or key in self._live:
                continue
            nbytes = storage.nbytes()
            self._live[key] = weakref.ref(storage, lambda _, k=key, n=nbytes: self._free(k, n))
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        return out


def _dense(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.layout == torch.strided


def _meta_twin(model: XT) -> XT:
    """A copy of ``model`` whose parameters and buffers are empty meta tensors."""
    memo: dict[int, torch.Tensor] = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(
            torch.empty_like(p, device="meta"), requires_grad=p.requires_grad
        )
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


@dataclass(frozen=True)
class _EncodeCost:
    """Traced cost of `XT.encode` on k regions, bytes: forward peak, activations held for
    the backward, backward peak above what lives when it starts. Linear in k."""

    forward: Callable[[int], int]
    held: Callable[[int], int]
    backward: Callable[[int], int]


def _trace_encode(twin: XT, channels: int, grad: bool) -> _EncodeCost:
    """Trace the real `XT.encode` on 1 and 2 regions; extrapolate linearly."""
    r = twin.region

    def one(k: int) -> tuple[int, int, int]:
        x = torch.empty(k, channels, r, r, device="meta")
        with torch.set_grad_enabled(grad), _MetaAttention(), _LiveBytes() as trace:
            maps, tokens = XT.encode(twin, x)
            outputs = sum(m.untyped_storage().nbytes() for m in maps)
            outputs += tokens.untyped_storage().nbytes()
            forward = trace.peak
            if not grad or not tokens.requires_grad:
                return forward, 0, 0
            upstream = torch.empty_like(tokens)  # the engine passes a slice of saved ones
            after = trace.peak = trace.current
            torch.autograd.backward(tokens, upstream)
            return forward, max(after - upstream.nbytes - outputs, 0), trace.peak - after

    (f1, h1, b1), (f2, h2, b2) = one(1), one(2)

    def linear(v1: int, v2: int) -> Callable[[int], int]:
        return lambda k: max(0, v1 + (v2 - v1) * (k - 1))

    return _EncodeCost(linear(f1, f2), linear(h1, h2), linear(b1, b2))


class _Hold(torch.autograd.Function):
    """Outputs that keep ``held`` (the replayed saved activations) until their backward."""

    @staticmethod
    def forward(ctx, anchor, held, shapes, trace, backward_bytes):
        ctx.save_for_backward(held)
        ctx.trace, ctx.backward_bytes = trace, backward_bytes
        return tuple(anchor.new_empty(s) for s in shapes)

    @staticmethod
    def backward(ctx, *grads):
        ctx.trace.bump(ctx.backward_bytes)
        return torch.zeros_like(ctx.saved_tensors[0][:1]), None, None, None, None


class _ReplayEncode:
    """Stands in for `XT.encode` in the dry run: empty outputs, traced costs."""

    def __init__(self, twin: XT, cost: _EncodeCost, trace: _LiveBytes) -> None:
        self.twin, self.cost, self.trace = twin, cost, trace
        self.anchor = torch.empty(1, device="meta", requires_grad=True)
        enc = twin.region_encoder
        self.map_shapes = [(f.channels, twin.region // f.stride) for f in enc.feature_info]

    def __call__(self, regions: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        k = regions.shape[0]
        layout = self.twin.layout(self.twin.region, self.twin.region)
        shapes = [(k, c, s, s) for c, s in self.map_shapes]
        shapes.append((k, layout.tokens_per_region, self.twin.dim))
        self.trace.bump(self.cost.forward(k))
        if torch.is_grad_enabled() and self.cost.held(k) + self.cost.backward(k) > 0:
            held = torch.empty(max(self.cost.held(k) // 4, 1), device="meta")
            outs = _Hold.apply(self.anchor, held, shapes, self.trace, self.cost.backward(k))
        else:
            outs = tuple(torch.empty(s, device="meta") for s in shapes)
        return list(outs[:-1]), outs[-1]


class _MetaSource(RegionSource):
    """An image of the given geometry whose chunks are empty meta tensors."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        self.channels, self.height, self.width = channels, height, width
        self.image, self.transform, self.dtype = None, None, torch.float32

    def regions(self, plan: RegionPlan, indices) -> torch.Tensor:
        """Like `RegionSource.regions`: the regions one by one, then stacked."""
        shape = (len(indices), self.channels, plan.region, plan.region)
        one_by_one = torch.empty(shape, device="meta")
        stacked = torch.empty(shape, device="meta")
        del one_by_one
        return stacked


def _fused(q, k, v, attn_mask, dropout_p, is_causal) -> bool:
    """Whether CPU attention would take the fused (flash) kernel for these inputs."""
    lead = (1,) * (q.dim() - 2)  # the kernels check the number of dimensions
    probe = [torch.zeros(*lead, 2, t.shape[-1], dtype=t.dtype).requires_grad_(t.requires_grad)
             for t in (q, k, v)]  # fmt: skip
    mask = None
    if attn_mask is not None:
        mask = torch.zeros(*lead, 2, 2, dtype=attn_mask.dtype)
        mask.requires_grad_(attn_mask.requires_grad)
    return torch._fused_sdp_choice(*probe, mask, dropout_p, is_causal) == 1  # 1: flash


class _MetaAttention(TorchFunctionMode):
    """Attention on meta tensors takes the fused kernel where CPU would (O(N) memory), not
    the math path meta falls back to (O(N^2)). A function mode, so it changes only the
    calls this thread makes inside it; everything else runs unchanged."""

    NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            call = {**dict(zip(self.NAMES, args, strict=False)), **kwargs}
            q, k, v = call["query"], call["key"], call["value"]
            mask, p = call.get("attn_mask"), call.get("dropout_p", 0.0)
            causal = call.get("is_causal", False)
            if q.is_meta and not call.get("enable_gqa") and _fused(q, k, v, mask, p, causal):
                flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
                return flash(q, k, v, p, causal, attn_mask=mask, scale=call.get("scale"))[0]
        return func(*args, **kwargs)


def _streams(model: XT, mode: str) -> bool:
    """Whether the run keeps nothing that grows with the image."""
    return mode == "streaming" or mode == "inference" and model.context.streamable


def _proxy_size(model: XT, height: int, width: int, region_batch: int) -> tuple[int, int]:
    """A crop of the image with a few chunks, enough for a streamed run to reach its
    steady state (the context's first whole segment, then two more chunks)."""
    plan = model.plan(height, width)
    tokens = region_batch * model.layout(model.region, model.region).tokens_per_region
    multiple = model.context.chunk_multiple
    n = region_batch * (3 + math.ceil(multiple / tokens)) + 1
    cols = min(plan.cols, n)
    rows = min(plan.rows, math.ceil(n / cols))
    return min(height, rows * plan.core), min(width, cols * plan.core)


def _dry_run(twin: XT, costs: dict, height: int, width: int, channels: int,
             region_batch: int, mode: str) -> int:  # fmt: skip
    """Peak live tensor bytes of one run of the engine on the meta twin."""
    if _streams(twin, mode):
        height, width = _proxy_size(twin, height, width, region_batch)
    grad = mode != "inference"
    if grad not in costs:
        costs[grad] = _trace_encode(twin, channels, grad)
    source = _MetaSource(channels, height, width)
    engine = Engine(twin, region_batch=region_batch, device="meta", read_ahead=False)
    with _MetaAttention(), _LiveBytes() as trace:
        twin.encode = _ReplayEncode(twin, costs[grad], trace)
        try:
            if mode == "inference":
                engine.classify([source])
            else:
                labels = torch.zeros(1, dtype=torch.long)
                step = engine.exact_step if mode == "exact" else engine.streaming_step
                step([source], labels)
        finally:
            del twin.encode
    return trace.peak


# ---------------------------------------------------------------------------- planning


def _resident_bytes() -> int:
    """This process's resident memory now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _idle_bytes(model: XT, device: torch.device, here: torch.device) -> int:
    """The idle process's memory on ``device``: this process's resident size on CPU;
    torch's allocations on the GPU the model is on; planning for a GPU from elsewhere,
    the bytes of the weights and buffers that would be loaded onto it."""
    if device.type != "cuda":
        return _resident_bytes()
    if here.type == "cuda":
        return torch.cuda.memory_allocated(here)
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _check(model: XT, mode: str, region_batch: int | None = None) -> None:
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "streaming" and not model.context.streamable:
        raise ConfigError(
            f"streaming training needs a streamable context encoder; "
            f"{type(model.context).__name__} is global: use exact mode"
        )
    if getattr(model.head, "dense", False):
        raise ConfigError(
            "the memory planner covers classification heads; for a dense head, measure a "
            "run in a fresh process (benchmarks/common.py) and set region_batch yourself"
        )
    if region_batch is not None and region_batch <= 0:
        raise ConfigError(f"region_batch must be positive, got {region_batch}")


class _Estimator:
    """Estimates of one model and image size for several region batches and modes."""

    def __init__(self, model: XT, height: int, width: int, channels: int | None,
                 read_ahead: bool, idle_bytes: int | None,
                 device: str | torch.device | None = None) -> None:  # fmt: skip
        self.model, self.height, self.width = model, height, width
        self.channels = channels or model.region_encoder.in_chans
        self.read_ahead = read_ahead
        here = next(model.parameters()).device
        self.device = torch.device(device) if device is not None else here
        if idle_bytes is None:
            idle_bytes = _idle_bytes(model, self.device, here)
        self.idle = idle_bytes
        self.twin = _meta_twin(model)
        self.costs: dict = {}
        trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        self.trainable = trainable
        if trainable:  # gradients exist after the first step; counted apart, not traced
            for p in self.twin.parameters():
                if p.requires_grad:
                    p.grad = torch.empty_like(p)

    def __call__(
        self, region_batch: int, mode: str, budget: int | None, checkpoint: bool | None = None
    ) -> MemoryPlan:
        """The plan of one run; ``checkpoint`` sets the context's recomputation (None: the
        model's own setting)."""
        if checkpoint is not None:
            self.twin.context.checkpoint = checkpoint
        self.twin.train(mode != "inference")
        live = _dry_run(self.twin, self.costs, self.height, self.width,
                        self.channels, region_batch, mode)  # fmt: skip
        regions = self.model.plan(self.height, self.width).num_regions
        pixels = min(region_batch, regions) * self.channels * self.model.region**2 * 4
        # the next chunk, read and stacked on a thread; none with a single chunk, and host
        # memory, not the device's, on CUDA
        ahead = self.read_ahead and regions > region_batch and self.device.type != "cuda"
        read_ahead = 2 * pixels if ahead else 0
        training = mode != "inference"
        parts = {
            "idle": self.idle,
            "activations": live,
            "read_ahead": read_ahead,
            "gradients": self.trainable if training else 0,
            "optimizer": 2 * self.trainable if training else 0,
        }
        allocator = allocator_for(self.device)
        overhead, factor = CONSTANTS[allocator]
        parts["overhead"] = int(overhead + (factor - 1) * (live + read_ahead))
        checkpointed = training and self.twin.context.checkpoint
        return MemoryPlan(mode, region_batch, sum(parts.values()), parts, budget,
                          self.device.type, checkpointed, allocator)  # fmt: skip


def estimate_memory(
    model: XT,
    height: int,
    width: int,
    *,
    region_batch: int,
    mode: str = "inference",
    channels: int | None = None,
    read_ahead: bool = True,
    idle_bytes: int | None = None,
    device: str | torch.device | None = None,
) -> MemoryPlan:
    """The memory plan of one run with a given region batch (see the module docstring).

    Args:
        model: the model.
        height: image height in pixels.
        width: image width in pixels.
        region_batch: regions encoded at once.
        mode: "inference" (`Engine.classify`), "exact" or "streaming" (one training step
            with AdamW, a batch of one image). Classification heads only.
        channels: image channels (default: the region encoder's).
        read_ahead: the engine reads the next chunk on a thread.
        idle_bytes: memory of the idle process (default: this process's resident size
            now on CPU; on CUDA torch's allocations, or the model's weights when the
            model is not on the GPU planned for).
        device: the device the run is planned for (default: the model's); decides the
            overhead constants and whether read-ahead counts (host memory on CUDA).
    """
    _check(model, mode, region_batch)
    RegionPlan(height, width, model.region, model.margin)  # validates the size
    estimator = _Estimator(model, height, width, channels, read_ahead, idle_bytes, device)
    return estimator(region_batch, mode, None)


def _candidates(model: XT, mode: str, max_region_batch: int) -> list[int]:
    """Powers of two up to ``max_region_batch``; streaming training needs whole segments."""
    sizes = [2**i for i in range(int(math.log2(max(max_region_batch, 1))) + 1)]
    if mode == "streaming":
        layout = model.layout(model.region, model.region)
        multiple = model.context.chunk_multiple
        sizes = [k for k in sizes if k * layout.tokens_per_region % multiple == 0]
    return sizes


def _largest_fitting(estimate: Callable[[int], MemoryPlan], sizes: list[int]) -> MemoryPlan:
    """Binary search over increasing sizes (the estimate grows with the region batch);
    the smallest size's plan when none fits."""
    lo, hi, best = 0, len(sizes) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        plan = estimate(sizes[mid])
        if plan.fits:
            best, lo = plan, mid + 1
        else:
            hi = mid - 1
    return best if best is not None else estimate(sizes[0])


def plan_memory(
    model: XT,
    height: int,
    width: int,
    budget: str | int,
    *,
    training: bool = False,
    mode: str | None = None,
    channels: int | None = None,
    read_ahead: bool = True,
    max_region_batch: int = 64,
    idle_bytes: int | None = None,
    device: str | torch.device | None = None,
) -> MemoryPlan:
    """The largest region batch (a power of two) whose run fits ``budget``.

    Training without a ``mode`` plans exact mode; when that does not fit even one region
    at a time, exact mode with the context's blocks recomputed in the backward (for a
    ``recomputable`` context encoder), then streaming mode (for a streamable one). When
    nothing fits, the plan with the smallest region batch is returned (``plan.fits`` is
    False).

    Args:
        model: the model.
        height: image height in pixels.
        width: image width in pixels.
        budget: the whole process's memory, e.g. "4GB" (see `parse_size`).
        training: plan a training step instead of inference.
        mode: "exact" or "streaming" to fix the training mode.
        channels: image channels (default: the region encoder's).
        read_ahead: the engine reads the next chunk on a thread.
        max_region_batch: the largest region batch considered (speed saturates early).
        idle_bytes: memory of the idle process (see `estimate_memory`).
        device: the device planned for (see `estimate_memory`).
    """
    budget_bytes = parse_size(budget)
    modes = [mode] if mode else ["exact", "streaming"] if training else ["inference"]
    if not training and mode not in (None, "inference"):
        raise ConfigError(f"mode {mode!r} is a training mode; pass training=True")
    if model.context.streamable is False and modes == ["exact", "streaming"]:
        modes = ["exact"]
    for m in modes:
        _check(model, m)
    RegionPlan(height, width, model.region, model.margin)
    estimator = _Estimator(model, height, width, channels, read_ahead, idle_bytes, device)
    tries = []  # (mode, context checkpointing: None leaves the model's setting)
    for m in modes:
        recompute = m == "exact" and model.context.recomputable
        tries += [(m, False), (m, True)] if recompute else [(m, None)]
    plan = None
    for m, checkpoint in tries:
        sizes = _candidates(model, m, max_region_batch)
        if not sizes:
            continue
        plan = _largest_fitting(
            lambda k, m=m, c=checkpoint: estimator(k, m, budget_bytes, c), sizes
        )
        if plan.fits:
            return plan
    if plan is None:
        raise ConfigError(
            f"no region batch up to {max_region_batch} feeds whole context segments of "
            f"{model.context.chunk_multiple} tokens; raise max_region_batch"
        )
    return plan


def engine_for_budget(
    model: XT,
    height: int,
    width: int,
    budget: str | int,
    *,
    training: bool = False,
    mode: str | None = None,
    idle_bytes: int | None = None,
    **engine_kwargs,
) -> tuple[Engine, MemoryPlan]:
    """An `Engine` with the planned region batch, and the plan; a `ConfigError` when even
    the smallest plan exceeds the budget. The context's recomputation is set as planned
    for exact-mode training. ``engine_kwargs`` go to `Engine`."""
    plan = plan_memory(model, height, width, budget, training=training, mode=mode,
                       read_ahead=engine_kwargs.get("read_ahead", True),
                       idle_bytes=idle_bytes, device=engine_kwargs.get("device"))  # fmt: skip
    if not plan.fits:
        raise ConfigError(
            f"a {height} x {width} image does not fit {budget}: the smallest plan needs "
            f"{plan}; raise the budget, pool tokens (pool=1), use a streamable context "
            f"encoder or streaming training"
        )
    if model.context.recomputable and plan.mode == "exact":
        model.context.checkpoint = plan.checkpoint
    return Engine(model, region_batch=plan.region_batch, **engine_kwargs), plan
