"""What a run's files say, read without torch: a row cut by the time budget, a busy host, the machine a
run measured on, cuDNN's version. `bench` writes these fields and imports the readers from here, so
`reports` imports nothing from `bench` (DESIGN: a report is rebuilt from a run folder alone).
"""

from __future__ import annotations

BUDGET_CUT = "the suite's time budget"  # in the error of a row the budget cut (not run, or stopped)
BUSY_FRACTION = 0.2  # other processes' share of the host's CPU above which a case's timings may be inflated


def cut_by_budget(row: dict) -> bool:
    """Whether the run's time budget, not the case, ended this row: `--resume` runs it again, a
    compare gives it no verdict."""
    error = str(row.get("error") or "")
    return error.startswith(("not run:", "timeout:")) and BUDGET_CUT in error


def machine(env: dict) -> str:
    """What a run's timings depend on beyond the code: the GPU (or the CPU, its core count and the
    threads torch used: one thread instead of two changes a CPU step several-fold) and the torch
    version; a run resumed elsewhere (older runs: the runner now refuses it) names each."""
    torch_version = (env.get("versions") or {}).get("torch", "?")
    sessions = [env.get("calibration") or {}] + [r.get("calibration") or {} for r in env.get("resumed", [])]
    cpu = f"{env.get('cpu', '?')} × {env.get('cpu_count', '?')}"

    def where(cal: dict) -> str:
        threads = cal.get("torch_threads")
        return cal.get("gpu") or (f"{cpu}, {threads} torch threads" if threads else cpu)

    return f"{' + '.join(dict.fromkeys(where(cal) for cal in sessions))}, torch {torch_version}"


def cudnn_text(version) -> str:
    """torch.backends.cudnn.version()'s number as cuDNN writes it: 91900 → 9.19.0, 8902 → 8.9.2."""
    if not isinstance(version, int):
        return str(version)
    major, rest = divmod(version, 10000 if version >= 90000 else 1000)
    return f"{major}.{rest // 100}.{rest % 100}"
