"""What the GPU was doing while a case was timed, and when its timing ended: SM clock, temperature,
power and the reasons the driver gave for holding the clocks down — read with nvidia-smi, never set.

A timing is only as good as the GPU's clocks were steady. An H100 under a long training loop may
run into its power cap (normal, and part of what a user gets) or slow down for heat (the cooling's
problem, not the code's); `slowdowns` names the latter, and the report flags cases that had one.
Standard library only: the report reads these fields on a machine without torch.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import threading

QUERY = "clocks.sm,clocks.max.sm,temperature.gpu,power.draw,{reasons}"
# nvidia-smi renamed clocks_throttle_reasons to clocks_event_reasons (driver 535); either may answer
REASON_FIELDS = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")
# NVML clock event reason bits that mean "slowed down for heat or a hardware limit" (nvml.h:
# nvmlClocksEventReasonHwSlowdown 0x8, SwThermalSlowdown 0x20, HwThermalSlowdown 0x40,
# HwPowerBrakeSlowdown 0x80; SwPowerCap 0x4 is a normal power cap, 0x100 a display clock setting)
SLOWDOWNS = {
    0x8: "HW slowdown",
    0x20: "SW thermal slowdown",
    0x40: "HW thermal slowdown",
    0x80: "HW power brake",
}

_answered = [REASON_FIELDS[0]]  # the field name this driver answered last: a watch asks it many times


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def visible_gpu() -> str | None:
    """nvidia-smi's id of the first GPU CUDA_VISIBLE_DEVICES shows (an index or a GPU-<uuid>), or None
    when it cannot be told (a MIG instance: its clocks are its parent's anyway, not worth guessing)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    if visible.isdigit() or visible.startswith("GPU-"):
        return visible
    if visible.startswith("MIG-GPU-"):  # MIG-GPU-<uuid>/<gi>/<ci>: the parent GPU
        return visible[len("MIG-"):].split("/")[0]
    return None


def sample(gpu: str | None = None) -> dict | None:
    """{"sm_clock_mhz", "max_sm_clock_mhz", "temperature_c", "power_w", "event_reasons", "slowdowns"}
    of GPU `gpu` (an nvidia-smi id: "GPU-<uuid>" best, as torch's device properties give it; default
    `visible_gpu()`), or None without nvidia-smi, an id or an answer."""
    gpu = gpu or visible_gpu()
    if gpu is None or not shutil.which("nvidia-smi"):
        return None
    for reasons in sorted(REASON_FIELDS, key=lambda field: field != _answered[0]):  # known first
        try:
            query = f"--query-gpu={QUERY.format(reasons=reasons)}"
            out = subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits", "-i", gpu],
                                 capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode == 0 and out.stdout.strip():
            _answered[0] = reasons
            return parse(out.stdout.strip().splitlines()[0])
    return None


class Watch:
    """Samples the GPU from a background thread while its block runs: one sample at once, then one
    every `interval_s`. `summary()` gives what the timed steps ran at, where one sample after them
    may read a clock already recovering; the thread only waits on nvidia-smi, so the timed loop
    keeps the interpreter.

        with Watch(gpu) as watch:
            times = time_steps(...)
        row["gpu_during"] = watch.summary()
    """

    def __init__(self, gpu: str | None, interval_s: float = 1.0):
        self.gpu, self.interval_s = gpu, interval_s
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-watch", daemon=True)

    def _run(self) -> None:
        while True:
            state = sample(self.gpu)
            if state is None:  # no nvidia-smi or no answer: asking again will not help
                return
            self.samples.append(state)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        # a sample in flight (a slow nvidia-smi) is not waited for long: it lands after the summary
        self._thread.join(timeout=2.0)

    def summary(self) -> dict | None:
        return summarize(list(self.samples))


def summarize(samples: list[dict]) -> dict | None:
    """Samples as one state: the median SM clock beside the lowest, the highest temperature, the
    median power, every event reason seen (ORed) and every slowdown; None without samples."""
    if not samples:
        return None

    def values(key: str) -> list[float]:
        return [s[key] for s in samples if s.get(key) is not None]

    clocks, tops, temps, powers = (values(k) for k in ("sm_clock_mhz", "max_sm_clock_mhz", "temperature_c",
                                                       "power_w"))
    bits = 0
    for s in samples:
        try:
            bits |= int(s.get("event_reasons") or "", 16)
        except ValueError:
            pass
    return {
        "samples": len(samples),
        "sm_clock_mhz": statistics.median(clocks) if clocks else None,
        "min_sm_clock_mhz": min(clocks) if clocks else None,
        "max_sm_clock_mhz": max(tops) if tops else None,
        "temperature_c": max(temps) if temps else None,
        "power_w": statistics.median(powers) if powers else None,
        "event_reasons": hex(bits),
        "slowdowns": [name for name in SLOWDOWNS.values() if any(name in s["slowdowns"] for s in samples)],
    }


def parse(line: str) -> dict | None:
    """One nvidia-smi CSV line of QUERY (no header, no units)."""
    fields = [f.strip() for f in line.split(",")]
    if len(fields) != 5:
        return None
    sm, max_sm, temperature, power, reasons = fields
    try:
        bits = int(reasons, 16)
    except ValueError:
        bits = None
    return {
        "sm_clock_mhz": _number(sm),
        "max_sm_clock_mhz": _number(max_sm),
        "temperature_c": _number(temperature),
        "power_w": _number(power),
        "event_reasons": reasons,
        "slowdowns": [] if bits is None else [name for bit, name in SLOWDOWNS.items() if bits & bit],
    }
