"""workflow_scripts/train.py end to end on the tiny hand-made LVIS fixture."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from longtail_seg.models.detector import load_detector
from tests.conftest import load_workflow_script
from tests.engine.fake_data import TEST_MODEL_CFG


def _script():
    return load_workflow_script("train")


TRAIN_CFG = {"batch_size": 2, "epochs": 2, "min_size_range": [32, 40], "max_size": 64, "num_workers": 0,
             "log_period": 1, "checkpoint_period": 2, "progress_bar": False, "warmup_iters": 1}


def _run_script(annotations: Path, image_root: Path, factors: Path, out_dir: Path, **overrides) -> None:
    script = _script()
    args = script.parse_args([
        "--train-annotations", str(annotations), "--image-root", str(image_root), "--repeat-factors", str(factors),
        "--model-cfg", json.dumps(TEST_MODEL_CFG), "--train-cfg", json.dumps({**TRAIN_CFG, **overrides}),
        "--out-dir", str(out_dir), "--device", "cpu", "--threads", "1",
    ])
    script.main(args)


def _write_factors(tmp_path: Path) -> Path:
    factors = tmp_path / "image_repeat_factors.csv"
    factors.write_text("image_id,repeat_factor\n1,1.0\n2,2.0\n3,1.0\n")
    return factors


def test_script_trains_with_repeat_factors(small_lvis, tmp_path: Path) -> None:
    annotations, image_root = small_lvis
    out_dir = tmp_path / "out"
    _run_script(annotations, image_root, _write_factors(tmp_path), out_dir)
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


def test_same_seed_gives_identical_weights_and_another_seed_does_not(small_lvis, tmp_path: Path) -> None:
    annotations, image_root = small_lvis
    factors = _write_factors(tmp_path)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        _run_script(annotations, image_root, factors, tmp_path / name, seed=seed, num_workers=1)
    weights = {name: load_detector(tmp_path / name / "model_final.pth")[0].state_dict() for name in "abc"}
    for key, value in weights["a"].items():
        assert torch.equal(value, weights["b"][key]), f"{key} differs between two runs with the same seed"
    assert any(not torch.equal(value, weights["c"][key]) for key, value in weights["a"].items())


def test_script_trains_on_balanced_mosaics_with_masks(small_lvis, tmp_path: Path, monkeypatch, capsys) -> None:
    """train.mosaic: the loop gets a BalancedMosaic (masks included, partners from the repeat factors) and
    training runs through it to model_final.pth."""
    from longtail_seg.augment.mosaic import BalancedMosaic

    annotations, image_root = small_lvis
    script = _script()
    seen = {}
    real = script.train

    def spy(model, dataset, sampler, *args, **kwargs):
        seen["dataset"] = dataset
        return real(model, dataset, sampler, *args, **kwargs)

    monkeypatch.setattr(script, "train", spy)
    monkeypatch.setattr("tests.engine.test_train_script._script", lambda: script)
    args = script.parse_args([
        "--train-annotations", str(annotations), "--image-root", str(image_root),
        "--repeat-factors", str(_write_factors(tmp_path)), "--model-cfg", json.dumps(TEST_MODEL_CFG),
        "--train-cfg", json.dumps({**TRAIN_CFG, "mosaic": True, "epochs": 1}),
        "--mosaic-cfg", json.dumps({"output_size": 64, "scale_range": [1, 1], "center_range": [1, 1]}),
        "--out-dir", str(tmp_path / "out"), "--device", "cpu", "--threads", "1",
    ])
    script.main(args)
    assert "mosaic on" in capsys.readouterr().out
    mosaic = seen["dataset"]
    assert isinstance(mosaic, BalancedMosaic)
    assert mosaic.sampling_prob.tolist() == pytest.approx([0.25, 0.5, 0.25])
    image, target = mosaic[0]
    assert image.shape == (3, 64, 64) and target["masks"].shape == (len(target["labels"]), 64, 64)
    assert load_detector(tmp_path / "out" / "model_final.pth")[1]["iteration"] >= 1


def test_unknown_mosaic_key_fails_with_its_name(small_lvis, tmp_path: Path) -> None:
    annotations, image_root = small_lvis
    script = _script()
    args = script.parse_args([
        "--train-annotations", str(annotations), "--image-root", str(image_root),
        "--repeat-factors", str(_write_factors(tmp_path)), "--train-cfg", json.dumps({**TRAIN_CFG, "mosaic": True}),
        "--mosaic-cfg", '{"tile_size": 3}', "--out-dir", str(tmp_path / "out"),
    ])
    with pytest.raises(SystemExit, match="tile_size"):
        script.main(args)
