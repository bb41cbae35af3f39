#!/usr/bin/env bash
# Creates .venv and installs segbench into it. On CPU machines the CPU build of torch 2.13.0
# that lies on disk goes in first, so that the package's `torch>=2.8` installs nothing more
# (a bare `torch` requirement would fetch a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==${SEGBENCH_TORCH:-2.13.0}" 2>&1 | grep -v "^WARNING: Location" || true
fi
python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
python -c "import torch, monai; print(f'torch {torch.__version__}, monai {monai.__version__}')"
