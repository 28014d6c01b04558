"""NorCal post-hoc calibration: hand-worked scores, a class never seen, equivalence with shifting softmax logits by
-gamma log N, the classifier wrapper on a detector, the test config key and the annotation-file entry point."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from longtail_seg.inference.config import TestConfig
from longtail_seg.inference.norcal import NorCalClassifier, apply_norcal, norcal_scores
from longtail_seg.inference.run import predict_annotation_file
from longtail_seg.models.detector import build_detector, save_checkpoint
from tests.conftest import load_workflow_script
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, collate


def test_hand_worked_calibration():
    # a = [100 ** 0.5, 1 ** 0.5] = [10, 1]: [0.2, 0.5 / 10, 0.3] = [0.2, 0.05, 0.3], / 0.55
    calibrated = norcal_scores(torch.tensor([[0.2, 0.5, 0.3]]), torch.tensor([100.0, 1.0]), 0.5)
    assert calibrated[0].tolist() == pytest.approx([0.2 / 0.55, 0.05 / 0.55, 0.3 / 0.55], rel=1e-6)


def test_a_class_never_seen_counts_as_one_and_gamma_zero_changes_nothing():
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.0, 0.0]])  # the second row: nothing at all
    calibrated = norcal_scores(probs, torch.tensor([0.0, 4.0]), 1.0)  # a = [1, 4]
    denominator = 0.5 + 0.25 + 0.0625
    assert calibrated[0].tolist() == pytest.approx([0.5 / denominator, 0.25 / denominator, 0.0625 / denominator])
    assert calibrated[1].tolist() == [0.0, 0.0, 0.0]
    assert torch.allclose(norcal_scores(probs[:1], torch.tensor([0.0, 4.0]), 0.0), probs[:1])
    assert norcal_scores(torch.zeros(0, 3), torch.tensor([1.0, 2.0]), 1.0).shape == (0, 3)
    with pytest.raises(ValueError, match="2 foreground classes but 3 instance counts"):
        norcal_scores(probs, torch.tensor([1.0, 2.0, 3.0]), 1.0)


def test_softmax_calibration_equals_shifting_the_foreground_logits():
    torch.manual_seed(0)
    logits, counts, gamma = torch.randn(4, 5, dtype=torch.float64), torch.tensor([1.0, 10.0, 300.0, 7.0]), 0.7
    shifted = logits.clone()
    shifted[:, 1:] -= gamma * counts.log()
    assert torch.allclose(norcal_scores(logits.softmax(dim=1), counts, gamma), shifted.softmax(dim=1))


def test_the_wrapper_calibrates_scores_only_and_the_detector_still_runs():
    torch.manual_seed(0)
    model = build_detector(TEST_MODEL_CFG, num_classes=3)
    original = model.roi_heads.classifiers()[0]
    features = torch.randn(5, TEST_MODEL_CFG.get("box_head_dim", 256))
    apply_norcal(model, [30, 3, 0], 1.0)
    wrapped = model.roi_heads.classifiers()[0]
    assert isinstance(wrapped, NorCalClassifier) and wrapped.classifier is original
    logits = wrapped(features)
    assert torch.equal(logits, original(features))
    labels = torch.tensor([0, 1, 2, 3, 0])
    assert torch.equal(wrapped.loss(logits, labels), original.loss(logits, labels))
    expected = norcal_scores(original.scores(logits), torch.tensor([30.0, 3.0, 0.0]), 1.0)
    assert torch.allclose(wrapped.scores(logits), expected)
    images, _ = collate([FakeDetectionDataset(num_images=1)[0]])
    with torch.no_grad():
        out = model.eval()(images)[0]
    assert torch.all((out["scores"] >= 0) & (out["scores"] <= 1))
    with pytest.raises(ValueError, match="2 instance counts for a model with 3 classes"):
        apply_norcal(model, [1, 2], 1.0)


def test_the_test_config_key():
    assert "norcal_gamma" not in TestConfig.from_dict({}).used_settings()  # off: not a setting of the job
    assert TestConfig.from_dict({"norcal_gamma": 0.5}).used_settings()["norcal_gamma"] == 0.5
    with pytest.raises(ValueError, match="norcal_gamma must be a number >= 0"):
        TestConfig.from_dict({"norcal_gamma": -1})
    with pytest.raises(ValueError, match="norcal_gamma"):
        TestConfig.from_dict({"norcal_gamma": "high"})


def test_annotation_file_entry_calibrates_with_the_statistics(small_lvis, tmp_path):
    annotations, image_root = small_lvis
    torch.manual_seed(3)
    model = build_detector(TEST_MODEL_CFG, num_classes=3)
    checkpoint = tmp_path / "model.pth"
    save_checkpoint(checkpoint, model, model.model_cfg, [1, 2, 3])
    stats = tmp_path / "category_stats.csv"
    pd.DataFrame({"category_id": [1, 2, 3], "image_count": [2, 1, 0], "instance_count": [1, 0, 1000]}).to_csv(stats)
    settings = {"min_size": 32, "max_size": 64, "max_dets": 20}
    plain, _, _ = predict_annotation_file(checkpoint, annotations, image_root, TestConfig.from_dict(settings))
    same, _, _ = predict_annotation_file(checkpoint, annotations, image_root,
                                         TestConfig.from_dict(dict(settings, norcal_gamma=0.0)), category_stats=stats)
    assert [r["category_id"] for r in same] == [r["category_id"] for r in plain]
    assert [r["score"] for r in same] == pytest.approx([r["score"] for r in plain], rel=1e-5)
    calibrated, _, _ = predict_annotation_file(checkpoint, annotations, image_root,
                                               TestConfig.from_dict(dict(settings, norcal_gamma=1.0)),
                                               category_stats=stats)
    assert calibrated and all(0 <= r["score"] <= 1 for r in calibrated)
    # class 3 (1000 instances): p'_3 = (p_3 / 1000) / (1 - p_3 + p_3 / 1000) < p_3 / 100 whenever p_3 < 0.9
    best = lambda results: max((r["score"] for r in results if r["category_id"] == 3), default=0.0)  # noqa: E731
    assert 0.0 < best(plain) < 0.9 and best(calibrated) < best(plain) / 100
    with pytest.raises(ValueError, match="norcal_gamma needs the training instance counts"):
        predict_annotation_file(checkpoint, annotations, image_root, TestConfig.from_dict(dict(settings,
                                                                                             norcal_gamma=1.0)))


def test_the_multi_scale_path_is_calibrated_too(small_lvis, tmp_path):
    annotations, image_root = small_lvis
    torch.manual_seed(3)
    model = build_detector(TEST_MODEL_CFG, num_classes=3)
    checkpoint = tmp_path / "model.pth"
    save_checkpoint(checkpoint, model, model.model_cfg, [1, 2, 3])
    stats = tmp_path / "category_stats.csv"
    pd.DataFrame({"category_id": [1, 2, 3], "image_count": [1, 1, 1], "instance_count": [1, 1, 1000]}).to_csv(stats)
    settings = {"min_size": 32, "max_size": 64, "max_dets": 20, "scales": [32, 48], "flip": True}
    plain, _, _ = predict_annotation_file(checkpoint, annotations, image_root, TestConfig.from_dict(settings))
    calibrated, _, _ = predict_annotation_file(checkpoint, annotations, image_root,
                                               TestConfig.from_dict(dict(settings, norcal_gamma=1.0)),
                                               category_stats=stats)
    best = lambda results: max((r["score"] for r in results if r["category_id"] == 3), default=0.0)  # noqa: E731
    assert 0.0 < best(plain) < 0.9 and best(calibrated) < best(plain) / 100


def test_infer_script_takes_the_statistics_option_with_or_without_a_file():
    script = load_workflow_script("infer")
    base = ["--checkpoint", "m.pth", "--annotations", "val.json", "--image-root", "images"]
    assert script.parse_args([*base, "--category-stats", "--out", "p.json"]).category_stats is None
    assert script.parse_args([*base, "--category-stats", "s.csv", "--out", "p.json"]).category_stats == "s.csv"
    with pytest.raises(SystemExit, match="norcal_gamma needs --category-stats"):
        script.main(script.parse_args([*base, "--test-cfg", '{"norcal_gamma": 0.5}', "--category-stats",
                                       "--out", "p.json"]))
