"""The demo report as a user sees it: built by the demo's own report code from fixed tiny
inputs (no training), opened in headless Chromium. The tables render as tables, every
image loads, no Markdown shows as text; a screenshot is kept for a person to look at."""

import numpy as np
import pytest

from headless import page_checks, screenshot
from xtimage.demo import MODELS, DemoSettings, _write_report


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("report")
    settings = DemoSettings(out=out, test_images=2)  # the shipped-weights wording
    rng = np.random.default_rng(0)
    training, results = {}, {}
    for i, m in enumerate(MODELS):
        runs = [{"lr": lr, "steps": 3, "val_foreground_iou": 0.1 * (i + k), "minutes": 0.1,
                 "checkpoint": "unused"} for k, lr in enumerate((1e-3, 2e-3))]  # fmt: skip
        training[m] = {"runs": runs, "best": runs[1]}
        results[m] = {"foreground_iou": 0.5 - 0.1 * i, "miou": 0.6, "params": 1000 * (i + 1),
                      "seconds_per_image": 0.1, "peak_mb": 100.0,
                      "mask": rng.integers(0, 2, (512, 512)).astype(np.uint8)}  # fmt: skip
    _write_report(settings, training, results, 0, 1.0)
    return out


def test_the_report_renders_tables_and_images_and_no_markdown(report):
    found = page_checks(report / "index.html")
    assert found["tables"][0] == 4 and found["tables"][1] == 7  # metrics: 3 models; sweep: 6
    assert found["images"] and all(
        i["complete"] and i["naturalWidth"] > 0 for i in found["images"]
    ), found["images"]
    assert {i["src"] for i in found["images"]} == {"predictions.png", "zoom.png"}
    text = found["text"]
    for raw in ("`", "|---", "- xT:", "![", "**", "](", "## "):
        assert raw not in text, f"raw Markdown {raw!r} shows on the page"
    assert "each model's mask" in text and "Learning-rate sweep" in text
    # large panels: the figures are drawn at least as wide as the page shows them
    shot = screenshot((report / "index.html").resolve().as_uri(), report / "report.png")
    assert shot.stat().st_size > 10_000
