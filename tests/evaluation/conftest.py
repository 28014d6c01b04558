"""The hand-made LVIS ground truth as a fixture."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evaluation.hand_lvis import write_hand_gt


@pytest.fixture
def hand_gt(tmp_path: Path) -> Path:
    """3 images of 64x64, categories 1 (r), 2 (c), 3 and 4 (f), 20x20 objects; written to ``tmp_path``/gt.json."""
    return write_hand_gt(tmp_path)
