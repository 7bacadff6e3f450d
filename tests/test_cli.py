import json
import subprocess
import sys

import numpy as np

from xtimage.cli import main


def test_info_on_a_size_prints_the_plan(capsys):
    assert main(["info", "--size", "1000x1500", "--region", "256", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["plan"]["grid"] == [4, 6]
    assert info["plan"]["padding"] == [24, 36]
    assert info["tokens"]["sequence_length"] == 24 * 64
    # tokens of 32 px starting inside 1000 x 1500: ceil(1000/32)=32 rows, ceil(1500/32)=47 cols
    assert info["tokens"]["valid"] == 32 * 47


def test_info_on_a_file(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.zeros((3, 300, 200), np.uint8))
    assert main(["info", str(tmp_path / "a.npy"), "--region", "128"]) == 0
    out = capsys.readouterr().out
    assert "300 x 200 px, 3 channel(s), uint8" in out and "6 = 3 x 2 of 128 px" in out


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["info", "--size", "1000x1500", "--region", "64", "--margin", "32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "leaves no core" in err and "Traceback" not in err
    assert main(["info", str(tmp_path / "nope.tif")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["info", "--size", "big"]) == 2


def test_console_script_exit_code():
    proc = subprocess.run(
        [sys.executable, "-m", "xtimage.cli", "info", "--size", "0x5"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "image height must be a positive integer" in proc.stderr


def test_info_plans_for_the_lean_allocator_when_asked():
    """--lean-memory switches this process's allocator (a subprocess here) and plans with
    less slack; the plan names its allocator either way."""
    base = [sys.executable, "-m", "xtimage.cli", "info", "--size", "2048x2048", "--backbone",
            "mobilenetv3_small_050", "--dim", "64", "--max-memory", "4GB", "--json"]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* settings inherited
    plans = [json.loads(subprocess.run(base + extra, capture_output=True, text=True,
                                       check=True, env=env).stdout)["memory"]
             for extra in ([], ["--lean-memory"])]  # fmt: skip
    default, lean = plans
    assert default["allocator"] == "glibc default" and lean["allocator"] == "lean"
    assert lean["region_batch"] == default["region_batch"]
    assert lean["breakdown"]["overhead"] < default["breakdown"]["overhead"]
