#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the whole test suite.
# Without a CUDA device the Triton kernels run under the interpreter and GPU-only tests skip with
# their reason; with one, the kernels are compiled (the interpreter would time them on the host).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    export TRITON_INTERPRET=${TRITON_INTERPRET:-1}
fi
ruff check .
python -m pytest -q "$@"
