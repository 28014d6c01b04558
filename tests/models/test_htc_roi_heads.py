"""Hybrid Task Cascade heads: a weighted mask loss per stage on the boxes that stage regressed (interleaved), the
mask information flow from each stage's mask head to the next, masks averaged over stages at inference
(hand-computed), retraining of the three stage classifiers only, and checkpoints that round-trip."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from longtail_seg.engine.retrain import prepare_for_classifier_retraining
from longtail_seg.models.config import resolve_model_cfg
from longtail_seg.models.detector import build_detector, load_detector, save_checkpoint
from longtail_seg.models.htc_roi_heads import HybridTaskCascadeRoIHeads
from longtail_seg.models.roi_heads import build_roi_heads
from longtail_seg.workflow_config import model_job_settings
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, collate
from tests.models.test_cascade_roi_heads import GT_BOX, IMAGE, _features, _proposal_with_iou, _target
from tests.test_workflow_config import merged

HTC_CFG = dict(TEST_MODEL_CFG, roi_heads="htc")


def _heads(**cascade) -> HybridTaskCascadeRoIHeads:
    """HTC heads of the test model (3 classes) with every stage's box regressor zeroed."""
    torch.manual_seed(0)
    cfg = resolve_model_cfg(dict(HTC_CFG, cascade=cascade) if cascade else HTC_CFG)
    heads = build_roi_heads(cfg, cfg["fpn_channels"], 3)
    with torch.no_grad():
        for predictor in heads.box_predictor:
            predictor.box_regressor.bbox_pred.weight.zero_()
            predictor.box_regressor.bbox_pred.bias.zero_()
    return heads


def test_every_stage_has_a_weighted_mask_loss() -> None:
    heads = _heads(iou_thresholds=[0.5, 0.6, 0.7], stage_loss_weights=[1.0, 1.0, 1.0])
    assert (len(heads.mask_head), len(heads.mask_predictor), len(heads.mask_flows)) == (3, 3, 2)
    proposals = torch.tensor([_proposal_with_iou(0.8), [40.0, 40.0, 60.0, 60.0]])
    features = _features()
    heads.train()
    torch.manual_seed(3)
    unweighted = heads.losses(features, [proposals], [IMAGE], [_target()])
    assert sorted(unweighted) == sorted(f"loss_{kind}_stage{k}" for kind in ("classifier", "box_reg", "mask")
                                        for k in (1, 2, 3))
    heads.stage_loss_weights = [1.0, 0.5, 0.25]
    torch.manual_seed(3)
    weighted = heads.losses(features, [proposals], [IMAGE], [_target()])
    for stage, weight in ((1, 1.0), (2, 0.5), (3, 0.25)):
        assert float(unweighted[f"loss_mask_stage{stage}"].detach()) > 0
        torch.testing.assert_close(weighted[f"loss_mask_stage{stage}"], weight * unweighted[f"loss_mask_stage{stage}"])


def test_a_stages_mask_branch_learns_on_the_boxes_its_box_branch_regressed() -> None:
    """Stage 1 moves the IoU-0.55 proposal onto the ground truth: every RoI stage 1's mask branch pools is the
    ground truth (the moved box and the ground truth added again), none is the proposal as it came."""
    heads = _heads()
    proposal = _proposal_with_iou(0.55)
    dy, dh = (25.0 - 18.25) / 16.5, math.log(30.0 / 16.5)
    with torch.no_grad():
        heads.box_predictor[0].box_regressor.bbox_pred.bias.copy_(torch.tensor([0.0, 10.0 * dy, 0.0, 5.0 * dh]))
    pooled_boxes = []
    pool = heads.mask_roi_pool.forward
    heads.mask_roi_pool.forward = lambda features, boxes, shapes: pooled_boxes.append(boxes[0]) or pool(
        features, boxes, shapes)
    heads.train().losses(_features(), [torch.tensor([proposal])], [IMAGE], [_target()])
    assert len(pooled_boxes) == 3 and len(pooled_boxes[0]) == 2
    torch.testing.assert_close(pooled_boxes[0], torch.tensor([GT_BOX, GT_BOX]))


def test_mask_information_flows_from_each_stage_to_the_next() -> None:
    heads = _heads()
    pooled = torch.rand(2, TEST_MODEL_CFG["fpn_channels"], 14, 14)
    with torch.no_grad():
        before = heads.mask_features(pooled, 2)
        for parameter in heads.mask_head[0].parameters():
            parameter.add_(0.5)
        after = heads.mask_features(pooled, 2)
        assert not torch.equal(before[0], after[0])
        assert not torch.equal(before[1], after[1]) and not torch.equal(before[2], after[2])  # through the flows
        for flow in heads.mask_flows:
            flow.weight.zero_()
            flow.bias.zero_()
        cut = heads.mask_features(pooled, 2)
        for parameter in heads.mask_head[0].parameters():
            parameter.sub_(0.5)
        assert torch.equal(cut[1], heads.mask_features(pooled, 2)[1])  # no flow: stage 2 ignores stage 1's head
        assert torch.equal(cut[1], heads.mask_head[1](pooled))


def test_inference_masks_are_the_mean_of_the_stages_masks() -> None:
    """Stage mask probabilities 0.2, 0.5 and 0.8 everywhere (zero weights, logit biases): the mean is 0.5."""
    heads = _heads()
    with torch.no_grad():
        for predictor, probability in zip(heads.mask_predictor, (0.2, 0.5, 0.8)):
            predictor.mask_fcn_logits.weight.zero_()
            predictor.mask_fcn_logits.bias.fill_(math.log(probability / (1 - probability)))
        probs = heads.eval().class_mask_probs(_features(), [torch.tensor([GT_BOX, [0.0, 0.0, 20.0, 30.0]])],
                                              [torch.tensor([1, 3])], [IMAGE])
    assert probs[0].shape == (2, 1, 28, 28)
    torch.testing.assert_close(probs[0], torch.full((2, 1, 28, 28), 0.5))


def test_retraining_trains_only_the_three_stage_classifiers() -> None:
    torch.manual_seed(0)
    model = build_detector(HTC_CFG, num_classes=3)
    prepare_for_classifier_retraining(model, {"type": "softmax"})
    classifier_params = {id(p) for c in model.roi_heads.classifiers() for p in c.parameters()}
    images, targets = collate([FakeDetectionDataset(num_images=2)[i] for i in range(2)])
    losses = model.train()(images, [{k: v for k, v in t.items() if k != "masks"} for t in targets])
    assert sorted(losses) == ["loss_classifier_stage1", "loss_classifier_stage2", "loss_classifier_stage3"]
    sum(losses.values()).backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == (id(parameter) in classifier_params), name


def test_an_htc_checkpoint_rebuilds_the_same_model_and_reads_the_cascade_section(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_detector(dict(HTC_CFG, cascade={"iou_thresholds": [0.5, 0.7], "stage_loss_weights": [1, 0.5],
                                                  "bbox_reg_weights": [[10, 10, 5, 5], [20, 20, 10, 10]]}), 3)
    images, targets = collate([FakeDetectionDataset(num_images=1)[0]])
    assert all(torch.isfinite(v) for v in model.train()(images, targets).values())
    save_checkpoint(tmp_path / "model.pth", model.eval(), model.model_cfg, [1, 2, 3])
    loaded, _ = load_detector(tmp_path / "model.pth")
    assert type(loaded.roi_heads) is HybridTaskCascadeRoIHeads and len(loaded.roi_heads.mask_head) == 2
    with torch.no_grad():
        expected, got = model(images)[0], loaded(images)[0]
    assert len(expected["boxes"]) > 0
    for key in ("boxes", "labels", "scores", "masks"):
        assert torch.equal(expected[key], got[key]), key
    settings = model_job_settings(merged({"model": {"roi_heads": "htc"}}))  # the job keeps the section htc reads
    assert settings["cascade"]["iou_thresholds"] == [0.5, 0.6, 0.7]
