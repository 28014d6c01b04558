"""Classifier dropout (the report's pseudo-label step): active in training only, no weights of its own (checkpoints
load either way), and validated."""

from __future__ import annotations

import pytest
import torch

from longtail_seg.models.classifiers import build_classifier

GROUPS = [1, 1, 2, 2, 3]


@pytest.mark.parametrize("cfg", [{"type": "softmax", "dropout": 0.5},
                                 {"type": "bgs", "class_groups": GROUPS, "dropout": 0.5}])
def test_dropout_is_active_in_training_only(cfg):
    torch.manual_seed(0)
    classifier = build_classifier(cfg, 16, 5)
    features = torch.randn(64, 16)
    classifier.eval()
    assert torch.equal(classifier(features), classifier(features))
    reference = build_classifier({k: v for k, v in cfg.items() if k != "dropout"}, 16, 5)
    reference.load_state_dict(classifier.state_dict())  # same weights, no extra keys
    reference.eval()
    assert torch.allclose(classifier(features), reference(features))
    classifier.train()
    assert not torch.allclose(classifier(features), classifier(features))


def test_zero_dropout_changes_nothing_in_training():
    torch.manual_seed(0)
    classifier = build_classifier({"type": "softmax", "dropout": 0.0}, 16, 5).train()
    features = torch.randn(8, 16)
    assert torch.equal(classifier(features), classifier(features))


@pytest.mark.parametrize("bad", [1.0, -0.1])
def test_bad_dropout_is_rejected(bad):
    with pytest.raises(ValueError, match="dropout"):
        build_classifier({"type": "softmax", "dropout": bad}, 16, 5)
