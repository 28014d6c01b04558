"""Double classifier: branch logits, averaged scores, summed losses, config building, use inside the detector."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from longtail_seg.models.classifiers import SoftmaxClassifier, build_classifier
from longtail_seg.models.detector import build_detector, load_detector, save_checkpoint
from longtail_seg.models.double_classifier import DoubleClassifier
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, collate

REPO_ROOT = Path(__file__).resolve().parents[2]
DOUBLE_CFG = {"type": "double", "branches": [{"type": "softmax"}, {"type": "softmax"}]}


def _two_branches(in_features: int = 16, num_classes: int = 5) -> DoubleClassifier:
    torch.manual_seed(0)
    return DoubleClassifier([SoftmaxClassifier(in_features, num_classes), SoftmaxClassifier(in_features, num_classes)])


def test_scores_are_exactly_the_mean_of_the_branch_probabilities() -> None:
    double = _two_branches()
    features = torch.randn(50, 16)
    first, second = double.branches
    expected = (F.softmax(first.cls_score(features), -1) + F.softmax(second.cls_score(features), -1)) / 2
    scores = double.scores(double(features))
    assert torch.equal(scores, expected)
    assert torch.allclose(scores.sum(-1), torch.ones(50))
    # the branches really differ, so the mean is not one branch's scores
    assert not torch.allclose(scores, F.softmax(first.cls_score(features), -1))


def test_forward_returns_branch_logits_and_loss_sums_branch_losses() -> None:
    double = _two_branches()
    features, labels = torch.randn(20, 16), torch.randint(0, 6, (20,))
    logits = double(features)
    assert isinstance(logits, tuple) and len(logits) == 2 and logits[0].shape == (20, 6)
    expected = F.cross_entropy(logits[0], labels) + F.cross_entropy(logits[1], labels)
    assert torch.allclose(double.loss(logits, labels), expected)
    with pytest.raises(ValueError, match="2 branch logits"):
        double.scores(logits[0])


def test_built_from_config_and_rejects_bad_configs() -> None:
    double = build_classifier(DOUBLE_CFG, in_features=8, num_classes=3)
    assert isinstance(double, DoubleClassifier) and len(double.branches) == 2
    assert all(branch.cls_score.out_features == 4 for branch in double.branches)
    with pytest.raises(ValueError, match="branches"):
        build_classifier({"type": "double", "branches": [{"type": "softmax"}]}, 8, 3)
    with pytest.raises(ValueError, match="brnaches"):
        build_classifier({"type": "double", "brnaches": []}, 8, 3)


def test_registry_finds_double_without_importing_its_module() -> None:
    """load_detector rebuilds a double classifier from model_cfg in a process that never imported the module."""
    code = ("from longtail_seg.models.classifiers import build_classifier; "
            f"print(type(build_classifier({DOUBLE_CFG!r}, 8, 3)).__name__)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "DoubleClassifier"


def test_detector_with_double_classifier_predicts_and_round_trips(tmp_path: Path) -> None:
    """Two identical branches give exactly the single classifier's detections; the file rebuilds the model."""
    images, targets = collate([FakeDetectionDataset(num_images=2, size=64)[i] for i in range(2)])
    torch.manual_seed(0)
    single = build_detector(TEST_MODEL_CFG, 3).eval()
    double = build_detector(dict(TEST_MODEL_CFG, classifier=DOUBLE_CFG), 3).eval()
    double.load_state_dict(single.representation_state_dict(), strict=False)
    for branch in double.roi_heads.classifiers()[0].branches:
        branch.load_state_dict(single.roi_heads.classifiers()[0].state_dict())
    with torch.no_grad():
        expected, outputs = single(images), double(images)
    for want, got in zip(expected, outputs):
        assert set(got) == {"boxes", "labels", "scores", "masks"} and len(got["scores"]) > 0
        for key in ("boxes", "labels", "scores", "masks"):
            assert torch.equal(want[key], got[key]), key

    save_checkpoint(tmp_path / "double.pth", double, double.model_cfg, [11, 12, 13])
    loaded, meta = load_detector(tmp_path / "double.pth")
    assert meta["model_cfg"]["classifier"] == DOUBLE_CFG
    assert isinstance(loaded.roi_heads.classifiers()[0], DoubleClassifier)
    with torch.no_grad():
        reloaded = loaded(images)
    assert torch.equal(reloaded[0]["scores"], outputs[0]["scores"])

    losses = double.train()(images, targets)
    assert torch.isfinite(losses["loss_classifier"])
