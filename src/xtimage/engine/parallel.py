"""Context parallelism: one image's regions spread over the processes of a group.

An image too large for one device in time or memory is cut, as always, into regions in
raster order; process r of P takes one contiguous range of the kept regions (balanced,
or the sizes given) and encodes only those, ``region_batch`` at a time, with the
`Engine` it is handed. Then:

=====================  ============================================================
context encoder        what each process runs
=====================  ============================================================
sharded (Hyper, exact  its own slice of the context: norms, projections and MLP on
attention, two-way)    its tokens, attention of its queries against every
                       process's keys and values, all-gathered per block
relayed (streamable:   inference: waits for the state after the processes before it,
XL, forward Mamba...)  runs its tokens, sends the state on (shares end on segment
                       boundaries); training: gathered, as below
any other              every process's tokens all-gathered (N x D), the whole
                       context run on every process, its own slice kept
=====================  ============================================================

The head works on each process's slice: classification pools it (`partial`), the pools
are all-gathered and merged in rank order (the log-sum-exp merge of attention pooling
is exact), so every process holds the image's logits; dense heads all-gather the
contextualised tokens (N x D; a region's margin reads its neighbours') and each process
decodes and writes the cores of its own regions.

Training is the engine's exact mode spread out: pass 1 encodes without autograd; the
context and head run with autograd on this process's token leaf; every all-gather is
differentiable (its backward sums each slice's gradient over the processes,
one all-reduce), so each process ends with the exact gradient of the image's loss at its
own tokens; pass 2 re-encodes its chunks with autograd and back-propagates them; finally
the parameter gradients are summed over the processes (`sum_gradients`). The loss is
split so that the sum is the one-process loss: dense losses are each process's cores
over the image's valid pixels; the classification loss, which every process computes
whole, counts 1/P on each.

Equal to one process's `Engine` outputs and gradients (tests: 2 and 3 gloo processes,
uneven splits, float64). Dropout draws differ from one process's (each process forks
its own chunk streams), and stochastic depth in a sharded context is drawn per process.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_map

from xtimage.distributed import all_reduce_sum, sum_gradients
from xtimage.encoders.positional import sincos_2d
from xtimage.engine.runner import Engine, Image, ImageTokens
from xtimage.errors import ConfigError
from xtimage.heads.classification import PoolState
from xtimage.io.base import Writer
from xtimage.runtime import autocast
from xtimage.tiling import TokenLayout


def split_regions(
    regions: Sequence[int], parts: int, sizes: Sequence[int] | None = None, unit: int = 1
) -> list[list[int]]:
    """Cut ``regions`` (raster order) into ``parts`` contiguous ranges, one per process.

    Args:
        regions: the kept regions' indices, sorted.
        parts: number of processes.
        sizes: regions per process (e.g. in proportion to the devices' speeds); None:
            balanced in whole units, the first processes taking one unit more and the
            last the remainder.
        unit: every range but the last holds a multiple of this many regions (a relayed
            context's segment boundaries).

    Raises:
        ConfigError: sizes that do not add up or break the unit, or a process left
            without a region.
    """
    n = len(regions)
    if sizes is None:
        base, extra = divmod(n // unit, parts)
        sizes = [(base + (r < extra)) * unit for r in range(parts)]
        sizes[-1] += n % unit
    if len(sizes) != parts or sum(sizes) != n:
        raise ConfigError(
            f"region split {list(sizes)} must give {parts} processes {n} regions in all"
        )
    if any(size % unit for size in sizes[:-1]):
        raise ConfigError(
            f"region split {list(sizes)}: the context is relayed from process to process "
            f"in whole segments, so every share but the last must be a multiple of {unit} "
            f"regions"
        )
    if min(sizes) < 1:
        raise ConfigError(
            f"{n} kept regions over {parts} processes leave one without a region "
            f"(split {list(sizes)}); use fewer processes or smaller regions"
        )
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    return [list(regions[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class _AllGather(torch.autograd.Function):
    """Every process's tensor stacked, (P, ...); the backward sums the gradient of each
    process's slice over the processes and hands each its own (one all-reduce)."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[dist.get_rank(ctx.group)], None


def _all_gather(tensor: torch.Tensor, group=None) -> list[torch.Tensor]:
    """Every process's ``tensor`` (equal shapes), differentiable for float tensors."""
    if tensor.dtype == torch.bool:  # masks: no gradient, gloo and NCCL take uint8
        return [p.bool() for p in _AllGather.apply(tensor.to(torch.uint8), group)]
    return list(_AllGather.apply(tensor, group).unbind(0))


def _size(group) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


class SequenceGather:
    """``gather(t, dim)``: every process's slice of one sequence, joined along ``dim``.

    Each slice is padded to the longest, all-gathered and trimmed; the lengths come from
    the split, which every process knows, so no sizes are exchanged. Float tensors keep
    their autograd (the backward sums each slice's gradient over the processes).

    Args:
        counts: each process's slice length, in rank order.
        rank: this process's rank in ``group``.
        group: the process group (None: the default one).
    """

    def __init__(self, counts: Sequence[int], rank: int, group=None) -> None:
        self.counts = list(counts)
        self.rank = rank
        self.group = group

    @property
    def offset(self) -> int:
        """Where this process's slice starts in the joined sequence."""
        return sum(self.counts[: self.rank])

    def __call__(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        dim = dim % tensor.dim()
        n, longest = self.counts[self.rank], max(self.counts)
        assert tensor.shape[dim] == n, (tensor.shape, dim, self.counts)
        if len(self.counts) == 1:
            return tensor
        if longest > n:
            shape = list(tensor.shape)
            shape[dim] = longest - n
            tensor = torch.cat([tensor, tensor.new_zeros(shape)], dim)
        parts = _all_gather(tensor, self.group)
        pieces = [p.narrow(dim, 0, c) for p, c in zip(parts, self.counts, strict=True)]
        return torch.cat(pieces, dim)


class _Share:
    """One image as this process sees it: the split, its own tokens, the gather."""

    def __init__(self, layout: TokenLayout, kept: list[int], parts: list[list[int]], rank: int):
        self.layout = layout
        self.kept = kept  # every process's regions, raster order
        self.mine = parts[rank]
        t = layout.tokens_per_region
        self.counts = [len(p) * t for p in parts]
        self.keep = [False] * layout.plan.num_regions
        for region in self.mine:
            self.keep[region] = True


class ContextParallel:
    """Runs one image's regions over the processes of a group (see the module docstring).

    Every process builds the same model (same weights) and calls the same method with
    the same image (a reader is opened by each; only its own regions are read).

    Args:
        engine: runs this process's regions (model, ``region_batch``, device, autocast).
        sizes: kept regions per process, contiguous in raster order; None: balanced.
        group: the process group; None: the default group, or one process when no group
            is initialised.
    """

    def __init__(self, engine: Engine, sizes: Sequence[int] | None = None, group=None) -> None:
        self.engine = engine
        self.model = engine.model
        self.sizes = sizes
        self.group = group
        initialised = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank(group) if initialised else 0
        self.size = dist.get_world_size(group) if initialised else 1

    # ------------------------------------------------------------------ pieces

    def share(self, image: Image, keep: Sequence[bool] | None = None, relay: bool = False) -> tuple:
        """(source, `_Share`) of an image: which regions this process owns (for a relayed
        context, shares end on the context's segment boundaries)."""
        source = self.engine.source(image)
        layout = self.model.layout(source.height, source.width)
        kept = self.engine._kept(layout, keep)
        unit = 1
        if relay:
            multiple, t = getattr(self.model.context, "chunk_multiple", 1), layout.tokens_per_region
            unit = multiple // math.gcd(multiple, t)
        parts = split_regions(kept, self.size, self.sizes, unit)
        return source, _Share(layout, kept, parts, self.rank)

    def sharded(self, num_tokens: int) -> bool:
        """Whether the context encoder runs sliced."""
        context = self.model.context
        return hasattr(context, "forward_sharded") and context.shardable(num_tokens)

    @property
    def relays(self) -> bool:
        """Whether inference passes a streamable context's state from process to process
        (rather than gathering the tokens)."""
        return self.size > 1 and self.model.context.streamable

    def _encode(self, source, share: _Share, seed: int | None) -> ImageTokens:
        return self.engine.encode(source, share.keep, seed)

    def _contextualise(
        self, share: _Share, item: ImageTokens, tokens: torch.Tensor, relay: bool = False
    ):
        """This process's slice of the contextualised tokens, (1, n, D), with autograd on
        ``tokens`` (n, D); and the gather of the image's token sequence."""
        gather = SequenceGather(share.counts, self.rank, self.group)
        engine = self.engine
        pos, valid = item.positions[None], item.valid[None]  # (1, n, 2), (1, n)
        with autocast(engine.device, engine.autocast):
            if self.sharded(sum(share.counts)):
                x = tokens[None] + sincos_2d(pos, self.model.dim).to(tokens.dtype)
                ctx = self.model.context.forward_sharded(x, pos, valid, gather)
            elif relay:  # inference: the state of the processes before, then on
                state = self._receive() if self.rank > 0 else None
                ctx, state = self.model.contextualise(tokens[None], pos, valid, state)
                if self.rank < self.size - 1:
                    self._send(state)
            else:
                layout, kept = share.layout, share.kept
                everything = gather(tokens, 0)[None]  # (1, N, D)
                pos = layout.positions(kept)[None].to(engine.device)
                valid = layout.valid(kept)[None].to(engine.device)
                ctx, _ = self.model.contextualise(everything, pos, valid)
                ctx = ctx[:, gather.offset : gather.offset + tokens.shape[0]]
        return ctx.to(engine.dtype), gather

    def _global(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def _send(self, state) -> None:
        """The context state after this process's tokens, to the next process (pickled,
        its tensors through the CPU so that they land on the receiver's device)."""
        state = tree_map(lambda t: t.cpu() if isinstance(t, torch.Tensor) else t, state)
        dist.send_object_list([state], dst=self._global(self.rank + 1), group=self.group)

    def _receive(self):
        """The context state after every earlier process's tokens."""
        box = [None]
        src = self._global(self.rank - 1)
        dist.recv_object_list(box, src=src, group=self.group, device=self.engine.device)
        device = self.engine.device
        return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, box[0])

    def _logits(self, ctx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The image's logits from this process's slice: pools gathered and merged."""
        head = self.model.head
        pool = head.partial(ctx, valid[None])
        fields = [pool.total, pool.weight[:, None], pool.peak[:, None]]  # (B, D + 2)
        parts = _gather_equal(torch.cat(fields, 1), self.size, self.group)
        merged = None
        for part in parts:
            d = part.shape[1] - 2
            merged = head.merge(merged, PoolState(part[:, :d], part[:, d], part[:, d + 1]))
        return head.logits(merged)

    @contextlib.contextmanager
    def _seeded(self, seed: int | None):
        """Fork the RNG for the context pass: the same stream on every process."""
        with self.engine._chunk_rng(seed, -1):
            yield

    def _seed(self) -> tuple[int, int]:
        """A step's seed (the same on every process seeded alike) and this process's
        chunk seed (its own dropout streams)."""
        seed = int(torch.randint(0, 2**62, (1,)).item())
        return seed, seed + 7919 * (self.rank + 1)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def classify(self, image: Image, keep: Sequence[bool] | None = None) -> torch.Tensor:
        """The image's class logits (1, K), on every process."""
        source, share = self.share(image, keep, self.relays)
        item = self._encode(source, share, None)
        ctx, _ = self._contextualise(share, item, item.tokens, self.relays)
        return self._logits(ctx, item.valid)

    @torch.no_grad()
    def segment(
        self, image: Image, keep: Sequence[bool] | None = None, writer: Writer | None = None
    ) -> torch.Tensor | None:
        """Dense outputs: each process decodes its own regions.

        Args:
            image: the image.
            keep: regions to process; skipped regions' outputs stay zero.
            writer: receives this process's core windows (C, h, w) as float32 numpy;
                None: the whole (C, H, W) output is summed over the processes and
                returned on each (images that fit in memory).
        """
        source, share = self.share(image, keep, self.relays)
        item = self._encode(source, share, None)
        ctx, gather = self._contextualise(share, item, item.tokens, self.relays)
        everything = gather(ctx[0], 0)  # (N, D): margins read neighbours' tokens
        plan = share.layout.plan
        out = None if writer is not None else self.engine._dense_output(plan)
        for _, pred, chunk in self._decode(source, share, everything, None):
            Engine._put_cores(plan, chunk, pred, out, writer)
        return None if out is None else all_reduce_sum(out)

    def _decode(self, source, share: _Share, everything: torch.Tensor, seed: int | None):
        """(chunk number, dense outputs (k, K, R, R), regions) of this process's chunks."""
        engine = self.engine
        for i, chunk, pixels in engine._chunks(source, share.layout, share.mine):
            with engine._chunk_rng(seed, i), autocast(engine.device, engine.autocast):
                maps, _ = self.model.encode(pixels)
                windows = self.model.token_windows(everything, share.layout, share.kept, chunk)
                yield i, self.model.decode(maps, windows).to(engine.dtype), chunk

    # ------------------------------------------------------------------ training

    def exact_step(
        self,
        image: Image,
        target: torch.Tensor | dict[str, torch.Tensor],
        keep: Sequence[bool] | None = None,
    ) -> float:
        """Accumulate the one-process exact gradient of one image, spread over the group.

        Args:
            image: the image (the same on every process).
            target: classification: the label, a scalar or (1,) int64; dense: the full
                image's targets as in `Engine.exact_step`.
            keep: regions to use (default all).

        Returns:
            The image's loss; the summed parameter gradients are in ``.grad`` on every
            process (added to what was there, which should be the same everywhere).
        """
        seed, mine = self._seed()
        source, share = self.share(image, keep)
        item = self._encode(source, share, mine)
        leaf = item.tokens.detach().requires_grad_()  # (n, D)
        with self._seeded(seed):
            ctx, gather = self._contextualise(share, item, leaf)
        head = self.model.head
        if head.dense:
            loss = self._dense_step(source, share, item, ctx, gather, target, mine)
        else:
            with self._seeded(seed), autocast(self.engine.device, self.engine.autocast):
                logits = self._logits(ctx, item.valid)
                labels = torch.as_tensor(target).reshape(1).to(self.engine.device)
                full = head.loss(logits.to(self.engine.dtype), labels)
            # every process computes the whole loss; scaled like the engine's (fp16)
            self.engine._backward(full / self.size)
            loss = full.item()
        self.engine._backward_tokens(source, item, leaf.grad, mine)
        sum_gradients([p for p in self.model.parameters() if p.requires_grad])
        return loss

    def _dense_step(self, source, share, item, ctx, gather, target, seed) -> float:
        """Decode this process's chunks with autograd, loss over its cores; backward to
        its slice of the context (the gather sums the other processes' share)."""
        engine = self.engine
        engine._check_decomposable()
        everything = gather(ctx[0], 0)  # (N, D), every process's slice
        leaf = everything.detach().requires_grad_()
        normaliser = engine._valid_pixels(ImageTokens(share.layout, share.kept, *[None] * 3))
        total = 0.0
        for _, pred, chunk in self._decode(source, share, leaf, seed):
            loss = engine._chunk_loss(item, chunk, pred, target) / normaliser
            engine._backward(loss)
            total += loss.item()
        everything.backward(leaf.grad)
        return float(all_reduce_sum(torch.tensor([total], dtype=torch.float64)).item())


def _gather_equal(tensor: torch.Tensor, size: int, group) -> list[torch.Tensor]:
    """Every process's ``tensor`` (equal shapes), differentiable; alone: itself."""
    return [tensor] if size == 1 else _all_gather(tensor, group)
