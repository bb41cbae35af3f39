#!/usr/bin/env bash
# Sets up .venv and runs the main job on the embedded synthetic data, under runs/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
segbench demo --out "${1:-runs/demo}"
