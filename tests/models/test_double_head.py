"""Double-Head R-CNN box head: the classifier reads the fc head and the regressor the conv head (in every stage of
standard, cascade and HTC heads, with every classifier type), and decoupled retraining still trains only the
classifiers."""

from __future__ import annotations

import pytest
import torch

from longtail_seg.engine.retrain import prepare_for_classifier_retraining
from longtail_seg.models.config import resolve_model_cfg
from longtail_seg.models.detector import build_detector
from longtail_seg.models.double_head import DoubleHead, DoubleHeadFeatures, split_box_features
from longtail_seg.models.roi_heads import box_stage
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, collate

DOUBLE_CFG = dict(TEST_MODEL_CFG, box_head="double", double_head={"conv_blocks": 2, "conv_channels": 32})
CLASSIFIERS = [
    {"type": "softmax"},
    {"type": "bgs", "class_groups": [1, 1, 2]},
    {"type": "double", "branches": [{"type": "softmax"}, {"type": "bgs", "class_groups": [1, 1, 2]}]},
    {"type": "seesaw"},
    {"type": "sigmoid"},
    {"type": "eqlv2"},
    {"type": "federated", "image_counts": [5, 3, 1]},
]


def test_the_double_head_gives_fc_features_and_pooled_conv_features() -> None:
    torch.manual_seed(0)
    head = DoubleHead(in_channels=16, resolution=7, fc_dim=24, conv_channels=32, conv_blocks=2)
    pooled = torch.rand(5, 16, 7, 7)
    features = head(pooled)
    assert isinstance(features, DoubleHeadFeatures)
    torch.testing.assert_close(features.classification, head.fc_head(pooled))
    torch.testing.assert_close(features.regression, head.conv_head(pooled).mean(dim=(2, 3)))
    assert features.regression.shape == (5, 32) and len(head.conv_head) == 3  # widening block + 2 bottlenecks
    plain = torch.rand(5, 24)
    assert all(part is plain for part in split_box_features(plain))


def test_the_classifier_reads_the_fc_head_and_the_regressor_the_conv_head() -> None:
    torch.manual_seed(0)
    cfg = resolve_model_cfg(DOUBLE_CFG)
    head, predictor = box_stage(cfg, cfg["fpn_channels"], 3, 3)
    pooled = torch.rand(4, cfg["fpn_channels"], 7, 7)
    logits, deltas = predictor(head(pooled))
    torch.testing.assert_close(logits, predictor.classifier(head.fc_head(pooled)))
    torch.testing.assert_close(deltas, predictor.box_regressor(head.conv_head(pooled).mean(dim=(2, 3))))
    assert predictor.box_regressor.bbox_pred.in_features == 32 and deltas.shape == (4, 16)


def test_conv_channels_must_be_a_multiple_of_four() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        resolve_model_cfg(dict(TEST_MODEL_CFG, double_head={"conv_channels": 30}))


# every RoI head kind with softmax; every other classifier on the cascade's three stages
CASES = [(heads, CLASSIFIERS[0]) for heads in ("standard", "cascade", "htc")] + [
    ("cascade", classifier) for classifier in CLASSIFIERS[1:]]


@pytest.mark.parametrize(("roi_heads", "classifier"), CASES, ids=[f"{h}-{c['type']}" for h, c in CASES])
def test_every_head_and_classifier_trains_and_predicts_with_the_double_head(roi_heads, classifier) -> None:
    torch.manual_seed(0)
    model = build_detector(dict(DOUBLE_CFG, roi_heads=roi_heads, classifier=classifier), num_classes=3)
    heads = model.roi_heads
    box_heads = heads.box_head if roi_heads != "standard" else [heads.box_head]
    assert all(isinstance(head, DoubleHead) for head in box_heads)
    images, targets = collate([FakeDetectionDataset(num_images=2)[i] for i in range(2)])
    losses = model.train()(images, targets)
    assert all(torch.isfinite(value) for value in losses.values()), losses
    sum(losses.values()).backward()
    for head in box_heads:  # both heads learn: the conv head from the box loss, the fc head from the classifier's
        assert head.conv_head[0].conv1.weight.grad.abs().sum() > 0
        assert head.fc_head.fc6.weight.grad.abs().sum() > 0
    model.roi_heads.detections_per_img = 10  # a test-time limit: fewer masks to predict
    with torch.no_grad():
        detection = model.eval().detect(images)[0]
    assert detection["boxes"].shape[1] == 4 and detection["masks"].shape[1:] == (1, 28, 28)


@pytest.mark.parametrize("roi_heads", ["standard", "cascade"])
def test_retraining_with_the_double_head_trains_only_the_classifiers(roi_heads) -> None:
    torch.manual_seed(0)
    model = build_detector(dict(DOUBLE_CFG, roi_heads=roi_heads), num_classes=3)
    prepare_for_classifier_retraining(model, {"type": "bgs", "class_groups": [1, 1, 2]})
    classifier_params = {id(p) for c in model.roi_heads.classifiers() for p in c.parameters()}
    images, targets = collate([FakeDetectionDataset(num_images=2)[i] for i in range(2)])
    targets = [{k: v for k, v in t.items() if k != "masks"} for t in targets]
    before = {name: value.clone() for name, value in model.state_dict().items()}
    sum(model.train()(images, targets).values()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (id(parameter) in classifier_params), name
    # the conv head's batch norms keep their statistics under train(): the representation does not move
    for name, value in model.state_dict().items():
        if "conv_head" in name:
            assert torch.equal(value, before[name]), name
