"""The note on a folder's Snakemake locks: none, held by a running Snakemake (named by PID), or stale."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from longtail_seg.snakemake_locks import LOCK_DIR, running_snakemake_pids, snakemake_lock_note


def _lock(workdir: Path) -> None:
    (workdir / LOCK_DIR).mkdir(parents=True)
    (workdir / LOCK_DIR / "0.output.lock").write_text("results/x\n")


def test_no_lock_no_note(tmp_path: Path) -> None:
    assert snakemake_lock_note(tmp_path) is None
    (tmp_path / LOCK_DIR).mkdir(parents=True)  # an empty lock folder holds no lock
    assert snakemake_lock_note(tmp_path) is None


def test_a_lock_without_a_running_snakemake_is_called_stale(tmp_path: Path) -> None:
    _lock(tmp_path)
    note = snakemake_lock_note(tmp_path)
    assert note.startswith("note: stale Snakemake lock") and "--unlock" in note and str(tmp_path) in note


def test_a_lock_of_a_running_snakemake_names_its_pid(tmp_path: Path) -> None:
    _lock(tmp_path)
    fake = tmp_path / "bin" / "snakemake"  # a process whose command is a `snakemake`, running in the folder
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nsleep 30\n")
    fake.chmod(0o755)
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    here = subprocess.Popen([str(fake)], cwd=tmp_path)
    there = subprocess.Popen([str(fake)], cwd=elsewhere)  # another folder's run is not this folder's
    try:
        deadline = time.time() + 10
        while here.pid not in running_snakemake_pids(tmp_path, own_pid=0) and time.time() < deadline:
            time.sleep(0.05)
        assert running_snakemake_pids(tmp_path, own_pid=0) == [here.pid]
        note = snakemake_lock_note(tmp_path)
        assert f"process(es) [{here.pid}]" in note and "wait for them" in note
        assert running_snakemake_pids(tmp_path, own_pid=here.pid) == []  # a run is not its own other run
    finally:
        for process in (here, there):
            process.kill()
            process.wait()
