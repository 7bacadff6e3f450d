"""`xt demo --quick`: the main job's code path end to end, in about a minute."""

import json

from xtimage.cli import main


def test_quick_demo_writes_a_sane_report_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    for name in ("index.html", "README.md", "metrics.json", "predictions.png", "zoom.png"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"xt", "crop", "downsample"}
    for m in metrics["models"].values():
        assert 0.0 <= m["foreground_iou"] <= 1.0 and m["params"] > 0 and m["steps"] == 3
        assert m["sweep"] and m["peak_mb"] >= 0
    assert metrics["models"]["crop"]["params"] < metrics["models"]["xt"]["params"]
    # the baselines' ceilings are far below what xT can reach
    assert metrics["ceilings"]["crop"] < 0.5 and metrics["ceilings"]["downsample"] < 0.5
    html = (out / "index.html").read_text()
    assert "<table>" in html and "predictions.png" in html and "xt train demo" in html
    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
