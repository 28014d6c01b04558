"""Say whose Snakemake lock a folder holds, before Snakemake refuses to run with "Directory cannot be locked".

Snakemake's lock names no process, so a user cannot tell a live run (wait for it) from the leftover of a killed one
(`snakemake --unlock`). Also, a second Snakemake with nothing to do removes every lock when it exits, the running
one's included; training's own lock (``engine/run_lock.py``) keeps two writers out of one run directory regardless.
"""

from __future__ import annotations

import os
from pathlib import Path

LOCK_DIR = Path(".snakemake") / "locks"


def snakemake_lock_note(workdir: str | os.PathLike, own_pid: int | None = None) -> str | None:
    """A note on the Snakemake locks in ``workdir``: held by a running Snakemake (its PIDs), or stale; None when
    there are none."""
    lock_dir = Path(workdir) / LOCK_DIR
    if not any(lock_dir.glob("*.lock")):
        return None
    running = running_snakemake_pids(workdir, own_pid if own_pid is not None else os.getpid())
    if running:
        return (f"note: {lock_dir} holds the lock of Snakemake process(es) {running} running in this folder; if this "
                "run needs the same files it stops with 'Directory cannot be locked': wait for them to finish")
    return (f"note: stale Snakemake lock in {lock_dir}: no Snakemake process runs in {Path(workdir).resolve()} (a "
            "killed or crashed run left it); if this run stops with 'Directory cannot be locked', run the same "
            "command once with --unlock added, then again without it")


def running_snakemake_pids(workdir: str | os.PathLike, own_pid: int) -> list[int]:
    """PIDs of other Snakemake processes whose working directory is ``workdir`` (Linux /proc; [] elsewhere)."""
    target = Path(workdir).resolve()
    excluded = _ancestors(own_pid)
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        if pid in excluded:
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")[:3]
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:  # gone meanwhile, or another user's process
            continue
        if cwd == target and any(Path(arg.decode(errors="replace")).name == "snakemake" for arg in argv):
            pids.append(pid)
    return sorted(pids)


def _ancestors(pid: int) -> set[int]:
    """``pid`` and its parents (a shell or wrapper that started this Snakemake is not another run)."""
    chain = set()
    while pid > 1 and pid not in chain:
        chain.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return chain
