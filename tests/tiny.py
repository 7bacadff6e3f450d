"""The tiny model every CPU test builds: 64 px regions, a 4-stage ConvNeXt of widths 8-16,
one context block of width 32 (presets' other settings as they are)."""

TINY_MODEL = [
    "model.region=64",
    "model.dim=32",
    "model.backbone_kwargs={depths: [1, 1, 1, 1], dims: [8, 8, 16, 16]}",
    "model.context_kwargs={depth: 1, heads: 2}",
    "model.decoder_channels=8",
]
