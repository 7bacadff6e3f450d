"""Streamed inference and training of an `XT` model with a bounded number of regions.

Passes (each "encode" runs the region encoder over every kept region, ``region_batch``
regions at a time; only tokens, N x D, are kept between passes):

=====================  =========================================================  ======
what                   passes                                                     encodes
=====================  =========================================================  ======
classify, streamable   encode -> context segment by segment -> running pool          1
classify, global       encode (no grad) -> context + head on all tokens               1
dense inference        encode -> context; re-encode each chunk for its skip maps,    2
                       decode, write (streamable context: the two passes advance
                       together, only a band of region rows' tokens is kept;
                       `xtimage.engine.dense`)
exact, classification  encode (no grad) -> context + head + loss, backward to the     2
                       tokens; re-encode each chunk with autograd, backward the
                       saved token gradients
exact, dense           encode (no grad) -> context; re-encode each chunk with         3
                       autograd, decode, loss, backward (skip maps and decoder; the
                       gradient at the contextualised tokens is kept); backward the
                       context; re-encode each chunk, backward the token gradients
exact, the batch's     encode with autograd -> context + head (+ decode) + loss,     1
regions in one chunk   one backward (re-encoding would repeat the same chunk)
streaming              per chunk: encode, context with the carried detached state,   1
                       loss, backward
=====================  =========================================================  ======

Exact mode gives the all-at-once model's gradients (tested): each chunk's dropout is
drawn from an RNG forked and seeded per chunk, so every re-encoding repeats the first
pass bit for bit. ``region_batch`` is a memory knob only; it never changes a result for a
backbone without batch statistics (use GroupNorm/LayerNorm backbones or frozen batch
norm for exactness).

Over 500 lines because the engine's passes (inference, exact, streaming, frozen, dense)
share one chunking, seeding and backward scheme that must read as one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from xtimage.encoders.context.base import detach_state
from xtimage.engine.dense import streamed_windows
from xtimage.engine.source import RegionSource, Transform
from xtimage.errors import ConfigError
from xtimage.io.base import Reader, Writer
from xtimage.limits import check_alloc
from xtimage.model import XT
from xtimage.runtime import autocast
from xtimage.tiling import TokenLayout
from xtimage.window import Window

Image = torch.Tensor | np.ndarray | Reader | RegionSource


@dataclass
class ImageTokens:
    """Pass-1 output for one image: the kept regions' tokens, in region-major order."""

    layout: TokenLayout
    regions: list[int]  # kept region indices, raster order
    tokens: torch.Tensor  # (n, D), n = len(regions) * T
    positions: torch.Tensor  # (n, 2) int64
    valid: torch.Tensor  # (n,) bool


def pad_batch(
    tokens: Sequence[torch.Tensor], positions: Sequence[torch.Tensor], valid: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad per-image sequences into (B, N, D), (B, N, 2), (B, N) with mask False.

    One sequence needs no padding: it is returned as views, not copied (at 262,144 tokens
    of width 768 a copy is 768 MiB).
    """
    if len(tokens) == 1:
        return tokens[0][None], positions[0][None], valid[0][None]
    n = max(t.shape[0] for t in tokens)
    pad = [n - t.shape[0] for t in tokens]
    x = torch.stack([nn.functional.pad(t, (0, 0, 0, p)) for t, p in zip(tokens, pad, strict=True)])
    pos = torch.stack(
        [nn.functional.pad(q, (0, 0, 0, p)) for q, p in zip(positions, pad, strict=True)]
    )
    mask = torch.stack([nn.functional.pad(v, (0, p)) for v, p in zip(valid, pad, strict=True)])
    return x, pos, mask


class Engine:
    """Runs an `XT` model over images of any size, ``region_batch`` regions at a time.

    Args:
        model: the model.
        region_batch: regions encoded at once (memory knob; results do not depend on it).
        device: where the model runs.
        read_ahead: read the next chunk on a thread while the model runs.
        autocast: e.g. ``torch.bfloat16`` for mixed precision (GPU, or CPU when asked);
            None: float32.
        scaler: fp16's gradient scaler: the training steps scale every loss before its
            backward, so the saved token gradients and the re-encodings' backward carry
            the same scale; the caller unscales (``scaler.unscale_``) before clipping and
            steps through the scaler. None: losses are not scaled.
    """

    def __init__(
        self,
        model: XT,
        region_batch: int = 16,
        device: str | torch.device = "cpu",
        read_ahead: bool = True,
        autocast: torch.dtype | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if region_batch <= 0:
            raise ConfigError(f"region_batch must be positive, got {region_batch}")
        self.model = model
        self.region_batch = region_batch
        self.device = torch.device(device)
        self.read_ahead = read_ahead
        self.autocast = autocast
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.dtype = next(model.parameters()).dtype  # outputs and saved tokens

    # ------------------------------------------------------------------ helpers

    def source(self, image: Image, transform: Transform | None = None) -> RegionSource:
        if isinstance(image, RegionSource):
            return image
        return RegionSource(image, transform, dtype=self.dtype)

    @contextlib.contextmanager
    def _chunk_rng(self, seed: int | None, index: int) -> Iterator[None]:
        """Seed dropout for chunk ``index`` so that every re-encoding repeats it."""
        if seed is None:
            yield
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed((seed * 1_000_003 + index) % (2**63))
            yield

    def _chunks(
        self, source: RegionSource, layout: TokenLayout, regions: Sequence[int]
    ) -> Iterator[tuple[int, Sequence[int], torch.Tensor]]:
        """(chunk number, region indices, pixels on device) for each chunk of kept regions."""
        groups = _Groups(regions, self.region_batch)  # lazy: nothing per chunk up front
        for i, (chunk, pixels) in enumerate(source.chunks(layout.plan, groups, self.read_ahead)):
            yield i, chunk, pixels.to(self.device, non_blocking=True)

    def _kept(self, layout: TokenLayout, keep: Sequence[bool] | None) -> Sequence[int]:
        """Indices of the kept regions: a range for all (no list of every region)."""
        n = layout.plan.num_regions
        if keep is None:
            return range(n)
        if len(keep) != n:
            raise ConfigError(f"keep has {len(keep)} entries for {n} regions")
        return np.flatnonzero(np.asarray(keep, dtype=bool)).tolist()

    # ------------------------------------------------------------------ pass 1

    def encode(
        self, image: Image, keep: Sequence[bool] | None = None, seed: int | None = None
    ) -> ImageTokens:
        """Tokens of every kept region, without autograd (pass 1).

        Args:
            image: the image (see `RegionSource`).
            keep: per region, whether to encode it (e.g. from a foreground mask); skipped
                regions' tokens are dropped, the others keep their positions.
            seed: fork and seed the RNG per chunk (training: dropout repeatable).
        """
        source = self.source(image)
        layout = self.model.layout(source.height, source.width)
        regions = self._kept(layout, keep)
        parts = []
        with torch.no_grad(), autocast(self.device, self.autocast):
            for i, _, pixels in self._chunks(source, layout, regions):
                with self._chunk_rng(seed, i):
                    parts.append(self.model.encode_tokens(pixels).flatten(0, 1))  # (k*T, D)
        tokens = torch.cat(parts) if parts else torch.zeros(0, self.model.dim)
        return ImageTokens(
            layout,
            regions,
            tokens.to(self.device, self.dtype),
            layout.positions(regions).to(self.device),
            layout.valid(regions).to(self.device),
        )

    def encode_cells(self, image: Image) -> torch.Tensor:
        """Pooled cells of every region before the token projection, (n * T, C), no grad."""
        source = self.source(image)
        layout = self.model.layout(source.height, source.width)
        parts = []
        with torch.no_grad(), autocast(self.device, self.autocast):
            for _, _, pixels in self._chunks(source, layout, range(layout.plan.num_regions)):
                parts.append(self.model.encode_cells(pixels).flatten(0, 1))  # (k*T, C)
        return torch.cat(parts).to(self.dtype)

    def _contextualise_all(self, items: Sequence[ImageTokens], tokens=None) -> tuple:
        tokens = tokens if tokens is not None else [it.tokens for it in items]
        x, pos, mask = pad_batch(tokens, [it.positions for it in items], [it.valid for it in items])
        with autocast(self.device, self.autocast):
            ctx, _ = self.model.contextualise(x, pos, mask)
        return ctx.to(self.dtype), mask

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def classify(self, images: Sequence[Image], keep=None) -> torch.Tensor:
        """Class logits (B, K); streams segment by segment when the context allows."""
        keep = keep or [None] * len(images)
        if self.model.context.streamable:
            return torch.cat(
                [self._classify_streaming(im, kp) for im, kp in zip(images, keep, strict=True)]
            )
        items = [self.encode(im, kp) for im, kp in zip(images, keep, strict=True)]
        ctx, mask = self._contextualise_all(items)
        return self.model.head(ctx, mask)

    def _classify_streaming(self, image: Image, keep) -> torch.Tensor:
        """Encode, contextualise and pool one chunk at a time: nothing grows with the image."""
        source = self.source(image)
        layout = self.model.layout(source.height, source.width)
        head, state, pool = self.model.head, None, None
        multiple = self.model.context.chunk_multiple
        pending: list[torch.Tensor] = []  # tokens, positions, valid not yet contextualised

        def feed(tokens, pos, valid, final: bool):
            nonlocal state, pool
            n = tokens.shape[1] if final else tokens.shape[1] // multiple * multiple
            if n:
                ctx, state = self.model.contextualise(
                    tokens[:, :n], pos[:, :n], valid[:, :n], state
                )
                pool = head.merge(pool, head.partial(ctx.to(self.dtype), valid[:, :n]))
            return [tokens[:, n:], pos[:, n:], valid[:, n:]]

        with autocast(self.device, self.autocast):
            for _, chunk, pixels in self._chunks(source, layout, self._kept(layout, keep)):
                new = [
                    self.model.encode_tokens(pixels).flatten(0, 1)[None],  # (1, k*T, D)
                    layout.positions(chunk)[None].to(self.device),
                    layout.valid(chunk)[None].to(self.device),
                ]
                merged = (
                    [torch.cat([a, b], 1) for a, b in zip(pending, new, strict=True)]
                    if pending
                    else new
                )
                pending = feed(*merged, final=False)
            if pending and pending[0].shape[1]:
                feed(*pending, final=True)
        return head.logits(pool)

    @torch.no_grad()
    def segment(
        self, image: Image, keep: Sequence[bool] | None = None, writer: Writer | None = None
    ) -> torch.Tensor | None:
        """Dense outputs of one image, two passes (see the module docstring).

        With a streamable context the two passes advance together (`xtimage.engine.dense`):
        only a band of region rows' contextualised tokens is kept, not the image's.

        Args:
            image: the image.
            keep: regions to process; skipped regions' outputs stay zero.
            writer: receives each core window's outputs (C, h, w) as float32 numpy; when
                None the outputs are returned as one (C, H, W) tensor.
        """
        source = self.source(image)
        layout = self.model.layout(source.height, source.width)
        plan = layout.plan
        out = None if writer is not None else self._dense_output(plan)
        if self.model.context.streamable and not self.model.release:  # release: raster order
            steps = streamed_windows(self, source, layout, self._kept(layout, keep))
        else:
            steps = self._windows_all_at_once(source, keep)
        for chunk, pixels, windows in steps:
            with autocast(self.device, self.autocast):
                maps, _ = self.model.encode(pixels)
                pred = self.model.decode(maps, windows).to(self.dtype)
            self._put_cores(plan, chunk, pred, out, writer)
        return out

    def _windows_all_at_once(self, source: RegionSource, keep) -> Iterator[tuple]:
        """Per chunk: (chunk, pixels, token windows), the context run on all tokens at once."""
        items = self.encode(source, keep)
        ctx, _ = self._contextualise_all([items])
        ctx = ctx[0]  # (n, D)
        for _, chunk, pixels in self._chunks(source, items.layout, items.regions):
            yield chunk, pixels, self.model.token_windows(ctx, items.layout, items.regions, chunk)

    def _dense_output(self, plan) -> torch.Tensor:
        """A zero (K, H, W) output of the whole image, within the allocation cap."""
        k, dtype = self.model.head.out_channels, self.dtype
        check_alloc(plan.height * plan.width * k * dtype.itemsize,
                    f"outputs of a {plan.height} x {plan.width} px image in memory (pass a "
                    f"writer)")  # fmt: skip
        return torch.zeros(k, plan.height, plan.width, dtype=dtype)

    @classmethod
    def _put_cores(cls, plan, chunk, pred: torch.Tensor, out, writer: Writer | None) -> None:
        """Each region's core of ``pred`` (k, C, R, R) into ``out`` (C, H, W), or to
        ``writer`` as numpy when there is one."""
        for j, region in enumerate(chunk):
            core, src = cls._core(plan, region)
            values = pred[j][:, src[0], src[1]].cpu()
            if writer is None:
                rr, cc = core.slices()
                out[:, rr, cc] = values
            else:
                writer.write(core, values.numpy())

    @staticmethod
    def _core(plan, region: int) -> tuple[Window, tuple[slice, slice]]:
        """The region's core clipped to the image, and where it lies in the region output."""
        core = plan.core_window(region).intersect(Window(0, 0, plan.height, plan.width))
        window = plan.window(region)
        return core, core.shift(-window.top, -window.left).slices()

    # ------------------------------------------------------------------ training

    def _backward(self, loss: torch.Tensor) -> None:
        """Back-propagate a loss, scaled by the fp16 gradient scaler when there is one.

        Every gradient the steps save and pass on (tokens', contextualised tokens') comes
        from a scaled loss, so the backward calls that take them need no scaling of their own.
        """
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def exact_step(
        self,
        images: Sequence[Image],
        targets: torch.Tensor | Sequence[dict[str, torch.Tensor]],
        keep: Sequence[Sequence[bool] | None] | None = None,
    ) -> float:
        """Accumulate the all-at-once model's gradients with one chunk in memory.

        Args:
            images: B images (sizes may differ).
            targets: classification: labels (B,); dense: per image a dict of full-image
                targets, int64 (H, W) for "ce" outputs, float (C, H, W) otherwise.
            keep: per image, regions to use (default all).

        Returns:
            The loss (mean over the batch), after ``backward`` into ``.grad``; unscaled
            (with an fp16 ``scaler`` the gradients carry its scale).
        """
        keep = keep or [None] * len(images)
        seed = int(torch.randint(0, 2**62, (1,)).item())
        sources = [self.source(im) for im in images]
        kept = [
            self._kept(self.model.layout(s.height, s.width), kp)
            for s, kp in zip(sources, keep, strict=True)
        ]
        if min(map(len, kept)) > 0 and sum(map(len, kept)) <= self.region_batch:
            return self._one_pass_step(sources, kept, targets, seed)
        items = [self.encode(s, kp, seed) for s, kp in zip(sources, keep, strict=True)]
        leaves = [it.tokens.detach().requires_grad_() for it in items]
        loss = self._context_and_head_step(sources, items, leaves, targets, seed)
        for source, item, leaf in zip(sources, items, leaves, strict=True):
            self._backward_tokens(source, item, leaf.grad, seed)
        return loss

    def _one_pass_step(self, sources, kept, targets, seed: int) -> float:
        """`exact_step` when the batch's kept regions fit one chunk together: one encode
        with autograd whose graph lives through context, head and loss, one backward.

        The two-pass scheme would re-encode the same chunk for nothing; memory stays that
        of one chunk's activations (plus the context's), as the planner's dry run sees.
        Each image's chunk is chunk 0 under the same seed, as in the two-pass scheme, so
        dropout draws the same masks and the gradients are the same.
        """
        items, maps = [], []
        for source, regions in zip(sources, kept, strict=True):
            layout = self.model.layout(source.height, source.width)
            ((_, _, pixels),) = self._chunks(source, layout, regions)
            with self._chunk_rng(seed, 0), autocast(self.device, self.autocast):
                image_maps, tokens = self.model.encode(pixels)  # tokens (k, T, D)
            maps.append(image_maps)
            items.append(
                ImageTokens(
                    layout,
                    regions,
                    tokens.flatten(0, 1).to(self.dtype),  # (k*T, D), with autograd
                    layout.positions(regions).to(self.device),
                    layout.valid(regions).to(self.device),
                )
            )
        if not self.model.head.dense:
            tokens = [it.tokens for it in items]
            return self._context_and_head_step(sources, items, tokens, targets, seed)
        self._check_decomposable()
        ctx, _ = self._contextualise_all(items)
        normaliser = sum(self._valid_pixels(it) for it in items)
        loss = 0.0
        for b, (item, image_maps) in enumerate(zip(items, maps, strict=True)):
            n = len(item.regions) * item.layout.tokens_per_region
            with autocast(self.device, self.autocast):
                windows = self.model.token_windows(
                    ctx[b, :n], item.layout, item.regions, item.regions
                )
                pred = self.model.decode(image_maps, windows).to(self.dtype)
            loss = loss + self._chunk_loss(item, item.regions, pred, targets[b]) / normaliser
        self._backward(loss)
        return loss.item()

    def frozen_step(
        self,
        images: Sequence[Image],
        targets: torch.Tensor | Sequence[dict[str, torch.Tensor]],
        image_keys: Sequence[str],
        cache,
    ) -> float:
        """Train the token projection, context encoder and head on cached frozen features.

        Args:
            images: B images (read only when their features are not cached yet, and for
                dense heads' skip maps).
            targets: as in `exact_step`.
            image_keys: one stable key per image for the cache.
            cache: a `TokenCache` built on this model.
        """
        sources = [self.source(im) for im in images]
        items, tokens = [], []
        for source, key in zip(sources, image_keys, strict=True):
            layout = self.model.layout(source.height, source.width)
            cells = cache.cells(self, source, key)  # (n, C)
            regions = range(layout.plan.num_regions)
            tokens.append(self.model.tokenizer.project(cells))  # (n, D), with autograd
            items.append(
                ImageTokens(
                    layout,
                    regions,
                    tokens[-1],
                    layout.positions(regions).to(self.device),
                    layout.valid(regions).to(self.device),
                )
            )
        return self._context_and_head_step(sources, items, tokens, targets, seed=None)

    def _context_and_head_step(self, sources, items, tokens, targets, seed) -> float:
        """Context + head + loss with autograd on ``tokens``; backward to them."""
        ctx, mask = self._contextualise_all(items, tokens)
        if self.model.head.dense:
            loss = self._dense_decoder_pass(sources, items, ctx, targets, seed)
        else:
            with autocast(self.device, self.autocast):
                logits = self.model.head(ctx, mask)
                loss = self.model.head.loss(logits.to(self.dtype), targets.to(self.device))
            del ctx  # autograd keeps what the head needs; the rest (N x D) goes now
            self._backward(loss)
            loss = loss.item()
        return loss

    def _check_decomposable(self) -> None:
        if not self.model.head.decomposable:
            raise ConfigError(
                "a Dice loss (a ratio of whole-batch sums) or a batch-norm decoder (statistics "
                "over the whole batch) cannot be trained chunk by chunk; set the outputs' "
                "dice to 0 and model.decoder_norm=layer, or train all regions at once "
                "(train.mode=direct)"
            )

    def _dense_decoder_pass(self, sources, items, ctx, targets, seed) -> float:
        """Decode chunk by chunk with autograd; leave the context's gradient on ``ctx``."""
        self._check_decomposable()
        ctx_leaf = ctx.detach().requires_grad_()
        normaliser = sum(self._valid_pixels(it) for it in items)
        total = 0.0
        for b, (source, item) in enumerate(zip(sources, items, strict=True)):
            n = len(item.regions) * item.layout.tokens_per_region
            for i, chunk, pixels in self._chunks(source, item.layout, item.regions):
                with self._chunk_rng(seed, i), autocast(self.device, self.autocast):
                    maps, _ = self.model.encode(pixels)
                    windows = self.model.token_windows(
                        ctx_leaf[b, :n], item.layout, item.regions, chunk
                    )
                    pred = self.model.decode(maps, windows).to(self.dtype)
                loss = self._chunk_loss(item, chunk, pred, targets[b]) / normaliser
                self._backward(loss)
                total += loss.item()
        ctx.backward(ctx_leaf.grad)
        return total

    def _backward_tokens(self, source, item: ImageTokens, grad: torch.Tensor, seed: int) -> None:
        """Re-encode each chunk with autograd and back-propagate the saved token gradient."""
        t = item.layout.tokens_per_region
        for i, chunk, pixels in self._chunks(source, item.layout, item.regions):
            start = i * self.region_batch * t
            with self._chunk_rng(seed, i), autocast(self.device, self.autocast):
                tokens = self.model.encode_tokens(pixels).flatten(0, 1).to(self.dtype)  # (k*T, D)
            tokens.backward(grad[start : start + len(chunk) * t])

    def _valid_pixels(self, item: ImageTokens) -> int:
        plan = item.layout.plan
        return sum(self._core(plan, r)[0].area for r in item.regions)

    def _chunk_loss(self, item: ImageTokens, chunk, pred, targets: dict) -> torch.Tensor:
        """Summed loss over the chunk's cores, against full-image targets."""
        plan = item.layout.plan
        preds, tgts = [], {name: [] for name in targets}
        valid = []
        for j, region in enumerate(chunk):
            core, src = self._core(plan, region)
            # crop to the core; pad to the full core size so the chunk stacks
            p = pred.new_zeros(pred.shape[1], plan.core, plan.core)
            v = torch.zeros(plan.core, plan.core, dtype=torch.bool, device=pred.device)
            h, w = core.height, core.width
            p[:, :h, :w] = pred[j][:, src[0], src[1]]
            v[:h, :w] = True
            preds.append(p)
            valid.append(v)
            rr, cc = core.slices()
            for name, target in targets.items():
                full = target[..., rr, cc].to(pred.device)
                padded = full.new_zeros(*full.shape[:-2], plan.core, plan.core)
                padded[..., :h, :w] = full
                tgts[name].append(padded)
        return self.model.head.loss_sum(
            torch.stack(preds), {k: torch.stack(v) for k, v in tgts.items()}, torch.stack(valid)
        )

    def streaming_step(
        self,
        images: Sequence[Image],
        targets: torch.Tensor | Sequence[dict[str, torch.Tensor]],
        keep: Sequence[Sequence[bool] | None] | None = None,
    ) -> float:
        """Transformer-XL-style training: per chunk, forward with the carried detached
        state, loss, backward. Needs a streamable context encoder.

        Classification: each chunk's loss is that of the running pool (earlier chunks'
        pooled tokens detached), divided by the number of chunks. Dense: each chunk's
        summed pixel loss over the batch's valid pixel count.
        """
        if not self.model.context.streamable:
            raise ConfigError(
                f"streaming training needs a streamable context encoder; "
                f"{type(self.model.context).__name__} is global: use exact mode"
            )
        keep = keep or [None] * len(images)
        head = self.model.head
        if head.dense:
            self._check_decomposable()
        sources = [self.source(im) for im in images]
        layouts = [self.model.layout(s.height, s.width) for s in sources]
        kept = [self._kept(lay, kp) for lay, kp in zip(layouts, keep, strict=True)]
        multiple = self.model.context.chunk_multiple
        for layout in layouts:
            if self.region_batch * layout.tokens_per_region % multiple:
                raise ConfigError(
                    f"streaming training feeds the context one chunk of {self.region_batch} "
                    f"regions ({self.region_batch * layout.tokens_per_region} tokens) at a "
                    f"time, which must be a multiple of its segment of {multiple} tokens; "
                    f"choose region_batch accordingly"
                )
        normaliser = 1.0
        if head.dense:
            normaliser = sum(
                self._valid_pixels(ImageTokens(lay, regs, None, None, None))
                for lay, regs in zip(layouts, kept, strict=True)
            )
        total = 0.0
        for b, (source, layout, regions) in enumerate(zip(sources, layouts, kept, strict=True)):
            n_chunks = math.ceil(len(regions) / self.region_batch)
            state, pool = None, None
            item = ImageTokens(layout, regions, None, None, None)
            for _, chunk, pixels in self._chunks(source, layout, regions):
                with autocast(self.device, self.autocast):
                    maps, tokens = self.model.encode(pixels)
                    pos = layout.positions(chunk)[None].to(self.device)
                    valid = layout.valid(chunk)[None].to(self.device)
                    ctx, state = self.model.contextualise(
                        tokens.flatten(0, 1)[None], pos, valid, state
                    )
                    if head.dense:
                        # neighbours outside this chunk are not contextualised yet: their
                        # margin cells are zero (streaming is the approximate mode)
                        windows = self.model.token_windows(ctx[0], layout, chunk, chunk)
                        pred = self.model.decode(maps, windows)
                if head.dense:
                    loss = (
                        self._chunk_loss(item, chunk, pred.to(self.dtype), targets[b]) / normaliser
                    )
                else:
                    part = head.partial(ctx.to(self.dtype), valid)
                    merged = head.merge(_detach_pool(pool), part)
                    loss = head.loss(head.logits(merged), targets[b : b + 1].to(self.device))
                    loss = loss / (n_chunks * len(images))
                    pool = merged
                self._backward(loss)
                total += loss.item()
                state = detach_state(state)
        return total


class _Groups(Sequence):
    """Consecutive groups of ``k`` items of ``items``, made when asked for (a lazy
    ``[items[i : i + k] for i in range(0, len(items), k)]``)."""

    def __init__(self, items: Sequence[int], k: int) -> None:
        self.items, self.k = items, k

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.k)

    def __getitem__(self, i: int) -> Sequence[int]:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.items[i * self.k : (i + 1) * self.k]


def _detach_pool(pool):
    if pool is None:
        return None
    return type(pool)(pool.total.detach(), pool.weight.detach(), pool.peak.detach())
