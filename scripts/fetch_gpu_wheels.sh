#!/usr/bin/env bash
# Fetches, here, the wheels a lent GPU machine lacks (monai, nibabel, nvtx) into .whl/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
../shared/gpu/wheels.sh .whl
# MONAI's stock SwinUNETR calls einops.rearrange in every forward (an optional import in MONAI, so a
# machine without it fails only when a stock SwinUNETR runs: every baseline row of swin-goal). The
# image's package list (../.library/device/KINDS.md, 2026-11-17) has einops; the wheel guards against
# an image without it
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
  einops==0.8.2 2>&1 | grep -v "^WARNING: Location" || true
ls .whl/einops-*.whl
