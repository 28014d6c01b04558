"""Mask Scoring R-CNN's MaskIoU head: the IoU target hand-computed on a tiny mask, the L2 loss on positives only,
mask score = class score x predicted IoU at inference (box scores unchanged), empty batches, and every RoI head
kind training it on its last stage."""

from __future__ import annotations

import pytest
import torch

from longtail_seg.models.config import resolve_model_cfg
from longtail_seg.models.detector import build_detector
from longtail_seg.models.mask_iou_head import MaskIoUHead, mask_iou_loss, mask_iou_targets, mask_scores
from longtail_seg.models.roi_heads import build_roi_heads
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, collate

MASK_IOU_CFG = dict(TEST_MODEL_CFG, mask_iou_head=True)


def test_the_iou_target_of_a_tiny_mask_by_hand() -> None:
    """Predicted (> 0.5): the 2 x 2 top-left block (4 pixels); truth (> 0.5): the top row (3 pixels). Intersection
    2 (the top-left pair), union 4 + 3 - 2 = 5: IoU 0.4. A second RoI with both empty: 0."""
    predicted = torch.tensor([[[0.9, 0.6, 0.2], [0.7, 0.8, 0.1], [0.0, 0.5, 0.3]], [[0.1] * 3] * 3])
    truth = torch.tensor([[[1.0, 1.0, 1.0], [0.0, 0.4, 0.0], [0.0, 0.0, 0.0]], [[0.0] * 3] * 3])
    torch.testing.assert_close(mask_iou_targets(predicted, truth), torch.tensor([0.4, 0.0]))


def test_the_loss_is_the_mean_squared_error_on_positives_only() -> None:
    predicted = torch.tensor([0.5, 0.9, 0.2], requires_grad=True)
    targets = torch.tensor([0.4, 0.1, 0.6])
    loss = mask_iou_loss(predicted, targets, torch.tensor([1, 0, 3]))
    torch.testing.assert_close(loss, torch.tensor((0.1**2 + 0.4**2) / 2))
    loss.backward()
    assert predicted.grad[1] == 0  # the background RoI's prediction gets no gradient


def test_no_positives_give_a_zero_loss_with_a_gradient_path() -> None:
    predicted = torch.zeros(0, requires_grad=True)
    loss = mask_iou_loss(predicted, torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert loss.item() == 0.0 and loss.requires_grad
    head = MaskIoUHead(in_channels=4, roi_size=14, conv_channels=8, fc_dim=16, num_classes=3)
    empty = head(torch.zeros(0, 4, 14, 14), torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.int64))
    assert empty.shape == (0,)


def test_the_head_reads_the_prediction_of_each_rois_class() -> None:
    torch.manual_seed(0)
    head = MaskIoUHead(in_channels=4, roi_size=14, conv_channels=8, fc_dim=16, num_classes=3)
    features, masks = torch.rand(2, 4, 14, 14), torch.rand(2, 1, 28, 28)
    pooled = torch.nn.functional.max_pool2d(masks, 2)
    all_classes = head.iou(head.fcs(head.convs(torch.cat((features, pooled), 1)).flatten(1)))
    torch.testing.assert_close(head(features, masks, torch.tensor([2, 0])), all_classes[[0, 1], [2, 0]])


def test_mask_scores_multiply_the_class_score_by_the_clamped_iou() -> None:
    scores = mask_scores(torch.tensor([0.8, 0.5, 0.4]), torch.tensor([0.5, 1.3, -0.2]))
    torch.testing.assert_close(scores, torch.tensor([0.4, 0.5, 0.0]))


def test_inference_multiplies_each_detections_score_by_its_predicted_iou() -> None:
    torch.manual_seed(0)
    cfg = resolve_model_cfg(MASK_IOU_CFG)
    heads = build_roi_heads(cfg, cfg["fpn_channels"], 3).eval()
    with torch.no_grad():  # a constant prediction: 0.5 for class 1, 0.25 for the others
        heads.mask_iou_head.iou.weight.zero_()
        heads.mask_iou_head.iou.bias.copy_(torch.tensor([0.25, 0.5, 0.25, 0.25]))
        heads.score_thresh = 0.0
        features = {"0": torch.rand(1, cfg["fpn_channels"], 16, 16)}
        detections = heads(features, [torch.tensor([[4.0, 4.0, 40.0, 40.0], [20.0, 8.0, 60.0, 50.0]])],
                           [(64, 64)])[0][0]
        plain = heads.detect_boxes(features, [torch.tensor([[4.0, 4.0, 40.0, 40.0], [20.0, 8.0, 60.0, 50.0]])],
                                   [(64, 64)])[0]
    expected = detections["scores"] * torch.where(detections["labels"] == 1, 0.5, 0.25)
    assert len(detections["scores"]) > 0
    torch.testing.assert_close(detections["mask_scores"], expected)
    torch.testing.assert_close(detections["scores"], plain["scores"])  # box scores stay the class scores


@pytest.mark.parametrize("roi_heads", ["standard", "cascade", "htc"])
def test_every_head_kind_trains_the_mask_iou_head_on_its_last_stage(roi_heads) -> None:
    torch.manual_seed(0)
    model = build_detector(dict(MASK_IOU_CFG, roi_heads=roi_heads), num_classes=3)
    images, targets = collate([FakeDetectionDataset(num_images=2)[i] for i in range(2)])
    losses = model.train()(images, targets)
    assert "loss_mask_iou" in losses and torch.isfinite(losses["loss_mask_iou"])
    losses["loss_mask_iou"].backward()
    assert model.roi_heads.mask_iou_head.iou.weight.grad.abs().sum() > 0
    mask_predictors = model.roi_heads.mask_predictor
    for predictor in (mask_predictors if roi_heads == "htc" else [mask_predictors]):
        assert predictor.mask_fcn_logits.weight.grad is None  # the IoU loss does not train the mask predictor
    model.roi_heads.detections_per_img = 10  # a test-time limit: fewer masks to predict
    with torch.no_grad():
        detection = model.eval().detect(images)[0]
    assert detection["mask_scores"].shape == detection["scores"].shape
    assert bool((detection["mask_scores"] <= detection["scores"] + 1e-6).all())


def test_an_image_without_objects_trains_without_the_mask_iou_loss_failing() -> None:
    torch.manual_seed(0)
    model = build_detector(MASK_IOU_CFG, num_classes=3)
    images, targets = collate([FakeDetectionDataset(num_images=1)[0]])
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, *images[0].shape[-2:], dtype=torch.uint8)}
    losses = model.train()(images, [empty])
    assert losses["loss_mask_iou"].item() == 0.0
    sum(losses.values()).backward()
