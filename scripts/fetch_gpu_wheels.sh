#!/usr/bin/env bash
# Fetches, here, the wheels a lent GPU machine lacks (monai, nibabel, nvtx) into .whl/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
../shared/gpu/wheels.sh .whl
