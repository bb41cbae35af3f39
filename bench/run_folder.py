"""What a run may do with its --out folder: never write into a source tree; replace an earlier run
(only one a segbench run wrote) when not resuming it."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from bench.case import REFERENCE_GLOB
from bench.config import BenchError

MAX_STEM = 120  # file names stay far under the usual 255-byte limit, with suffixes added


def file_stem(name: str) -> str:
    """`name` as one file name: '/' and ':' replaced; a long one (a variant of many inductor options)
    cut and given a hash of the whole, so two long names stay apart."""
    stem = name.replace("/", "_").replace(":", "_")
    if len(stem) <= MAX_STEM:
        return stem
    return f"{stem[:MAX_STEM - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


SOURCE_TREE_MARKERS = ("pyproject.toml", "setup.py", ".git")


def refuse_source_tree(out: Path) -> None:
    """A run writes cases/, cache/, data/, figures/ and profiles/ into its folder and replaces them on
    the next run: a run into segbench's own root would write into (and then replace) its profiles
    package. Refused before anything is written."""
    marker = next((name for name in SOURCE_TREE_MARKERS if (out / name).exists()), None)
    if marker is not None:
        raise BenchError(f"--out {out} is a source tree (it holds {marker}); a run folder of its own, "
                         f"e.g. runs/<name>, keeps the run's cases/, data/ and profiles/ apart from it")


def check_out(out: Path, resume: bool) -> None:
    """Refuse, before anything is written, an --out that is a source tree or that holds rows no
    segbench run wrote (not replaced: a new run into a run folder replaces the earlier run)."""
    refuse_source_tree(out)
    if resume or not (out / "results.jsonl").is_file():
        return
    try:
        suite = json.loads((out / "env.json").read_text()).get("suite")
    except (OSError, ValueError, AttributeError):
        suite = None
    if not suite:
        raise BenchError(f"{out} holds a results.jsonl but no env.json of a segbench run: not replacing "
                         "what another tool wrote; choose another --out")


def clear_old_run(out: Path) -> None:
    """A new run into a folder holding another: everything of the old run goes (rows, reports, traces,
    case logs, reference trajectories, figures), so none of it sits beside the new rows; the
    synthesized data stays (prepare_data remakes it when the spec differs). `check_out` vetted it."""
    rows = sum(1 for line in (out / "results.jsonl").read_text().splitlines() if line.strip())
    print(f"{out} holds a run of {rows} rows: replacing it (--resume finishes it instead)", file=sys.stderr)
    for name in ("results.jsonl", "env.json", "report.md", "report.html", "compare.md", "compare.html"):
        (out / name).unlink(missing_ok=True)
    for name in ("profiles", "figures"):
        shutil.rmtree(out / name, ignore_errors=True)
    for path in (out / "cases").glob("*"):  # not the new run's calibration, made before this
        if path.is_dir():
            shutil.rmtree(path)
        elif not path.name.startswith("calibrate."):
            path.unlink()
    for path in (out / "cache").glob(REFERENCE_GLOB):
        path.unlink()
