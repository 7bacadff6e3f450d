#!/usr/bin/env bash
# Create .venv and install xtimage with the given extras; quick (a hash compare) when nothing
# changed. Sourced, it puts .venv/bin first on PATH and leaves the caller's shell options
# alone (the install runs in a subshell with its own `set -euo pipefail`).
# Usage: source scripts/setup.sh [EXTRAS]
# EXTRAS default to "test" (every optional reader, the report, pytest): the one set that
# ./scripts/demo, ./scripts/test and `xt` all use, so whichever runs first installs for all.

_xt_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_xt_install() (
    set -euo pipefail
    root="$1"
    extras="$2"
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
    want="$(sha256sum < "$root/pyproject.toml" | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "[setup] installing xtimage${extras:+[$extras]} (first run takes a few minutes:" \
            "PyTorch is large)" >&2
        # torch first, pinned exactly, so no resolver ever pulls another build.
        "$venv/bin/python" -m pip install -qq torch==2.14.1 torchvision==0.29.1
        spec="$root"
        [ -n "$extras" ] && spec="$root[$extras]"
        "$venv/bin/python" -m pip install -qq -e "$spec"
        echo "$want" > "$stamp"
    fi
)

# A plain call, not inside `if` or `||`, where bash would ignore the `set -e` in it. A
# caller with `set -e` of its own (scripts/demo, scripts/test) stops here on failure.
_xt_install "$_xt_root" "${1-test}"
_xt_status=$?
unset -f _xt_install
if [ "$_xt_status" = 0 ]; then
    case ":$PATH:" in
        *":$_xt_root/.venv/bin:"*) ;;
        *) export PATH="$_xt_root/.venv/bin:$PATH" ;;
    esac
    unset _xt_root _xt_status
else
    echo "[setup] failed (exit $_xt_status); see the messages above" >&2
    unset _xt_root
    # sourced: return to the caller's shell; run as a script: exit
    return "$_xt_status" 2>/dev/null || exit "$_xt_status"
fi
