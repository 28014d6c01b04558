"""Atomic writes: a failing writer leaves neither the target nor a temporary file behind."""

from __future__ import annotations

import json
import os
import stat

import pytest

from longtail_seg.io_utils import atomic_path, atomic_write_json


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
