#!/usr/bin/env bash
# Runs on a lent GPU machine (the `device` tool), from the repo root, with `.whl` carried:
#   device run: kind nvidia-h100-x1 (else none), carry [".whl"], timeout_s 600, command "scripts/gpu_session.sh [SUITE]"
# Installs the carried wheels (monai, nibabel, nvtx, einops: the image lacks them) and the project, logs
# `segbench env`, then
#   gpu-check (default): all of tests/kernels on CUDA (<= 90 s: a failing kernel is worth knowing
#     before any timing), then the suite. Other suites likewise, then, in the time left, python -m
#     kernels.bench_window_attention (with --sweep for the `kernels` suite: the Triton window
#     attention's tile sets too) — `scripts/gpu_session.sh kernels` is the kernel-focused call.
#   swin-goal: the suite first (its first goal's row, then stock + compile: ~520 s with cold compiles
#     and the fp32 reference, by the H100 run of 2026-11-28; then the other rows in its budget; a
#     follow-up `swin-goal --resume` call on the warm machine adds the rows the budget cut;
#     its parity column is the fast path's correctness check), then, while the 600 s call has time
#     left, the fast SwinUNETR's GPU tests, python -m kernels.bench_window_attention (SDPA vs the
#     Triton window attention at stage 1-2 shapes, with parity) and python -m seg.swin_fast.gpu_check
#     (SDPA backends, parity, a CUDA memory snapshot summarized by category).
# $OUT gets at most 8 files: report.md, results.jsonl, env.json, report.html, log.txt (all console
# output), run.tar.gz (the run folder without data and traces), traces.tar (the rows' torch.profiler
# traces, profile_steps; dropped if over the 16 MiB a returned file may have), and swin_check.tar.gz
# when the window-attention bench or gpu_check wrote something.
# `scripts/gpu_session.sh SUITE --resume` finishes a run cut short: the run folder of a previous call
# (still in /tmp on a warm machine, or unpacked from its run.tar.gz into runs/gpu/ here and carried)
# gets only its missing cases; no tests first. Other arguments go to `segbench bench` (no tests
# first either), e.g. a short follow-up call on the warm machine:
#   GPU_CALL_S=200 scripts/gpu_session.sh unet --only unet/bf16+compile \
#     --only unet/bf16+compile+inductor:triton.mix_order_reduction=0
# GPU_CALL_S: the device call's timeout_s (default 600); every step keeps inside it.
# swin-extras: no suite, only swin-goal's spare-time steps (its 520 s budget leaves them no time in
# the same call): a second call, e.g. GPU_CALL_S=240 scripts/gpu_session.sh swin-extras.
# Fetch the wheels here first: scripts/fetch_gpu_wheels.sh
set -uo pipefail
suite=${1:-gpu-check}
shift || true
resume=""
bench_args=()
for arg in "$@"; do
  if [ "$arg" = "--resume" ]; then resume=--resume; else bench_args+=("$arg"); fi
done
call_s=${GPU_CALL_S:-600}
out=${OUT:-/tmp/out}
mkdir -p "$out"
log="$out/log.txt"
export PYTHONUNBUFFERED=1
stamp() { echo "[+${SECONDS}s] $*" | tee -a "$log"; }  # where a call's seconds go (2026-11-28: ~48 s before the suite)
: > "$log"
# a warm machine's second call (a --resume) keeps /tmp/site from the first: no reinstall of the same
# wheels (the marker holds their checksums: other wheels carried, they are installed)
wheels=$(sha1sum .whl/*.whl 2>/dev/null | sha1sum | cut -d' ' -f1)
if [ "$(cat /tmp/site/.segbench-installed 2>/dev/null)" != "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  # nothing needs the editable install (python3 -m segbench and the case subprocesses run from the
  # repo on PYTHONPATH); it only gives segbench its version: log a failure, go on
  python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -3 | tee -a "$log"
  echo "$wheels" > /tmp/site/.segbench-installed
  stamp "installed .whl/ into /tmp/site"
else
  stamp "install skipped: this warm machine's /tmp/site holds the same wheels"
fi
export PYTHONPATH=$PWD:/tmp/site
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee -a "$log"
# MONAI's stock SwinUNETR needs einops in every forward (every swin baseline row); carried in .whl too
python3 -c "import einops" 2>/dev/null || echo "WARNING: einops is missing (.whl lacks it: run scripts/fetch_gpu_wheels.sh): every stock SwinUNETR row will fail" | tee -a "$log"
python3 -m segbench env --device cuda 2>&1 | tee -a "$log"  # versions; which speed features run here, and why not
stamp "segbench env done"

# gpu-check: every kernel test first (not only the gpu-marked ones: on CUDA the same tests check the
# compiled Triton kernels, which the CPU interpreter cannot)
swin=0; case "$suite" in swin-goal|swin-extras) swin=1;; esac
if [ "$swin" = 0 ] && [ -z "$resume" ] && [ ${#bench_args[@]} -eq 0 ]; then
  echo "== pytest tests/kernels" | tee -a "$log"
  timeout 90 python3 -m pytest -q -x -p no:cacheprovider tests/kernels 2>&1 | tail -15 | tee -a "$log"
fi

run=/tmp/segbench-$suite
if [ "$suite" != "swin-extras" ]; then
  extra=("${bench_args[@]}")
  if [ "$resume" = "--resume" ]; then
    [ -d "$run" ] || cp -r "runs/gpu/segbench-$suite" /tmp/ || { echo "no run to resume: carry runs/gpu/segbench-$suite" | tee -a "$log"; exit 1; }
    extra+=(--resume)
  fi
  # the suite's budget_s, or --budget-s when the call is shorter, stops starting cases (rows a --resume
  # finishes); the timeout is the backstop for the call
  bench_s=$((call_s - 20 - SECONDS)); [ "$bench_s" -ge 1 ] || bench_s=1  # timeout 0 would mean no limit
  budget_s=$((bench_s - 25)); [ "$budget_s" -ge 1 ] || budget_s=1
  stamp "== segbench bench --suite $suite --budget-s $budget_s ${extra[*]}"
  # a resumed folder holds the last call's report: the one built below must be this call's
  rm -f "$run/report.md" "$run/report.html"
  # rows reach $OUT as they come: a call the device tool cuts short (less device time left than
  # timeout_s) still returns them
  ( while sleep 15; do cp -f "$run"/results.jsonl "$run"/env.json "$out"/ 2>/dev/null; done ) &
  copier=$!
  timeout "$bench_s" python3 -m segbench bench --suite "$suite" --out "$run" --device cuda --budget-s "$budget_s" "${extra[@]}" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  kill "$copier" 2>/dev/null
  [ "$rc" = 0 ] || echo "segbench bench exited $rc (124: cut by this call's timeout)" | tee -a "$log"
  stamp "bench done"
  # cut off: the rows so far (bounded: the copies below must happen inside the call)
  [ -f "$run/report.md" ] || timeout 10 python3 -m segbench report "$run" 2>&1 | tail -3 | tee -a "$log"
  cp "$run"/report.md "$run"/results.jsonl "$run"/env.json "$run"/report.html "$out"/ 2>/dev/null
  # Everything but the synthesized data and its converted copies (a returned file holds at most 16 MiB).
  tar -czf "$out/run.tar.gz" --exclude="segbench-$suite/cache/formats" --exclude="segbench-$suite/data" --exclude="*.pt" --exclude="*.npy" --exclude="trace.json.gz" -C /tmp "segbench-$suite"
  # the traces apart (already gzipped; each row's summary is in run.tar.gz and the report either way):
  # the compiled rows' first (the goal's), then the others while the 16 MB a returned file may have lasts
  traces=(); total=0
  while read -r trace; do
    size=$(( $(stat -c %s "/tmp/$trace") + 2048 ))  # (tar's header and padding)
    if [ $((total + size)) -le 15500000 ]; then traces+=("$trace"); total=$((total + size))
    else echo "traces.tar: $trace left out (16 MB)" | tee -a "$log"; fi
  done < <(cd /tmp && find "segbench-$suite/profiles" -name trace.json.gz 2>/dev/null | awk '{print (/compile/ ? 0 : 1) "\t" $0}' | sort | cut -f2-)
  [ ${#traces[@]} -eq 0 ] || tar -cf "$out/traces.tar" -C /tmp "${traces[@]}"
fi

left_s=$((call_s - 30 - SECONDS))
if [ "$swin" = 1 ] && [ "$left_s" -gt 30 ]; then
  echo "== pytest -m gpu tests/seg/test_swin_fast.py tests/profiles (${left_s} s left)" | tee -a "$log"
  timeout "$((left_s < 60 ? left_s : 60))" python3 -m pytest -q -x -p no:cacheprovider -m gpu tests/seg/test_swin_fast.py tests/profiles 2>&1 | tail -15 | tee -a "$log"
fi
left_s=$((call_s - 30 - SECONDS))
if [ "$swin" = 1 ] && [ "$left_s" -gt 40 ]; then
  # the Triton window attention in bf16 (the triton_attn row's dtype): the CPU interpreter cannot run
  # bf16, so these two tests are its first check anywhere (the compiled fast path's gradients under
  # this image's torch 2.11 are checked on the development CPU: see README, "Running on a lent GPU")
  echo "== pytest: Triton window attention in bf16 (${left_s} s left)" | tee -a "$log"
  timeout "$((left_s < 45 ? left_s : 45))" python3 -m pytest -q -p no:cacheprovider \
    tests/kernels/test_window_attention.py tests/kernels/test_swin_triton_attention.py \
    -k "half_precision or triton_attention_matches_stock" 2>&1 | tail -8 | tee -a "$log"
fi
left_s=$((call_s - 30 - SECONDS))
if [ "$suite" != "gpu-check" ] && [ ${#bench_args[@]} -eq 0 ] && [ "$left_s" -gt 40 ]; then
  # the kernels suite's call has the time for the tile sweep too
  sweep=(); [ "$suite" = "kernels" ] && sweep=(--sweep)
  echo "== kernels.bench_window_attention ${sweep[*]}: SDPA vs the Triton window attention (${left_s} s left)" | tee -a "$log"
  timeout "$((left_s < 150 ? left_s : 150))" python3 -m kernels.bench_window_attention --out /tmp/swin_check "${sweep[@]}" 2>&1 | tail -12 | tee -a "$log"
fi
left_s=$((call_s - 30 - SECONDS))
if [ "$swin" = 1 ] && [ "$left_s" -gt 45 ]; then
  echo "== seg.swin_fast.gpu_check (${left_s} s left)" | tee -a "$log"
  timeout "$left_s" python3 -m seg.swin_fast.gpu_check --out /tmp/swin_check 2>&1 | tail -40 | tee -a "$log"
fi
[ -d /tmp/swin_check ] && tar -czf "$out/swin_check.tar.gz" --exclude="*.pickle" -C /tmp swin_check
stamp "end of call"
ls -la "$out"
