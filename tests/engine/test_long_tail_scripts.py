"""The training scripts with a federated classifier: train.py (representation learning, --category-stats) and
retrain.py (--stats-dir) fill its image counts from category_stats.csv into the checkpoint's model config; without
the statistics train.py stops naming the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longtail_seg.models.detector import load_detector
from tests.conftest import load_workflow_script
from tests.engine.fake_data import TEST_MODEL_CFG
from tests.engine.test_retrain import _run_retrain_script

TRAIN_CFG = {"batch_size": 2, "epochs": 1, "max_iterations": 1, "min_size_range": [32, 40], "max_size": 64,
             "num_workers": 0, "log_period": 1, "checkpoint_period": 1, "progress_bar": False, "warmup_iters": 1}
STATS = ("category_id,name,frequency,image_count,instance_count,repeat_factor,bgs_group\n"
         "3,cat3,r,1,1,1.0,1\n1,cat1,f,2,3,1.0,1\n2,cat2,r,0,0,1.4,1\n")


def _train_args(small_lvis, tmp_path: Path, *extra: str):
    annotations, image_root = small_lvis
    factors = tmp_path / "image_repeat_factors.csv"
    factors.write_text("image_id,repeat_factor\n1,1.0\n2,2.0\n3,1.0\n")
    model_cfg = dict(TEST_MODEL_CFG, classifier={"type": "federated", "num_sampled_classes": 2})
    return load_workflow_script("train").parse_args([
        "--train-annotations", str(annotations), "--image-root", str(image_root), "--repeat-factors", str(factors),
        "--model-cfg", json.dumps(model_cfg), "--train-cfg", json.dumps(TRAIN_CFG),
        "--out-dir", str(tmp_path / "out"), "--device", "cpu", "--threads", "1", *extra,
    ])


def test_train_script_fills_federated_image_counts(small_lvis, tmp_path: Path):
    stats = tmp_path / "category_stats.csv"
    stats.write_text(STATS)
    load_workflow_script("train").main(_train_args(small_lvis, tmp_path, "--category-stats", str(stats)))
    model, meta = load_detector(tmp_path / "out" / "model_final.pth")
    assert meta["model_cfg"]["classifier"] == {"type": "federated", "num_sampled_classes": 2, "image_counts": [2, 0, 1]}
    assert model.roi_heads.classifiers()[0].sample_weights.tolist() == pytest.approx([2**0.5, 0.0, 1.0])


def test_train_script_without_statistics_names_the_fix(small_lvis, tmp_path: Path):
    with pytest.raises(SystemExit, match="model.classifier: a federated classifier without image_counts needs "
                                         "category_stats.csv"):
        load_workflow_script("train").main(_train_args(small_lvis, tmp_path))


def test_retrain_script_fills_federated_image_counts(small_lvis, tmp_path: Path):
    out = _run_retrain_script(small_lvis, tmp_path, {"type": "federated"}, max_iterations=1)
    _, meta = load_detector(out / "model_final.pth")
    assert meta["model_cfg"]["classifier"] == {"type": "federated", "image_counts": [2, 1, 0]}
