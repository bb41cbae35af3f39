#!/usr/bin/env bash
# Runs on a lent GPU machine (the `device` tool), from the repo root, with `.whl` carried:
#   device run: carry [".whl"], command "scripts/gpu_session.sh [SUITE] [BUDGET_S]"
# Installs the carried wheels (monai, nibabel, nvtx: the image lacks them) and the project,
# then runs one harness suite and puts its report under $OUT, as at most 8 files:
#   report.md, results.jsonl, env.json, report.html, run.tar.gz (the whole run folder), log.txt.
# Fetch the wheels here first: scripts/fetch_gpu_wheels.sh
set -uo pipefail
suite=${1:-gpu-check}
budget_s=${2:-480}
out=${OUT:-/tmp/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 || true
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/log.txt"
run=/tmp/segbench-$suite
timeout "$((budget_s + 60))" python3 -m segbench bench --suite "$suite" --out "$run" --device cuda 2>&1 | tee -a "$out/log.txt"
cp "$run"/report.md "$run"/results.jsonl "$run"/env.json "$run"/report.html "$out"/ 2>/dev/null
# Everything but the synthesized data and its converted copies (they can pass the 16 MiB a returned file may hold).
tar -czf "$out/run.tar.gz" --exclude="segbench-$suite/cache/formats" --exclude="segbench-$suite/data" --exclude="*.pt" --exclude="*.npy" -C /tmp "segbench-$suite"
ls -la "$out"
