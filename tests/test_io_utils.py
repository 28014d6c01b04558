"""Atomic writes: a failing writer leaves neither the target nor a temporary file behind. Reading back: a truncated
JSON or torch file names the file, the position and the fix."""

from __future__ import annotations

import json
import os
import stat

import pytest

from longtail_seg.io_utils import CorruptFileError, atomic_path, atomic_write_json, load_json_file, load_torch_file


def test_atomic_write_json_creates_readable_file(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()


def test_failure_inside_block_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_file_survives_a_failed_rewrite(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("complete")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert target.read_text() == "complete"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_truncated_json_file_names_the_file_position_and_fix(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text('{"a": [1, 2')
    with pytest.raises(CorruptFileError) as error:
        load_json_file(path, "summary file", "delete it and rerun")
    assert str(error.value) == (f"{path}: this summary file is not valid JSON at line 1, column 12 (char 11 of 11 "
                                "bytes): Expecting ',' delimiter; the file is truncated or was not written by this "
                                "workflow; delete it and rerun")
    assert isinstance(error.value, ValueError)  # callers that catch ValueError keep working


def test_a_truncated_torch_file_names_the_file_and_fix(tmp_path):
    import torch

    path = tmp_path / "state.pth"
    torch.save({"weights": torch.zeros(64)}, path)
    assert load_torch_file(path, "state file", "rerun")["weights"].shape == (64,)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match=r"cannot read this state file \(100 bytes; RuntimeError: .*; rerun$"):
        load_torch_file(path, "state file", "rerun")
    with pytest.raises(FileNotFoundError):  # a missing file is the caller's message, not "corrupt"
        load_torch_file(tmp_path / "missing.pth", "state file", "rerun")
