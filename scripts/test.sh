#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the whole test suite on the CPU.
# Triton kernels run under the interpreter here; GPU-only tests skip with their reason.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
export TRITON_INTERPRET=${TRITON_INTERPRET:-1}
ruff check .
python -m pytest -q "$@"
