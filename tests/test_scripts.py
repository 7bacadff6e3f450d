"""scripts/setup.sh, sourced as the README says, installs once and leaves the shell as it was."""

import hashlib
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fake_checkout(tmp_path: Path, extras: str, installed: bool) -> Path:
    """A checkout with scripts/setup.sh and a .venv whose python fails if ever run."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text("#!/bin/sh\necho pip ran >&2\nexit 1\n")
    (bin_dir / "python").chmod(0o755)
    if installed:
        digest = hashlib.sha256((tmp_path / "pyproject.toml").read_bytes()).hexdigest()
        (tmp_path / ".venv" / f".xtimage-install-{extras}").write_text(digest + "\n")
    return tmp_path


def source(root: Path, args: str = "") -> str:
    script = (
        f"set -o | grep -E '^(errexit|nounset|pipefail)'; source {root}/scripts/setup.sh {args};"
        " echo rc=$?; set -o | grep -E '^(errexit|nounset|pipefail)'; echo PATH=$PATH; false;"
        " echo $UNSET_VARIABLE still-here"
    )
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def test_sourcing_keeps_the_callers_shell_options(tmp_path):
    root = fake_checkout(tmp_path, "test", installed=True)
    out = source(root)
    before, after = out.split("rc=")
    assert "rc=0" in out and "pip ran" not in out  # the stamp matched: nothing installed
    options = [line.split() for line in before.splitlines() if line.strip()]
    assert options == [line.split() for line in after.splitlines()[1:4]]
    assert f"PATH={root}/.venv/bin:" in out and "still-here" in out


def test_a_failed_install_returns_to_the_shell(tmp_path):
    root = fake_checkout(tmp_path, "test", installed=False)
    out = source(root)
    assert "pip ran" in out and "[setup] failed" in out and "rc=1" in out and "still-here" in out


def test_demo_and_test_install_the_same_extras():
    def extras(script: str) -> str:
        text = (ROOT / "scripts" / script).read_text()
        line = next(x for x in text.splitlines() if x.startswith("source"))
        return line.split('setup.sh"')[1].split("#")[0].strip()

    assert extras("demo") == extras("test") == "test"
