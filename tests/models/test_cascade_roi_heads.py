"""Cascade R-CNN heads: each stage samples at its own IoU threshold from the previous stage's refined boxes, the
loss weights apply per stage, inference averages the stages' scores (hand-computed values) and keeps the last
stage's boxes, decoupled retraining trains exactly the three stage classifiers (and combines them into three double
classifiers), checkpoints round-trip, multi-scale testing runs on cascade and HTC checkpoints, and bad
``model.cascade`` keys fail naming their path."""

from __future__ import annotations

import math
from pathlib import Path

import jsonschema
import pytest
import torch
from torchvision.ops import box_iou

from longtail_seg.engine.retrain import (
    combine_classifiers,
    frozen_state,
    prepare_for_classifier_retraining,
    retrain_classifier,
)
from longtail_seg.inference.config import TestConfig
from longtail_seg.inference.run import predict_annotation_file
from longtail_seg.models.cascade_roi_heads import CascadeRoIHeads
from longtail_seg.models.config import resolve_model_cfg
from longtail_seg.models.detector import build_detector, load_detector, save_checkpoint
from longtail_seg.models.double_classifier import DoubleClassifier
from longtail_seg.models.roi_heads import build_roi_heads
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, OrderedSampler, collate
from tests.test_workflow_config import check_config, merged

CASCADE_CFG = dict(TEST_MODEL_CFG, roi_heads="cascade")
RETRAIN_CFG = {"sampler": "uniform", "batch_size": 4, "epochs": 1, "max_iterations": 2, "lr": 1e-2,
               "warmup_iters": 0, "num_workers": 0, "progress_bar": False, "checkpoint_period": 2, "log_period": 1}
IMAGE = (64, 64)
GT_BOX = [10.0, 10.0, 40.0, 40.0]  # 30 x 30


def _heads(num_classes: int = 3, **cascade) -> CascadeRoIHeads:
    """Cascade heads of the test model with every stage's regressor zeroed (refinement keeps the boxes)."""
    torch.manual_seed(0)
    cfg = resolve_model_cfg(dict(CASCADE_CFG, cascade=cascade) if cascade else CASCADE_CFG)
    heads = build_roi_heads(cfg, cfg["fpn_channels"], num_classes)
    with torch.no_grad():
        for predictor in heads.box_predictor:
            predictor.box_regressor.bbox_pred.weight.zero_()
            predictor.box_regressor.bbox_pred.bias.zero_()
    return heads


def _features() -> dict[str, torch.Tensor]:
    """One image's stride-4 FPN map (the test model pools from level "0" only)."""
    return {"0": torch.rand(1, TEST_MODEL_CFG["fpn_channels"], IMAGE[0] // 4, IMAGE[1] // 4)}


def _target() -> dict[str, torch.Tensor]:
    mask = torch.zeros(1, *IMAGE, dtype=torch.uint8)
    mask[0, 10:40, 10:40] = 1
    return {"boxes": torch.tensor([GT_BOX]), "labels": torch.tensor([2]), "masks": mask}


def _proposal_with_iou(iou: float) -> list[float]:
    """A box inside GT_BOX, as wide, whose IoU with it is ``iou``."""
    return [10.0, 10.0, 40.0, 10.0 + 30.0 * iou]


def _record_labels(heads: CascadeRoIHeads) -> list[list[torch.Tensor]]:
    """Make every stage's classifier record the labels its loss sees; returns the per-stage lists."""
    seen: list[list[torch.Tensor]] = [[] for _ in range(heads.num_stages)]
    for stage, classifier in enumerate(heads.classifiers()):
        def loss(logits, labels, _stage=stage, _loss=classifier.loss):
            seen[_stage].append(labels.clone())
            return _loss(logits, labels)
        classifier.loss = loss
    return seen


def _softmax_with_probabilities(classifier, probabilities: list[float]) -> None:
    """Zero weights and log-probability biases: the classifier's scores are ``probabilities`` for any RoI."""
    with torch.no_grad():
        classifier.cls_score.weight.zero_()
        classifier.cls_score.bias.copy_(torch.tensor(probabilities).log())


# --------------------------------------------------------------------------------------------- training stages


def test_each_stage_matches_at_its_own_iou_threshold() -> None:
    """IoU 0.55 is foreground for stage 1 (0.5) only, IoU 0.65 for stages 1-2; the ground truth for all three. The
    ground-truth box a stage added is not refined into the next stage (each stage adds it once)."""
    heads = _heads()
    proposals = torch.tensor([_proposal_with_iou(0.55), _proposal_with_iou(0.65)])
    torch.testing.assert_close(box_iou(proposals, torch.tensor([GT_BOX]))[:, 0], torch.tensor([0.55, 0.65]))
    seen = _record_labels(heads)
    heads.train()
    losses = heads.losses(_features(), [proposals], [IMAGE], [_target()])
    foreground = [int((labels[0] > 0).sum()) for labels in seen]
    assert foreground == [3, 2, 1]
    assert [len(labels[0]) for labels in seen] == [3, 3, 3]
    assert sorted(losses) == ["loss_box_reg_stage1", "loss_box_reg_stage2", "loss_box_reg_stage3",
                              "loss_classifier_stage1", "loss_classifier_stage2", "loss_classifier_stage3",
                              "loss_mask"]
    # the samplers themselves: the 0.55 box is foreground (label 2) at stage 1, background at stage 3
    for stage, expected in ((0, 2), (1, 0), (2, 0)):
        _, _, labels, _, from_gt = heads.samplers[stage].sample([proposals[:1]], [_target()])
        assert sorted(labels[0].tolist()) == sorted([expected, 2]) and from_gt[0].sum() == 1


def test_the_next_stage_samples_the_boxes_this_stage_regressed() -> None:
    """Stage 1 moves its RoIs by its deltas: a large width shrink collapses every proposal, so stages 2 and 3 only
    see the ground truth; a shift that moves the 0.55 box onto the ground truth makes it stage-3 foreground."""
    heads = _heads()
    proposals = torch.tensor([_proposal_with_iou(0.55)])
    with torch.no_grad():  # dw = -100 / 5: widths x e^-20, far below the minimum box size
        heads.box_predictor[0].box_regressor.bbox_pred.bias.copy_(torch.tensor([0.0, 0.0, -100.0, 0.0]))
    seen = _record_labels(heads)
    heads.train().losses(_features(), [proposals], [IMAGE], [_target()])
    assert [labels[0].tolist() for labels in seen[1:]] == [[2], [2]]

    heads = _heads()  # the 0.55 box (height 16.5, centre y 18.25) becomes the 30 x 30 ground truth
    dy, dh = (25.0 - 18.25) / 16.5, math.log(30.0 / 16.5)
    with torch.no_grad():
        heads.box_predictor[0].box_regressor.bbox_pred.bias.copy_(torch.tensor([0.0, 10.0 * dy, 0.0, 5.0 * dh]))
    seen = _record_labels(heads)
    heads.train().losses(_features(), [proposals], [IMAGE], [_target()])
    assert [int((labels[0] > 0).sum()) for labels in seen] == [2, 2, 2]


def test_an_image_without_objects_trains_every_stage_on_background() -> None:
    heads = _heads()
    seen = _record_labels(heads)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, *IMAGE, dtype=torch.uint8)}
    proposals = torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 60.0, 50.0]])
    losses = heads.train().losses(_features(), [proposals], [IMAGE], [empty])
    assert [labels[0].tolist() for labels in seen] == [[0, 0]] * 3
    assert all(torch.isfinite(value) for value in losses.values())
    assert float(losses["loss_box_reg_stage3"].detach()) == 0.0


def test_stage_loss_weights_multiply_each_stages_losses() -> None:
    heads = _heads(iou_thresholds=[0.5, 0.6, 0.7], stage_loss_weights=[1.0, 1.0, 1.0])
    for predictor in heads.box_predictor:  # non-zero box losses
        torch.nn.init.normal_(predictor.box_regressor.bbox_pred.weight, std=0.01)
    proposals = torch.tensor([_proposal_with_iou(0.75), _proposal_with_iou(0.9), [40.0, 40.0, 60.0, 60.0]])
    features = _features()
    heads.train()
    torch.manual_seed(3)
    unweighted = heads.losses(features, [proposals], [IMAGE], [_target()])
    heads.stage_loss_weights = [1.0, 0.5, 0.25]
    torch.manual_seed(3)
    weighted = heads.losses(features, [proposals], [IMAGE], [_target()])
    for stage, weight in ((1, 1.0), (2, 0.5), (3, 0.25)):
        for name in (f"loss_classifier_stage{stage}", f"loss_box_reg_stage{stage}"):
            assert float(unweighted[name].detach()) > 0
            torch.testing.assert_close(weighted[name], weight * unweighted[name])
    torch.testing.assert_close(weighted["loss_mask"], unweighted["loss_mask"])


# ------------------------------------------------------------------------------------------------- inference


def test_inference_averages_the_stage_scores_and_keeps_the_last_stages_boxes() -> None:
    """Stage probabilities (background, class 1, class 2): (0.2, 0.6, 0.2), (0.4, 0.4, 0.2), (0.7, 0.1, 0.2), so
    class 1 scores (0.6 + 0.4 + 0.1) / 3 = 0.3667 and class 2 0.2. Stage 1 moves the box 0.1 heights down, stage 3
    0.1 widths right: the detections' box is the proposal moved by both."""
    heads = _heads(num_classes=2)
    for classifier, probabilities in zip(heads.classifiers(), ([0.2, 0.6, 0.2], [0.4, 0.4, 0.2], [0.7, 0.1, 0.2])):
        _softmax_with_probabilities(classifier, probabilities)
    with torch.no_grad():  # dy = 1 / 10 (stage 1's weights), dx = 3 / 30 (stage 3's)
        heads.box_predictor[0].box_regressor.bbox_pred.bias.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))
        heads.box_predictor[2].box_regressor.bbox_pred.bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0]))
    heads.eval().score_thresh = 0.0
    with torch.no_grad():
        detections = heads.detect_boxes(_features(), [torch.tensor([[8.0, 8.0, 40.0, 40.0]])], [IMAGE])[0]
    assert detections["labels"].tolist() == [1, 2]
    torch.testing.assert_close(detections["scores"], torch.tensor([1.1 / 3, 0.2]))
    torch.testing.assert_close(detections["boxes"], torch.tensor([[11.2, 11.2, 43.2, 43.2]] * 2))


def test_double_classifiers_average_within_each_stage_then_across_stages() -> None:
    """Stages 1-2: branches (0.2, 0.6, 0.2) and (0.6, 0.2, 0.2) average to (0.4, 0.4, 0.2); stage 3: both
    (0.8, 0.1, 0.1). Class 1: (0.4 + 0.4 + 0.1) / 3 = 0.3; class 2: (0.2 + 0.2 + 0.1) / 3 = 0.1667."""
    heads = _heads(num_classes=2)
    branches = [([0.2, 0.6, 0.2], [0.6, 0.2, 0.2])] * 2 + [([0.8, 0.1, 0.1], [0.8, 0.1, 0.1])]
    doubles = []
    for classifier, pair in zip(heads.classifiers(), branches):
        copies = [type(classifier)(TEST_MODEL_CFG["box_head_dim"], 2) for _ in pair]
        for branch, probabilities in zip(copies, pair):
            _softmax_with_probabilities(branch, probabilities)
        doubles.append(DoubleClassifier(copies))
    heads.set_classifiers(doubles)
    heads.eval().score_thresh = 0.0
    with torch.no_grad():
        detections = heads.detect_boxes(_features(), [torch.tensor([[8.0, 8.0, 40.0, 40.0]])], [IMAGE])[0]
    torch.testing.assert_close(detections["scores"], torch.tensor([0.3, 0.5 / 3]))


def test_the_detector_predicts_masks_on_the_final_boxes() -> None:
    torch.manual_seed(0)
    model = build_detector(CASCADE_CFG, num_classes=3).eval()
    images, _ = collate([FakeDetectionDataset(num_images=1)[0]])
    with torch.no_grad():
        detection = model.detect(images)[0]
        features, sizes, boxes_only = model.boxes_and_features(images)
        masks = model.roi_heads.class_mask_probs(features, [boxes_only[0]["boxes"]], [boxes_only[0]["labels"]], sizes)
    assert len(detection["boxes"]) > 0 and detection["masks"].shape[1:] == (1, 28, 28)
    torch.testing.assert_close(detection["boxes"], boxes_only[0]["boxes"])
    torch.testing.assert_close(detection["masks"], masks[0])


# ----------------------------------------------------------------------------------------- retraining, files


def test_retraining_trains_exactly_the_three_stage_classifiers() -> None:
    torch.manual_seed(0)
    model = build_detector(CASCADE_CFG, num_classes=3)
    prepare_for_classifier_retraining(model, {"type": "bgs", "class_groups": [1, 1, 2]})
    classifiers = model.roi_heads.classifiers()
    assert len(classifiers) == 3 and len({id(c) for c in classifiers}) == 3
    classifier_params = {id(p) for c in classifiers for p in c.parameters()}
    images, targets = collate([FakeDetectionDataset(num_images=2)[i] for i in range(2)])
    targets = [{k: v for k, v in t.items() if k != "masks"} for t in targets]  # retraining needs no masks
    losses = model.train()(images, targets)
    assert sorted(losses) == ["loss_classifier_stage1", "loss_classifier_stage2", "loss_classifier_stage3"]
    sum(losses.values()).backward()
    for name, parameter in model.named_parameters():
        if id(parameter) in classifier_params:
            assert parameter.requires_grad and parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert not parameter.requires_grad and parameter.grad is None, name
    for classifier in classifiers:  # each stage's classifier learns from its own stage's loss
        assert any(p.grad.abs().sum() > 0 for p in classifier.parameters())
    model.roi_heads.sampler.batch_size_per_image = 7  # retrain.rois_per_image reaches every stage
    assert [s.batch_size_per_image for s in model.roi_heads.samplers] == [7, 7, 7]


def test_retrain_and_combine_give_three_double_classifiers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_detector(CASCADE_CFG, num_classes=3)
    representation = tmp_path / "representation.pth"
    save_checkpoint(representation, model, model.model_cfg, [101, 102, 103])
    dataset = FakeDetectionDataset(num_images=4)
    bgs = {"type": "bgs", "class_groups": [1, 1, 2]}
    outputs = [retrain_classifier(representation, dataset, OrderedSampler(4), bgs, dict(RETRAIN_CFG, seed=seed),
                                  tmp_path / f"retrained_{seed}", "cpu", collate_fn=collate).final_model
               for seed in (1, 2)]
    before, after = load_detector(representation)[0], load_detector(outputs[0])[0]
    frozen_after = frozen_state(after)
    for name, value in frozen_state(before).items():
        assert torch.equal(value, frozen_after[name]), name
    combined, meta = load_detector(combine_classifiers(*outputs, tmp_path / "double.pth"))
    assert [type(c) for c in combined.roi_heads.classifiers()] == [DoubleClassifier] * 3
    assert meta["model_cfg"]["roi_heads"] == "cascade" and meta["model_cfg"]["classifier"]["type"] == "double"
    images, _ = collate([dataset[0]])
    with torch.no_grad():
        assert len(combined.eval()(images)[0]["scores"]) > 0


def test_a_cascade_checkpoint_rebuilds_the_same_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = dict(CASCADE_CFG, cascade={"iou_thresholds": [0.4, 0.6], "stage_loss_weights": [1.0, 0.5],
                                     "bbox_reg_weights": [[10, 10, 5, 5], [20, 20, 10, 10]]})
    model = build_detector(cfg, num_classes=3).eval()
    save_checkpoint(tmp_path / "model.pth", model, model.model_cfg, [1, 2, 3])
    loaded, meta = load_detector(tmp_path / "model.pth")
    assert loaded.roi_heads.num_stages == 2 and meta["model_cfg"]["cascade"]["iou_thresholds"] == [0.4, 0.6]
    assert [s.matcher.high_threshold for s in loaded.roi_heads.samplers] == [0.4, 0.6]
    assert loaded.roi_heads.box_coders[1].weights == (20, 20, 10, 10)
    images, _ = collate([FakeDetectionDataset(num_images=1)[0]])
    with torch.no_grad():
        expected, got = model(images)[0], loaded(images)[0]
    assert len(expected["boxes"]) > 0
    for key in ("boxes", "labels", "scores", "masks"):
        assert torch.equal(expected[key], got[key]), key


# ---------------------------------------------------------------------------------------------------- config


def test_the_defaults_are_cascade_rcnns_and_a_partial_section_keeps_the_rest() -> None:
    cfg = resolve_model_cfg({"roi_heads": "cascade", "cascade": {"stage_loss_weights": [1, 1, 1]}})
    assert cfg["cascade"] == {"iou_thresholds": [0.5, 0.6, 0.7], "stage_loss_weights": [1, 1, 1],
                              "bbox_reg_weights": [[10, 10, 5, 5], [20, 20, 10, 10], [30, 30, 15, 15]]}
    heads = build_detector(CASCADE_CFG, 3).roi_heads
    assert [s.matcher.high_threshold for s in heads.samplers] == [0.5, 0.6, 0.7]
    assert [s.matcher.low_threshold for s in heads.samplers] == [0.5, 0.6, 0.7]
    assert heads.stage_loss_weights == [1.0, 0.5, 0.25]
    assert [c.weights for c in heads.box_coders] == [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]
    assert [p.box_regressor.bbox_pred.out_features for p in heads.box_predictor] == [4, 4, 4]  # class-agnostic


@pytest.mark.parametrize("cascade, message", [
    ({"iou_threshold": [0.5]}, r"^model\.cascade\.iou_threshold: unknown key\(s\) of the cascade RoI heads; "
                               r"allowed: \['bbox_reg_weights', 'iou_thresholds', 'stage_loss_weights'\]"),
    (None, r"^model\.cascade must be a mapping"),
    ({"iou_thresholds": [0.5, 1.2, 0.7]}, r"^model\.cascade\.iou_thresholds must be a non-empty list of numbers in "
                                          r"\(0, 1\], one per stage; got \[0\.5, 1\.2, 0\.7\]"),
    ({"iou_thresholds": [0.0, 0.6, 0.7]}, r"^model\.cascade\.iou_thresholds must be"),
    ({"iou_thresholds": []}, r"^model\.cascade\.iou_thresholds must be a non-empty list"),
    ({"iou_thresholds": "0.5"}, r"^model\.cascade\.iou_thresholds must be"),
    ({"stage_loss_weights": [1, -0.5, 0.25]}, r"^model\.cascade\.stage_loss_weights must be a non-empty list of "
                                              r"numbers >= 0"),
    ({"bbox_reg_weights": [[10, 10, 5], [20, 20, 10, 10], [30, 30, 15, 15]]},
     r"^model\.cascade\.bbox_reg_weights must be a non-empty list of lists of 4 numbers > 0"),
    ({"iou_thresholds": [0.5, 0.6]}, r"^model\.cascade\.stage_loss_weights has 3 entries but iou_thresholds has 2 "
                                     r"stages; give one per stage"),
])
def test_bad_cascade_settings_fail_naming_the_key(cascade, message) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_model_cfg({"roi_heads": "cascade", "cascade": cascade})


def test_the_workflow_checks_the_cascade_section_when_the_dag_is_built() -> None:
    check_config(merged({"model": {"roi_heads": "cascade", "cascade": {"iou_thresholds": [0.5, 0.65, 0.75]}}}))
    with pytest.raises(ValueError, match=r"model\.cascade\.iou_treshold"):
        check_config(merged({"model": {"cascade": {"iou_treshold": [0.5]}}}))
    with pytest.raises(ValueError, match=r"model\.cascade\.bbox_reg_weights has 3 entries but iou_thresholds has 2"):
        check_config(merged({"model": {"roi_heads": "cascade", "cascade": {"iou_thresholds": [0.5, 0.6],
                                                                            "stage_loss_weights": [1, 1]}}}))
    with pytest.raises(jsonschema.ValidationError, match="1.5 is greater than the maximum of 1"):  # the schema
        check_config(merged({"model": {"cascade": {"iou_thresholds": [0.5, 0.6, 1.5]}}}))


@pytest.mark.parametrize("roi_heads", ["cascade", "htc"])
def test_multi_scale_flip_testing_with_mask_voting_runs_on_cascade_checkpoints(roi_heads, small_lvis, tmp_path):
    annotations, image_root = small_lvis
    torch.manual_seed(0)
    model = build_detector(dict(CASCADE_CFG, roi_heads=roi_heads), 3)
    save_checkpoint(tmp_path / "model.pth", model, model.model_cfg, [1, 2, 3])
    cfg = TestConfig.from_dict({"min_size": 32, "max_size": 200, "batch_size": 2, "max_dets": 10, "scales": [32, 48],
                                "flip": True, "merge": "soft_nms", "mask_voting": True})
    results, num_images, _ = predict_annotation_file(tmp_path / "model.pth", annotations, image_root, cfg)
    assert num_images > 0 and results and all(r["segmentation"]["counts"] for r in results)
