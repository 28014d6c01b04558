"""The registry of swappable parts: every entry loads, configs are checked with the key's path, and a new
classifier or a new kind of RoI heads (here a two-stage stand-in for a cascade) plugs in by one registry entry,
trains, retrains and combines without a change to the engine."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from longtail_seg.engine.retrain import combine_classifiers, frozen_state, retrain_classifier
from longtail_seg.models import registry
from longtail_seg.models.classifiers import build_classifier
from longtail_seg.models.detector import build_detector, load_detector, save_checkpoint
from longtail_seg.models.double_classifier import DoubleClassifier
from longtail_seg.models.registry import Component, check_classifier_config
from longtail_seg.models.roi_heads import StandardRoIHeads
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, OrderedSampler, collate

RETRAIN_CFG = {"sampler": "uniform", "batch_size": 4, "epochs": 1, "max_iterations": 2, "lr": 1e-2,
               "warmup_iters": 0, "num_workers": 0, "progress_bar": False, "checkpoint_period": 2, "log_period": 1}


@pytest.mark.parametrize("name", sorted(registry.CLASSIFIERS))
def test_every_registered_classifier_loads(name):
    cls = registry.classifier_class(name)
    assert issubclass(cls, nn.Module) and all(hasattr(cls, call) for call in ("from_config", "loss", "scores"))


@pytest.mark.parametrize("name", sorted(registry.ROI_HEADS))
def test_every_registered_roi_head_loads(name):
    cls = registry.roi_heads_class(name)
    assert issubclass(cls, nn.Module)
    assert all(hasattr(cls, call) for call in ("from_config", "classifiers", "set_classifiers", "detect_boxes",
                                               "class_mask_probs", "losses", "classifier_in_features"))


@pytest.mark.parametrize("cfg, message", [
    ({"type": "sofmax"}, r"models\.x\.classifier\.type: unknown classifier 'sofmax'; registered: \['bgs'"),
    ({"type": "bgs", "other_sample_ratio": 8},
     r"models\.x\.classifier\.other_sample_ratio: unknown key\(s\) of the bgs classifier; allowed: .*"
     r"'others_sample_ratio'"),
    ({"type": "double"}, r"models\.x\.classifier \(double classifier\): missing key\(s\) \['branches'\]"),
    ({"type": "double", "branches": [{"type": "softmax"}]}, r"models\.x\.classifier\.branches: a list of >= 2"),
    ({"type": "double", "branches": [{"type": "softmax"}, {"type": "bgs", "dropuot": 0.1}]},
     r"models\.x\.classifier\.branches\[1\]\.dropuot: unknown key\(s\) of the bgs classifier"),
    ("softmax", r"models\.x\.classifier: expected a mapping"),
])
def test_classifier_configs_are_checked_with_the_keys_path(cfg, message):
    with pytest.raises(ValueError, match=message):
        check_classifier_config(cfg, "models.x.classifier")


def test_unknown_roi_heads_are_rejected_with_the_registered_ones():
    with pytest.raises(ValueError, match=r"model\.roi_heads: unknown RoI heads 'cascde'; registered: "
                                         r"\['cascade', 'htc', 'standard'\]"):
        build_detector(dict(TEST_MODEL_CFG, roi_heads="cascde"), 3)


# ------------------------------------------------------------------------------- a new classifier: one file + entry

NEW_CLASSIFIER_FILE = '''
import torch
import torch.nn.functional as F
from torch import nn


class TemperatureSoftmax(nn.Module):
    """A softmax classifier whose logits are divided by a temperature."""

    def __init__(self, in_features, num_classes, temperature):
        super().__init__()
        self.temperature = temperature
        self.cls_score = nn.Linear(in_features, num_classes + 1)

    @classmethod
    def from_config(cls, cfg, in_features, num_classes):
        return cls(in_features, num_classes, cfg["temperature"])

    def forward(self, features):
        return self.cls_score(features.flatten(start_dim=1)) / self.temperature

    def loss(self, logits, labels):
        return F.cross_entropy(logits, labels)

    def scores(self, logits):
        return F.softmax(logits, dim=-1)
'''


def test_a_new_classifier_is_one_file_and_one_registry_entry(tmp_path: Path, monkeypatch):
    (tmp_path / "temperature_softmax.py").write_text(textwrap.dedent(NEW_CLASSIFIER_FILE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.CLASSIFIERS, "temperature",
                        Component("temperature_softmax:TemperatureSoftmax", {"temperature": 1.0}))
    classifier = build_classifier({"type": "temperature", "temperature": 2.0}, 8, 3)
    assert type(classifier).__name__ == "TemperatureSoftmax" and classifier.temperature == 2.0
    assert build_classifier({"type": "temperature"}, 8, 3).temperature == 1.0  # the registry's default
    with pytest.raises(ValueError, match=r"classifier\.temp: unknown key\(s\) of the temperature classifier; "
                                         r"allowed: \['temperature', 'type'\]"):
        build_classifier({"type": "temperature", "temp": 2.0}, 8, 3)
    model = build_detector(dict(TEST_MODEL_CFG, classifier={"type": "temperature", "temperature": 2.0}), 3)
    save_checkpoint(tmp_path / "model.pth", model, model.model_cfg, [1, 2, 3])
    loaded, _ = load_detector(tmp_path / "model.pth")
    assert type(loaded.roi_heads.classifiers()[0]).__name__ == "TemperatureSoftmax"
    images, targets = collate([FakeDetectionDataset(num_images=2)[i] for i in range(2)])
    assert torch.isfinite(loaded.train()(images, targets)["loss_classifier"])


# ----------------------------------------------------------------- a new kind of RoI heads with two classifiers


class TwoStageRoIHeads(StandardRoIHeads):
    """A stand-in for a cascade: a second box classifier on the same box features, each sampling its own RoIs, the
    stages' scores averaged at test time."""

    @classmethod
    def from_config(cls, cfg, in_channels, num_classes):
        heads = super().from_config(cfg, in_channels, num_classes)
        heads.second_classifier = build_classifier(cfg["classifier"], cfg["box_head_dim"], num_classes)
        return heads

    def classifiers(self):
        return [self.box_predictor.classifier, self.second_classifier]

    def set_classifiers(self, classifiers):
        self.box_predictor.classifier, self.second_classifier = classifiers

    def classifier_in_features(self):
        return [self.box_head_dim, self.box_head_dim]

    def losses(self, features, proposals, image_shapes, targets):
        losses = super().losses(features, proposals, image_shapes, targets)
        sampled, _, labels, _ = self.sampler(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, sampled, image_shapes))
        losses["loss_classifier_2"] = self.second_classifier.loss(self.second_classifier(box_features),
                                                                  torch.cat(labels))
        return losses

    def detect_boxes(self, features, proposals, image_shapes):
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        second = self.second_classifier
        scores = (self.box_predictor.classifier.scores(class_logits) + second.scores(second(box_features))) / 2
        boxes = self.box_coder.decode(box_regression, proposals)
        return self.postprocess_detections(scores, boxes, proposals, image_shapes)


def test_a_multi_stage_head_retrains_and_combines_through_the_unchanged_engine(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(registry.ROI_HEADS, "two_stage", Component("tests.models.test_registry:TwoStageRoIHeads"))
    torch.manual_seed(0)
    model = build_detector(dict(TEST_MODEL_CFG, roi_heads="two_stage"), 3)
    images, targets = collate([FakeDetectionDataset(num_images=2)[i] for i in range(2)])
    assert {"loss_classifier", "loss_classifier_2", "loss_mask"} <= set(model.train()(images, targets))
    representation = tmp_path / "representation.pth"
    save_checkpoint(representation, model, model.model_cfg, [101, 102, 103])

    dataset = FakeDetectionDataset(num_images=8)
    outputs = [retrain_classifier(representation, dataset, OrderedSampler(8), {"type": "softmax"},
                                  dict(RETRAIN_CFG, seed=seed), tmp_path / f"retrained_{seed}", "cpu",
                                  collate_fn=collate).final_model for seed in (1, 2)]
    before, after = load_detector(representation)[0], load_detector(outputs[0])[0]
    frozen_after = frozen_state(after)
    for name, value in frozen_state(before).items():
        assert torch.equal(value, frozen_after[name]), name
    for old, new in zip(before.roi_heads.classifiers(), after.roi_heads.classifiers()):
        assert not torch.equal(old.cls_score.weight, new.cls_score.weight)  # both stages retrained

    combined, meta = load_detector(combine_classifiers(*outputs, tmp_path / "double.pth"))
    assert [type(c) for c in combined.roi_heads.classifiers()] == [DoubleClassifier, DoubleClassifier]
    assert meta["model_cfg"]["roi_heads"] == "two_stage"
    with torch.no_grad():
        detections = combined.eval()(images)
    assert len(detections[0]["scores"]) > 0
