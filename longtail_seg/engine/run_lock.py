"""One writer per run directory: an exclusive ``flock`` on OUT_DIR/.lock, held while a training process writes there.

The operating system releases the lock when its holder ends in any way (SIGKILL, out of memory, a lost node), so a
lock is never stale and needs no cleanup. A second writer (a second Snakemake started beside the first, a run by
hand) fails at once, naming the holder, instead of both writing one checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".lock"


class RunDirectoryLocked(RuntimeError):
    """Another process holds the run directory's lock; the message names it and the fix."""


@contextlib.contextmanager
def run_directory_lock(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold OUT_DIR/.lock for the block; raise ``RunDirectoryLocked`` at once if another process holds it."""
    path = Path(out_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirectoryLocked(_locked_message(Path(out_dir), _read_holder(fd))) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _read_holder(fd: int) -> str:
    """The holder's line (pid, host, start time), or a placeholder when it has not written it yet."""
    text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    return text or "a process that is starting"


def _locked_message(out_dir: Path, holder: str) -> str:
    return (
        f"{out_dir} is being written by another training process ({holder}). Two writers would overwrite each "
        "other's checkpoints. Wait for it to finish or stop it (kill the PID above); a second `snakemake` in the "
        "same folder starts such a process, so run one Snakemake per results folder (Snakemake's own lock can be "
        "removed by another run that has nothing to do)."
    )
