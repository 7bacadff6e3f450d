#!/usr/bin/env bash
# Create .venv and install xtimage with the given extras; quick when nothing changed.
# Usage: source scripts/setup.sh [EXTRAS]   (EXTRAS e.g. "test"; default: none)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
venv="$root/.venv"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating virtual environment in $venv" >&2
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -qq --upgrade pip
fi

# Re-install only when the project's requirements or the extras asked for change.
stamp="$venv/.xtimage-install-${extras:-core}"
want="$(cat "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing xtimage${extras:+[$extras]} (first run takes a few minutes: PyTorch is large)" >&2
    # torch first, pinned exactly, so no resolver ever pulls another build.
    "$venv/bin/python" -m pip install -qq torch==2.14.1 torchvision==0.29.1
    spec="$root"
    [ -n "$extras" ] && spec="$root[$extras]"
    "$venv/bin/python" -m pip install -qq -e "$spec"
    echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
