"""Atomic file writes: every output is written to a temporary name and renamed when complete. Reading back: a
truncated or corrupt JSON or torch file fails naming the file, where it breaks and the fix."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    An interrupted or failing writer leaves no partial file behind, so Snakemake never sees a
    half-written output as complete.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600 files; give outputs the usual permissions
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    """Serialise ``obj`` as JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes: which version of an input a checkpoint or a data check report is about."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --- reading back -------------------------------------------------------------------------------------------------


class CorruptFileError(ValueError):
    """A file exists but is not readable as what it should be (truncated, corrupt or another format); the message
    names the file, what it should be, where it breaks and the fix."""


def load_json_file(path: str | os.PathLike, what: str, fix: str) -> Any:
    """``json.load`` of ``path``; a truncated or non-JSON file raises ``CorruptFileError`` naming the file, ``what`` it
    should be (e.g. "predictions file"), the line and column, and ``fix`` (e.g. "delete it and rerun ...")."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise CorruptFileError(
            f"{path}: this {what} is not valid JSON at line {error.lineno}, column {error.colno} (char "
            f"{error.pos} of {os.path.getsize(path)} bytes): {error.msg}; the file is truncated or was not written by "
            f"this workflow; {fix}"
        ) from error
    except UnicodeDecodeError as error:
        raise CorruptFileError(
            f"{path}: this {what} is not JSON text (byte {error.start} is not UTF-8); the file is corrupt or "
            f"another format; {fix}"
        ) from error


def load_torch_file(path: str | os.PathLike, what: str, fix: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=False)``; a truncated or corrupt file raises ``CorruptFileError`` naming the
    file, ``what`` it should be (e.g. "detector checkpoint"), its size, torch's own words and ``fix``. A missing or
    unreadable file raises as ``open`` does. Torch is imported here only: this module stays torch-free."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        cause = (str(error).strip().splitlines() or [""])[0].split(". ")[0][:200]
        raise CorruptFileError(
            f"{path}: cannot read this {what} ({os.path.getsize(path)} bytes; {type(error).__name__}: {cause}); "
            f"the file is truncated or corrupt (e.g. a copy or a job cut short); {fix}"
        ) from error
