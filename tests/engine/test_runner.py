"""The engine's central invariants: streamed == all at once, exact gradients, k-invariance."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xtimage.encoders.context.base import ContextEncoder
from xtimage.encoders.context.partners import SymmetricPartners
from xtimage.encoders.region import RegionEncoder
from xtimage.engine import Engine
from xtimage.errors import ConfigError
from xtimage.heads import ClassificationHead, DenseHead, DenseOutput
from xtimage.model import XT


class GlobalAttention(ContextEncoder):
    """One masked softmax-attention layer over the whole sequence (global, not streamable)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, tokens, positions, mask=None, state=None):
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        attn = q @ k.transpose(1, 2) / self.dim**0.5  # (B, N, N)
        if mask is not None:
            attn = attn.masked_fill(~mask[:, None, :], float("-inf"))
        return tokens + attn.softmax(-1) @ v, None


class RunningMean(ContextEncoder):
    """Each token plus the mean of all real tokens so far: causal, streamable, stateful."""

    streamable = True

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens, positions, mask=None, state=None):
        m = torch.ones(tokens.shape[:2], dtype=tokens.dtype) if mask is None else mask.to(tokens)
        total, count = state if state is not None else (0.0, 0.0)
        csum = total + torch.cumsum(tokens * m[..., None], 1)  # (B, N, D)
        ccount = count + torch.cumsum(m, 1)  # (B, N)
        mean = csum / ccount.clamp_min(1)[..., None]
        return tokens + self.proj(mean), (csum[:, -1], ccount[:, -1])


def global_with_partners(dim: int) -> SymmetricPartners:
    """`GlobalAttention` beside the left-right and point mirrors' tokens (projections
    drawn at random: at zero the partner path passes no gradient back to the tokens)."""
    encoder = SymmetricPartners(GlobalAttention(dim), ["hflip", "rot180"])
    for proj in encoder.proj:
        nn.init.normal_(proj.weight, std=dim**-0.5)
        nn.init.normal_(proj.bias)
    return encoder


def tiny_xt(
    context_cls,
    dense: bool,
    margin: int = 0,
    dropout: float = 0.0,
    dtype=torch.float64,
    film: bool = False,
    reduce: str = "mean",
    norm: str = "none",
) -> XT:
    """``film``: the context-conditioned decoder (FiLM in every block, ``norm`` after each
    block) over tokens that read the three deepest maps, reduced by ``reduce``."""
    region = 64 + 2 * margin
    encoder = RegionEncoder(
        "convnext_atto",
        region=region,
        depths=(1, 1, 1, 1),
        dims=(8, 8, 16, 16),
        drop_path_rate=dropout,
    )
    context = context_cls(16)
    if dense:
        options = {"fusion": "film", "norm": norm} if film else {}
        head = DenseHead(
            encoder.feature_info[:-1], 16, [DenseOutput("mask", 3, "ce")], channels=8, **options
        )
    else:
        head = ClassificationHead(16, 5, pool="attention")
    maps = 3 if film else 1
    return XT(encoder, context, head, region=region, margin=margin, token_maps=maps,
              token_reduce=reduce).to(dtype)  # fmt: skip


def images(*sizes):
    return [torch.randn(3, h, w, dtype=torch.float64) for h, w in sizes]


@pytest.mark.parametrize("context_cls", [GlobalAttention, RunningMean])
def test_streamed_classification_equals_all_at_once(context_cls):
    model = tiny_xt(context_cls, dense=False).eval()
    (image,) = images((150, 200))  # 3 x 4 regions of 64: 12 regions, chunks 5 + 5 + 2
    expected = model(image[None])
    logits = Engine(model, region_batch=5).classify([image])
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-9)
    assert torch.equal(
        Engine(model, region_batch=12).classify([image]),
        Engine(model, region_batch=12).classify([image]),
    )


def test_classification_batch_of_different_sizes_equals_each_alone():
    model = tiny_xt(GlobalAttention, dense=False).eval()
    a, b = images((150, 200), (70, 90))
    logits = Engine(model, region_batch=4).classify([a, b])
    expected = torch.cat([model(a[None]), model(b[None])])
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("film", [False, True])
@pytest.mark.parametrize("margin", [0, 32])
def test_streamed_dense_inference_equals_all_at_once(margin, film):
    model = tiny_xt(GlobalAttention, dense=True, margin=margin, film=film).eval()
    (image,) = images((130, 170))
    expected = model(image[None])[0]  # (3, 130, 170)
    out = Engine(model, region_batch=4).segment(image)
    assert out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)


def _xl(dim):
    from xtimage.encoders.context import create_context_encoder

    return create_context_encoder("xl", dim=dim, depth=2, heads=2, segment_len=8, mem_len=12)


@pytest.mark.parametrize(("context_cls", "film"), [(RunningMean, False), (_xl, False), (_xl, True)])
@pytest.mark.parametrize("margin", [0, 32])
def test_dense_inference_with_a_streamable_context_streams_and_equals_all_at_once(
    context_cls, margin, film
):
    """The context runs chunk by chunk beside the decoding pass (region_batch 1 and 5:
    chunks of 4 tokens per region that do not fill XL's segment of 8, chunks that end
    mid-row); outputs equal the whole image at once, and the contextualised tokens the
    decoder is handed never cover more than a band of region rows."""
    model = tiny_xt(context_cls, dense=True, margin=margin, film=film).eval()
    (image,) = images((650, 170))  # 11 x 3 regions of 64 px core
    expected = model(image[None])[0]
    plan = model.layout(650, 170).plan
    t = model.layout(650, 170).tokens_per_region
    seen = []
    token_windows = model.token_windows

    def spy(ctx, layout, have, want):
        seen.append(ctx.shape[0])
        return token_windows(ctx, layout, have, want)

    model.token_windows = spy
    for k in (1, 5):
        seen.clear()
        out = Engine(model, region_batch=k).segment(image)
        torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)
        reach = -(-margin // plan.core)
        chunk_rows = -(-k // plan.cols) + 1
        rows = 2 * reach + 2 * chunk_rows  # the chunk's rows, the reach, one chunk ahead
        assert max(seen) <= rows * plan.cols * t < plan.num_regions * t


def test_streamed_dense_inference_with_skipped_regions_equals_the_two_pass_path():
    model = tiny_xt(RunningMean, dense=True, margin=32).eval()
    (image,) = images((330, 170))
    keep = [i % 4 != 1 for i in range(18)]
    streamed = Engine(model, region_batch=4).segment(image, keep)
    assert Engine(model).segment(image, [False] * 18).abs().max() == 0
    model.context.streamable = False  # the two-pass path: context over all tokens at once
    two_pass = Engine(model, region_batch=4).segment(image, keep)
    torch.testing.assert_close(streamed, two_pass, rtol=1e-9, atol=1e-9)


def test_pad_batch_pads_several_sequences_and_views_one():
    from xtimage.engine.runner import pad_batch

    a, b = torch.randn(5, 4), torch.randn(3, 4)
    pos = [torch.ones(5, 2, dtype=torch.long), torch.ones(3, 2, dtype=torch.long)]
    valid = [torch.ones(5, dtype=torch.bool), torch.ones(3, dtype=torch.bool)]
    x, p, m = pad_batch([a, b], pos, valid)
    assert x.shape == (2, 5, 4) and torch.equal(x[1, :3], b) and x[1, 3:].abs().sum() == 0
    assert m.tolist() == [[True] * 5, [True] * 3 + [False] * 2] and p[1, 3:].abs().sum() == 0
    x, p, m = pad_batch([a], pos[:1], valid[:1])
    assert x.shape == (1, 5, 4) and x.data_ptr() == a.data_ptr()  # a view, no copy


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(a, b):
    assert a.keys() == b.keys() and len(a) >= 8
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize("context_cls", [GlobalAttention, global_with_partners])
@pytest.mark.parametrize("region_batch", [5, 100])  # two passes; the batch in one chunk
def test_exact_classification_gradients_equal_all_at_once(region_batch, context_cls):
    model = tiny_xt(context_cls, dense=False)
    batch = images((150, 200), (70, 90))
    labels = torch.tensor([1, 3])
    model.zero_grad()
    ref = sum(model.head.loss(model(x[None]), labels[i : i + 1]) for i, x in enumerate(batch)) / 2
    ref.backward()
    expected = _grads(model)
    model.zero_grad()
    loss = Engine(model, region_batch=region_batch).exact_step(batch, labels)
    assert abs(loss - ref.item()) < 1e-9
    _assert_same_grads(_grads(model), expected)
    # every region-encoder parameter got its gradient through the token pass
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for p in model.region_encoder.parameters()
        if p.requires_grad
    )


def _dense_reference_loss(model, batch, targets):
    total, pixels = 0.0, 0
    for x, t in zip(batch, targets, strict=True):
        out = model(x[None])  # (1, 3, H, W)
        total = total + F.cross_entropy(out, t["mask"][None], reduction="sum")
        pixels += t["mask"].numel()
    return total / pixels


@pytest.mark.parametrize("region_batch", [3, 100])  # two passes; the batch in one chunk
@pytest.mark.parametrize(("film", "reduce"), [(False, "mean"), (True, "mean"), (True, "max")])
@pytest.mark.parametrize("margin", [0, 32])
def test_exact_dense_gradients_equal_all_at_once(margin, film, reduce, region_batch):
    model = tiny_xt(GlobalAttention, dense=True, margin=margin, film=film, reduce=reduce)
    batch = images((130, 170), (60, 100))
    targets = [{"mask": torch.randint(0, 3, x.shape[1:])} for x in batch]
    model.zero_grad()
    ref = _dense_reference_loss(model, batch, targets)
    ref.backward()
    expected = _grads(model)
    model.zero_grad()
    loss = Engine(model, region_batch=region_batch).exact_step(batch, targets)
    assert abs(loss - ref.item()) < 1e-9
    _assert_same_grads(_grads(model), expected)


@pytest.mark.parametrize("region_batch", [3, 100])
def test_exact_dense_gradients_with_instance_norms_equal_all_at_once(region_batch):
    """Each region normalised over its own pixels, gradients through the statistics
    included: chunk by chunk gives the all-at-once gradients."""
    model = tiny_xt(GlobalAttention, dense=True, margin=32, film=True, reduce="max",
                    norm="instance")  # fmt: skip
    assert sum(isinstance(m, nn.GroupNorm) for m in model.head.modules()) == 3
    batch = images((130, 170), (60, 100))
    targets = [{"mask": torch.randint(0, 3, x.shape[1:])} for x in batch]
    model.zero_grad()
    ref = _dense_reference_loss(model, batch, targets)
    ref.backward()
    expected = _grads(model)
    model.zero_grad()
    loss = Engine(model, region_batch=region_batch).exact_step(batch, targets)
    assert abs(loss - ref.item()) < 1e-9
    _assert_same_grads(_grads(model), expected)


@pytest.mark.parametrize("region_batch", [3, 100])
def test_exact_dense_gradients_with_symmetric_partners_equal_all_at_once(region_batch):
    """Images of two sizes padded into one batch: each token's mirror is its own image's."""
    model = tiny_xt(global_with_partners, dense=True, margin=32, film=True, reduce="max")
    batch = images((130, 170), (60, 100))
    targets = [{"mask": torch.randint(0, 3, x.shape[1:])} for x in batch]
    model.zero_grad()
    ref = _dense_reference_loss(model, batch, targets)
    ref.backward()
    expected = _grads(model)
    assert all(p.grad.abs().sum() > 0 for p in model.context.proj.parameters())
    model.zero_grad()
    loss = Engine(model, region_batch=region_batch).exact_step(batch, targets)
    assert abs(loss - ref.item()) < 1e-9
    _assert_same_grads(_grads(model), expected)


@pytest.mark.parametrize("frozen_norm", [True, False])
def test_frozen_batch_norm_makes_exact_gradients_of_a_batch_norm_backbone_exact(frozen_norm):
    """A MobileNet region encoder in training mode: with its batch norms frozen, chunks of
    3 regions give the per-image gradients and leave the running statistics as they were;
    without, each chunk normalises by its own statistics (the check that can fail)."""
    encoder = RegionEncoder("mobilenetv3_small_050", region=64, frozen_norm=frozen_norm)
    head = DenseHead(encoder.feature_info[:-1], 16, [DenseOutput("mask", 3, "ce")], channels=8)
    model = XT(encoder, GlobalAttention(16), head, region=64).to(torch.float64).train()
    norms = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    batch = images((130, 170), (60, 100))
    targets = [{"mask": torch.randint(0, 3, x.shape[1:])} for x in batch]
    model.zero_grad()
    _dense_reference_loss(model, batch, targets).backward()
    expected = _grads(model)
    model.zero_grad()
    Engine(model, region_batch=3).exact_step(batch, targets)
    got = _grads(model)
    assert any(n.endswith("bn1.weight") for n in got)  # the norms' scale still trains
    unchanged = all(torch.equal(m.running_mean, b) for m, b in zip(norms, before, strict=True))
    assert unchanged == frozen_norm
    if frozen_norm:
        _assert_same_grads(got, expected)
    else:
        with pytest.raises(AssertionError):
            _assert_same_grads(got, expected)


@pytest.mark.parametrize("dense", [False, True])
def test_a_batch_in_one_chunk_is_encoded_once_with_the_two_pass_gradients(dense):
    """Dropout on: the one-pass step draws the masks the two-pass step draws with the
    same chunks (region_batch 12: each image is one chunk, the batch is not)."""
    model = tiny_xt(GlobalAttention, dense=dense, dropout=0.5).train()
    batch = images((150, 200), (70, 90))  # 12 + 4 regions
    targets = (
        [{"mask": torch.randint(0, 3, x.shape[1:])} for x in batch]
        if dense
        else torch.tensor([1, 3])
    )
    encodes = []
    model.tokenizer.register_forward_hook(lambda m, i, o: encodes.append(o.shape[0]))
    results = []
    for k in (12, 16):
        model.zero_grad()
        encodes.clear()
        torch.manual_seed(0)
        results.append((Engine(model, region_batch=k).exact_step(batch, targets), _grads(model)))
        passes = sum(encodes) // 16
        assert passes == (1 if k == 16 else 3 if dense else 2)
    assert abs(results[0][0] - results[1][0]) < 1e-12
    _assert_same_grads(results[0][1], results[1][1])


def test_region_batch_changes_nothing():
    model = tiny_xt(GlobalAttention, dense=True)
    batch = images((130, 170))
    targets = [{"mask": torch.randint(0, 3, (130, 170))}]
    results = []
    for k in (1, 4, 100):
        model.zero_grad()
        loss = Engine(model, region_batch=k).exact_step(batch, targets)
        results.append((loss, _grads(model)))
    for loss, grads in results[1:]:
        assert abs(loss - results[0][0]) < 1e-12
        _assert_same_grads(grads, results[0][1])


def test_dropout_re_encoding_repeats_the_first_pass_bit_for_bit():
    model = tiny_xt(GlobalAttention, dense=False, dropout=0.5).train()
    seen = []
    model.tokenizer.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    (image,) = images((150, 200))
    Engine(model, region_batch=5).exact_step([image], torch.tensor([2]))
    first, second = seen[:3], seen[3:]  # pass 1 (3 chunks), then the re-encoding
    assert len(second) == 3
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    # and dropout is really on: another step draws other masks
    Engine(model, region_batch=5).exact_step([image], torch.tensor([2]))
    assert not torch.equal(seen[0], seen[6])


@pytest.mark.parametrize("film", [False, True])
def test_streaming_training_without_context_equals_exact(film):
    """With no context there is no state to truncate: streaming == exact gradients."""
    from xtimage.encoders.context import IdentityContext

    model = tiny_xt(IdentityContext, dense=True, film=film)
    batch = images((130, 170))
    targets = [{"mask": torch.randint(0, 3, (130, 170))}]
    model.zero_grad()
    exact = Engine(model, region_batch=3).exact_step(batch, targets)
    expected = _grads(model)
    model.zero_grad()
    streamed = Engine(model, region_batch=3).streaming_step(batch, targets)
    assert abs(exact - streamed) < 1e-9
    _assert_same_grads(_grads(model), expected)


@pytest.mark.parametrize("context_cls", [GlobalAttention, global_with_partners])
def test_streaming_training_needs_a_streamable_context(context_cls):
    model = tiny_xt(context_cls, dense=False)
    with pytest.raises(ConfigError, match="streamable.*use exact mode"):
        Engine(model).streaming_step(images((64, 64)), torch.tensor([0]))


def test_skipped_regions_drop_tokens_and_keep_positions():
    model = tiny_xt(GlobalAttention, dense=False).eval()
    (image,) = images((128, 192))  # 2 x 3 regions
    keep = [True, False, True, False, False, True]
    items = Engine(model, region_batch=2).encode(image, keep)
    layout = items.layout
    assert items.regions == [0, 2, 5]
    assert items.tokens.shape[0] == 3 * layout.tokens_per_region
    assert torch.equal(items.positions, layout.positions([0, 2, 5]))
    full = Engine(model, region_batch=2).encode(image)
    t = layout.tokens_per_region
    assert torch.equal(items.tokens[t : 2 * t], full.tokens[2 * t : 3 * t])


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("xl", dict(depth=2, heads=2, segment_len=8, mem_len=12)),
        ("mamba", dict(depth=2, d_state=4, bidirectional=False)),
        ("mamba", dict(depth=2, d_state=4, bidirectional=True)),
    ],
)
def test_registered_context_encoders_stream_like_the_whole_sequence(name, kwargs):
    """Classification with real encoders: chunked (state carried, segments aligned by the
    engine even when a chunk's 4 tokens per region do not fill a segment) == all at once."""
    from xtimage.encoders.context import create_context_encoder

    model = tiny_xt(lambda dim: create_context_encoder(name, dim=dim, **kwargs), dense=False)
    model = model.eval()
    (image,) = images((150, 200))
    expected = model(image[None])
    for k in (1, 5, 12):
        logits = Engine(model, region_batch=k).classify([image])
        torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-9)


def test_a_reader_source_with_read_ahead_gives_the_tensor_results():
    from xtimage.io import ArrayReader

    model = tiny_xt(GlobalAttention, dense=True, margin=32).eval()
    (image,) = images((130, 170))
    expected = Engine(model, region_batch=4).segment(image)
    reader = ArrayReader(image.numpy())
    for read_ahead in (True, False):
        out = Engine(model, region_batch=4, read_ahead=read_ahead).segment(reader)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("change", ["dice", "batch norm"])
def test_chunked_training_refuses_what_couples_the_regions_of_a_batch(change):
    model = tiny_xt(GlobalAttention, dense=True)
    if change == "dice":
        model.head.outputs[0] = DenseOutput("mask", 3, "ce", dice=1.0)
    else:
        model.head.norm = "batch"
    targets = [{"mask": torch.zeros(64, 64, dtype=torch.long)}]
    with pytest.raises(ConfigError, match="Dice loss .* or a batch-norm decoder"):
        Engine(model).exact_step(images((64, 64)), targets)


# ---------------------------------------------------------------------------- mixed precision
# bf16 keeps 8 significant bits (a relative step of 2**-8 = 0.4%), so the streamed and the
# all-at-once runs, which round in another order (other batch shapes, the context fed in
# chunks, float32 tokens kept between passes), agree to rounding noise, not bit for bit.
# Stated tolerances: outputs within 3% of their largest magnitude (measured 0.2-1.1%);
# the whole gradient (every parameter as one vector) within 3% in L2 norm (measured
# 0.5-1.1%, the same size as float32's own distance from the bf16 reference, 0.7-1.3%);
# and each parameter's gradient no farther from the reference than 1.5x float32's distance
# plus 2% (a layer-norm bias gradient is a sum with cancellation: up to 20% for both).

BF16 = torch.bfloat16


def _bf16():
    return torch.autocast("cpu", dtype=BF16)


def _fp16():
    return torch.autocast("cpu", dtype=torch.float16)


def _assert_close_bf16(actual, expected):
    torch.testing.assert_close(
        actual.float(), expected.float(), rtol=0, atol=0.03 * expected.detach().abs().max().item()
    )


def _amp_reference_grads(model, loss_fn, amp=_bf16):
    """The all-at-once gradients under ``amp`` autocast, and in float32 (the noise scale)."""
    losses, grads = [], []
    for context in (amp, contextlib.nullcontext):
        model.zero_grad()
        with context():
            loss = loss_fn()
        loss.backward()
        losses.append(loss.item())
        grads.append(_grads(model))
    model.zero_grad()
    return losses[0], grads[0], grads[1]


def _assert_grads_close_amp(actual, expected, float32):
    assert actual.keys() == expected.keys() and len(expected) >= 8

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    def flat(grads):
        return torch.cat([g.flatten() for g in grads.values()])

    assert rel(flat(actual), flat(expected)) < 0.03
    floor = 1e-3 * float(flat(expected).norm())
    for name, g in expected.items():
        if g.norm() > floor:  # smaller ones are rounding noise throughout
            assert rel(actual[name], g) <= 1.5 * rel(float32[name], g) + 0.02, name


@pytest.mark.parametrize("context_cls", [GlobalAttention, RunningMean])
def test_bf16_streamed_classification_equals_all_at_once(context_cls):
    model = tiny_xt(context_cls, dense=False, dtype=torch.float32).eval()
    image = torch.randn(3, 150, 200)
    with _bf16():
        expected = model(image[None])
    logits = Engine(model, region_batch=5, autocast=BF16).classify([image])
    assert logits.dtype == torch.float32  # outputs in the model's dtype
    _assert_close_bf16(logits, expected)


def test_bf16_streamed_dense_inference_equals_all_at_once():
    model = tiny_xt(GlobalAttention, dense=True, margin=32, dtype=torch.float32).eval()
    image = torch.randn(3, 130, 170)
    with _bf16():
        expected = model(image[None])[0]
    _assert_close_bf16(Engine(model, region_batch=4, autocast=BF16).segment(image), expected)


def test_bf16_exact_classification_gradients_equal_all_at_once():
    model = tiny_xt(GlobalAttention, dense=False, dtype=torch.float32)
    batch = [torch.randn(3, 150, 200), torch.randn(3, 70, 90)]
    labels = torch.tensor([1, 3])

    def loss_fn():
        return sum(model.head.loss(model(x[None]).float(), labels[i : i + 1])
                   for i, x in enumerate(batch)) / 2  # fmt: skip

    ref, expected, float32 = _amp_reference_grads(model, loss_fn)
    loss = Engine(model, region_batch=5, autocast=BF16).exact_step(batch, labels)
    assert abs(loss - ref) < 0.01 * ref
    _assert_grads_close_amp(_grads(model), expected, float32)


def test_bf16_exact_dense_gradients_equal_all_at_once():
    model = tiny_xt(GlobalAttention, dense=True, margin=32, dtype=torch.float32)
    batch = [torch.randn(3, 130, 170), torch.randn(3, 60, 100)]
    targets = [{"mask": torch.randint(0, 3, x.shape[1:])} for x in batch]
    ref, expected, float32 = _amp_reference_grads(
        model, lambda: _dense_reference_loss(model, batch, targets)
    )
    loss = Engine(model, region_batch=3, autocast=BF16).exact_step(batch, targets)
    assert abs(loss - ref) < 0.01 * ref
    _assert_grads_close_amp(_grads(model), expected, float32)


def _scaled_grads(model, scaler):
    return {n: g / scaler.get_scale() for n, g in _grads(model).items()}


@pytest.mark.parametrize("dense", [False, True])
def test_fp16_exact_step_scales_every_backward_alike(dense):
    """With fp16's gradient scaler the context + head loss, the chunks' decoder losses
    and the saved token gradients all carry the one scale: unscaled, the gradients are
    the all-at-once fp16 ones (tolerances as for bf16), and the loss is returned unscaled."""
    model = tiny_xt(GlobalAttention, dense=dense, margin=32 if dense else 0, dtype=torch.float32)
    if dense:
        batch = [torch.randn(3, 130, 170), torch.randn(3, 60, 100)]
        targets = [{"mask": torch.randint(0, 3, x.shape[1:])} for x in batch]

        def loss_fn():
            return _dense_reference_loss(model, batch, targets)
    else:
        batch = [torch.randn(3, 150, 200), torch.randn(3, 70, 90)]
        targets = torch.tensor([1, 3])

        def loss_fn():
            return sum(model.head.loss(model(x[None]).float(), targets[i : i + 1])
                       for i, x in enumerate(batch)) / 2  # fmt: skip

    ref, expected, float32 = _amp_reference_grads(model, loss_fn, _fp16)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    engine = Engine(model, region_batch=3, autocast=torch.float16, scaler=scaler)
    loss = engine.exact_step(batch, targets)
    assert abs(loss - ref) < 0.01 * ref
    _assert_grads_close_amp(_scaled_grads(model, scaler), expected, float32)


def test_fp16_streaming_step_with_a_scaler_equals_exact():
    """No context, so streaming is exact: with the scaler on both, the unscaled gradients
    agree to fp16 rounding (the tolerances of the bf16 tests)."""
    from xtimage.encoders.context import IdentityContext

    model = tiny_xt(IdentityContext, dense=True, dtype=torch.float32)
    batch = [torch.randn(3, 130, 170)]
    targets = [{"mask": torch.randint(0, 3, (130, 170))}]
    results = []
    for step, amp in [("exact_step", None), ("exact_step", torch.float16),
                      ("streaming_step", torch.float16)]:  # fmt: skip
        model.zero_grad()
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=amp is not None)
        engine = Engine(model, region_batch=3, autocast=amp, scaler=scaler)
        results.append((getattr(engine, step)(batch, targets), _scaled_grads(model, scaler)))
    (_, float32), (exact, expected), (streamed, grads) = results
    assert abs(exact - streamed) < 1e-2 * exact
    _assert_grads_close_amp(grads, expected, float32)


def test_fp16_overflow_in_the_streamed_backward_skips_the_step():
    """A scale too large for fp16 overflows in the re-encodings' backward; the scaler sees
    the non-finite gradients when unscaling, skips the optimizer step and lowers the scale."""
    model = tiny_xt(GlobalAttention, dense=False, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    engine = Engine(model, region_batch=5, autocast=torch.float16, scaler=scaler)
    engine.exact_step([torch.randn(3, 150, 200)], torch.tensor([1]))
    grads = _grads(model)
    assert not all(torch.isfinite(g).all() for g in grads.values())
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() < 2.0**40
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_in_memory_dense_output_is_checked_against_the_allocation_cap(monkeypatch):
    from xtimage.errors import InputError

    model = tiny_xt(RunningMean, dense=True).eval()
    monkeypatch.setenv("XT_MAX_ALLOC", "1kB")
    with pytest.raises(InputError, match="outputs of a 64 x 64 px image in memory"):
        Engine(model).segment(torch.zeros(3, 64, 64, dtype=torch.float64))
