#!/usr/bin/env bash
# The GPU suite in one command, from a checkout (see benchmarks/gpu_suite.py):
#   benchmarks/gpu_suite.sh                 # on a GPU: ~7 min, rows in benchmarks/results/
#   benchmarks/gpu_suite.sh --dry-run       # on CPU: the same code paths, tiny sizes
# PYTHON picks the interpreter (default: python); the checkout's src/ goes first on the path.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" benchmarks/gpu_suite.py "$@"
