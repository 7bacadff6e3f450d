"""The `xt` paths that run no model answer at once: no torch imported, help with examples,
"did you mean" for misspelled names. Timings are in benchmarks/cli_startup.py."""

import json
import subprocess
import sys

import pytest

from xtimage.cli import COMMANDS, main

PROBE = """
import json, sys
from xtimage.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "timm", "safetensors", "scipy", "PIL") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}), file=sys.__stderr__)
"""

LIGHT = [
    ["--help"],
    ["train", "--help"],
    ["trian"],
    ["info", "--size", "30000x24000", "--region", "256", "--json"],
    ["train", "synthetic_seg", "train.lrr=1"],
    ["train", "synthetc_seg"],
    ["eval", "best.safetensors", "model.dim=8"],
]


@pytest.mark.parametrize("argv", LIGHT, ids=lambda a: " ".join(a))
def test_light_paths_import_no_torch(argv):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120
    )
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result["heavy"] == [], f"xt {' '.join(argv)} imported {result['heavy']}"
    assert result["code"] in (0, 2)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_ends_with_two_or_three_examples(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    tail = capsys.readouterr().out.rstrip().split("\nexamples:\n")[-1].splitlines()
    assert 2 <= len(tail) <= 3 and all(line.startswith("  xt ") for line in tail), tail


def test_misspelled_subcommand_and_names_get_did_you_mean(capsys):
    with pytest.raises(SystemExit):
        main(["predcit"])
    assert "did you mean 'predict'?" in capsys.readouterr().err
    assert main(["train", "synthetic_seg", "train.lrr=1"]) == 2
    assert "did you mean 'train.lr'?" in capsys.readouterr().err
    assert main(["train", "synthetc_seg"]) == 2
    assert "did you mean 'synthetic_seg'?" in capsys.readouterr().err
    assert main(["train", "synthetic_seg", "model.head=segmentaton"]) == 2
    assert "did you mean 'segmentation'?" in capsys.readouterr().err
