"""seg.data.prep_folder stopped midway (Ctrl-C, SIGTERM, a killed process) and run into a folder holding
files it did not write: the manifest describes every `.pt` left, no worker outlives the run, and
a file that is not prep's own is named rather than trusted or silently replaced."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time

import pytest

from seg.data.prep import PrepConfig
from seg.data.prep_folder import _sigterm_as_interrupt, prepare_all
from seg.data.synth import write_cases
from segbench.cli import main

SHAPE = (24, 24, 16)


@pytest.fixture(scope="module")
def six_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("six")
    write_cases(root, 6, seed=5, shape=SHAPE)
    return root


def _running(procs) -> list[int]:
    """Pids still running (not gone, not a zombie). (multiprocessing may still list a worker the pool's
    own thread reaped: its join then cannot tell.)"""
    alive = []
    for proc in procs:
        try:
            state = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        if state != "Z":
            alive.append(proc.pid)
    return alive


def test_an_interrupted_pool_keeps_what_finished_and_leaves_no_worker_or_stray_file(
        six_cases, tmp_path, monkeypatch):
    import seg.data.store

    real_write = seg.data.store.write_json
    calls = []

    def interrupt_after_the_first_case(path, data, *a, **k):
        calls.append(path)
        if len(calls) == 1:  # Ctrl-C arrives while the first finished case is being recorded
            raise KeyboardInterrupt
        return real_write(path, data, *a, **k)

    monkeypatch.setattr(seg.data.store, "write_json", interrupt_after_the_first_case)
    out = tmp_path / "prep"
    with pytest.raises(KeyboardInterrupt):
        prepare_all(six_cases, out, PrepConfig(size=16), workers=2)
    assert not _running(multiprocessing.active_children())  # the workers were stopped, not left to finish
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {e["file"] for e in manifest["cases"] if e["status"] == "ok"}
    on_disk = {p.name for p in out.glob("*.pt")}
    assert listed == on_disk and len(listed) >= 1  # the finished case kept, no .pt the manifest lacks
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    monkeypatch.undo()
    again = prepare_all(six_cases, out, PrepConfig(size=16), workers=2)  # a re-run finishes the rest
    assert sum(e.get("skipped", False) for e in again["cases"]) == len(listed)
    assert {e["status"] for e in again["cases"]} == {"ok"} and len(again["cases"]) == 6


def test_sigterm_stops_prep_as_ctrl_c_does():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), _sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # (the handler runs in the main thread, at the latest when the sleep is interrupted)
    assert signal.getsignal(signal.SIGTERM) is before


def test_temporary_files_of_a_killed_prep_are_removed_and_a_live_writer_s_kept(six_cases, tmp_path):
    out = tmp_path / "prep"
    out.mkdir()
    dead = out / ".BraTS2021_00001.pt.4194305.0123abcd.tmp"  # above Linux's pid_max: no such process
    live = out / f".BraTS2021_00002.pt.{os.getpid()}.0123abcd.tmp"
    dead.write_bytes(b"half a case")
    live.write_bytes(b"being written")
    prepare_all(six_cases, out, PrepConfig(size=16))
    assert not dead.exists() and live.exists()


@pytest.mark.parametrize("content", ['{"cases": [', "[]", '{"cases": {}}'])
def test_a_manifest_prep_did_not_write_is_named_not_trusted(six_cases, tmp_path, capsys, content):
    out = tmp_path / "prep"
    out.mkdir()
    (out / "manifest.json").write_text(content)
    assert main(["data", "prep", "--src", str(six_cases), "--out", str(out), "--size", "16"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'manifest.json'}: not a segbench prep manifest" in err and "Traceback" not in err
    assert not list(out.glob("*.pt"))


@pytest.mark.parametrize("content", ['{"seed": 1, "train": [', '{"train": []}'])
def test_a_damaged_splits_file_is_named_not_replaced(six_cases, tmp_path, capsys, content):
    out = tmp_path / "prep"
    assert main(["data", "prep", "--src", str(six_cases), "--out", str(out), "--size", "16"]) == 0
    (out / "splits.json").write_text(content)
    capsys.readouterr()
    assert main(["data", "prep", "--src", str(six_cases), "--out", str(out), "--size", "16"]) == 2
    assert f"{out / 'splits.json'}:" in capsys.readouterr().err
    assert (out / "splits.json").read_text() == content  # new splits would move cases into training


def test_convert_names_a_missing_case_file_and_converts_the_others(six_cases, tmp_path, capsys):
    from seg.data.formats import convert

    src = tmp_path / "prep"
    prepare_all(six_cases, src, PrepConfig(size=16))
    (src / "BraTS2021_00003.pt").unlink()
    convert(src, tmp_path / "compact", "compact", progress=False)
    assert "BraTS2021_00003" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "compact" / "manifest.json").read_text())
    assert [e["status"] for e in manifest["cases"]].count("ok") == 5
