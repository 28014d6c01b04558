"""workflow_scripts/train.py end to end on the tiny hand-made LVIS fixture."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from longtail_seg.models.detector import load_detector
from tests.engine.fake_data import TEST_MODEL_CFG

REPO_ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("train_script", REPO_ROOT / "workflow_scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_trains_with_repeat_factors(small_lvis, tmp_path: Path) -> None:
    annotations, image_root = small_lvis
    factors = tmp_path / "image_repeat_factors.csv"
    factors.write_text("image_id,repeat_factor\n1,1.0\n2,2.0\n3,1.0\n")
    train_cfg = {"batch_size": 2, "epochs": 2, "min_size_range": [32, 40], "max_size": 64, "num_workers": 0,
                 "log_period": 1, "checkpoint_period": 2, "progress_bar": False, "warmup_iters": 1}
    script = _script()
    out_dir = tmp_path / "out"
    args = script.parse_args([
        "--train-annotations", str(annotations), "--image-root", str(image_root), "--repeat-factors", str(factors),
        "--model-cfg", json.dumps(TEST_MODEL_CFG), "--train-cfg", json.dumps(train_cfg), "--out-dir", str(out_dir),
        "--device", "cpu", "--threads", "1",
    ])
    script.main(args)
    model, meta = load_detector(out_dir / "model_final.pth")
    assert meta["category_ids"] == [1, 2, 3] and meta["num_classes"] == 3
    assert meta["model_cfg"]["fpn_channels"] == TEST_MODEL_CFG["fpn_channels"]
    metrics = pd.read_csv(out_dir / "metrics.csv")
    # 4 sampled images per epoch (factors 1 + 2 + 1) -> 2 batches of 2, over 2 epochs
    assert list(metrics["iteration"]) == [1, 2, 3, 4]
    assert meta["iteration"] == 4


def test_script_rejects_bad_json_and_missing_repeat_factors(small_lvis, tmp_path: Path) -> None:
    annotations, image_root = small_lvis
    script = _script()
    base = ["--train-annotations", str(annotations), "--image-root", str(image_root), "--out-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="--train-cfg"):
        script.main(script.parse_args(base + ["--train-cfg", "{epochs: 1"]))
    with pytest.raises(SystemExit, match="--repeat-factors"):
        script.main(script.parse_args(base + ["--train-cfg", '{"sampler": "repeat_factor"}']))
