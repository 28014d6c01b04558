"""The RoI heads seam: torchvision parity of the standard heads, the interface the engine and TTA use, ignore
regions, own-class mask probabilities, and a second kind of heads registered without touching the engine."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import box_iou

from longtail_seg.models.detector import build_detector
from longtail_seg.models.roi_heads import StandardRoIHeads, drop_ignored, predicted_class_mask_probs
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, collate


def _features_and_proposals(model, images):
    """What the RoI heads receive from the backbone and the RPN for ``images``."""
    image_list, _ = model.transform(images)
    features = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, features)
    return features, proposals, image_list.image_sizes


def _torchvision_heads(heads: StandardRoIHeads) -> RoIHeads:
    """torchvision's RoIHeads around the same modules and settings (a softmax classifier computes what
    FastRCNNPredictor's cls_score does)."""
    reference = RoIHeads(heads.box_roi_pool, heads.box_head, heads.box_predictor, 0.5, 0.5,
                         heads.sampler.batch_size_per_image, 0.25, None, heads.score_thresh, heads.nms_thresh,
                         heads.detections_per_img, heads.mask_roi_pool, heads.mask_head, heads.mask_predictor)
    return reference


def test_standard_heads_compute_torchvisions_losses_and_detections() -> None:
    """Same modules, same RNG state: the same loss values and the same detections as torchvision's RoIHeads."""
    torch.manual_seed(0)
    model = build_detector(TEST_MODEL_CFG, num_classes=3)
    heads, reference = model.roi_heads, _torchvision_heads(model.roi_heads)
    dataset = FakeDetectionDataset(num_images=2)
    images, targets = collate([dataset[0], dataset[1]])
    model.eval()
    with torch.no_grad():
        features, proposals, sizes = _features_and_proposals(model, images)
        heads.train(), reference.train()
        torch.manual_seed(1)
        ours = heads(features, [p.clone() for p in proposals], sizes, targets)[1]
        torch.manual_seed(1)
        theirs = reference(features, [p.clone() for p in proposals], sizes, targets)[1]
        assert set(ours) == set(theirs) == {"loss_classifier", "loss_box_reg", "loss_mask"}
        for name in ours:
            torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0)
        heads.eval(), reference.eval()
        ours = heads(features, proposals, sizes)[0]
        theirs = reference(features, proposals, sizes)[0]
    for mine, expected in zip(ours, theirs):
        assert len(mine["boxes"]) > 0
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(mine[key], expected[key])
        torch.testing.assert_close(mine["masks"], expected["masks"], atol=1e-6, rtol=1e-5)


def test_detect_boxes_and_class_mask_probs_are_the_forward_pass_in_two_steps() -> None:
    """The interface TTA uses gives what the eval forward gives."""
    torch.manual_seed(0)
    model = build_detector(TEST_MODEL_CFG, num_classes=3).eval()
    images = [torch.rand(3, 64, 80)]
    with torch.no_grad():
        features, proposals, sizes = _features_and_proposals(model, images)
        whole = model.roi_heads(features, proposals, sizes)[0][0]
        boxes = model.roi_heads.detect_boxes(features, proposals, sizes)[0]
        masks = model.roi_heads.class_mask_probs(features, [boxes["boxes"]], [boxes["labels"]], sizes)[0]
        features_again, sizes_again, detections = model.boxes_and_features(images)
    assert torch.equal(boxes["boxes"], whole["boxes"]) and torch.equal(masks, whole["masks"])
    assert torch.equal(detections[0]["scores"], whole["scores"]) and sizes_again == list(sizes)


def test_classifier_losses_only_needs_no_masks_and_returns_one_loss() -> None:
    torch.manual_seed(0)
    model = build_detector(TEST_MODEL_CFG, num_classes=3).train()
    images, targets = collate([FakeDetectionDataset(num_images=1)[0]])
    with pytest.raises(ValueError, match="masks"):
        model(images, [{k: v for k, v in t.items() if k != "masks"} for t in targets])
    model.roi_heads.classifier_losses_only = True
    losses = model(images, [{k: v for k, v in t.items() if k != "masks"} for t in targets])
    assert {k for k in losses if not k.startswith("loss_rpn") and k != "loss_objectness"} == {"loss_classifier"}


def test_set_classifiers_checks_the_number_of_stages() -> None:
    model = build_detector(TEST_MODEL_CFG, num_classes=3)
    with pytest.raises(ValueError, match="one box classifier"):
        model.roi_heads.set_classifiers([])
    assert model.roi_heads.classifier_in_features() == [TEST_MODEL_CFG["box_head_dim"]]


def test_predicted_class_mask_probs_equal_torchvision_inference():
    """Only the detected class's mask logits are computed; values must equal torchvision's all-class path."""
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
    from torchvision.models.detection.roi_heads import maskrcnn_inference

    torch.manual_seed(0)
    predictor = MaskRCNNPredictor(8, 6, 11).eval()
    features = torch.randn(7, 8, 14, 14)
    labels = [torch.tensor([3, 0, 10]), torch.tensor([], dtype=torch.int64), torch.tensor([1, 1, 5, 7])]
    with torch.no_grad():
        expected = maskrcnn_inference(predictor(features), labels)
        actual = predicted_class_mask_probs(predictor, features, labels)
    assert [a.shape for a in actual] == [e.shape for e in expected] == [(3, 1, 28, 28), (0, 1, 28, 28), (4, 1, 28, 28)]
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def _ignore_target() -> dict:
    """One real object at (10, 10)-(30, 30) and one ignore region at (40, 40)-(60, 60)."""
    return {"boxes": torch.tensor([[10.0, 10, 30, 30], [40, 40, 60, 60]]), "labels": torch.tensor([2, 3]),
            "masks": torch.zeros(2, 64, 64, dtype=torch.uint8), "iscrowd": torch.tensor([False, True]),
            "image_id": 5, "mosaic_tiles": torch.zeros(2, 4, dtype=torch.int64)}


def test_drop_ignored_removes_the_region_and_the_proposals_that_would_match_it() -> None:
    proposals = torch.tensor([
        [11.0, 11, 31, 31],   # on the real object: kept
        [41.0, 41, 61, 61],   # on the ignore region (IoU 0.82): dropped
        [45.0, 45, 75, 75],   # touches the region (IoU 0.14): kept, a background
        [0.0, 0, 8, 8],       # background: kept
    ])
    kept, target = drop_ignored(proposals, _ignore_target(), iou_threshold=0.5)
    assert kept.tolist() == proposals[[0, 2, 3]].tolist()
    assert target["boxes"].tolist() == [[10.0, 10, 30, 30]] and target["labels"].tolist() == [2]
    assert target["masks"].shape == (1, 64, 64) and "iscrowd" not in target
    assert target["mosaic_tiles"].shape == (2, 4) and target["image_id"] == 5  # image-level entries untouched
    untouched, same = drop_ignored(proposals, {"boxes": proposals[:1], "labels": torch.tensor([1])}, 0.5)
    assert untouched is proposals and same["labels"].tolist() == [1]


def test_roi_sampling_never_labels_an_ignore_region_as_object_or_background() -> None:
    torch.manual_seed(0)
    heads = build_detector(TEST_MODEL_CFG, num_classes=3).roi_heads
    jitter = torch.rand(200, 4) * 6 - 3
    proposals = torch.cat([torch.tensor([[40.0, 40, 60, 60]]) + jitter[:100],   # around the ignore region
                           torch.tensor([[10.0, 10, 30, 30]]) + jitter[100:]])  # around the real object
    sampled, _, labels, _ = heads.sampler([proposals], [_ignore_target()])
    region = torch.tensor([[40.0, 40, 60, 60]])
    on_region = box_iou(sampled[0], region)[:, 0] >= 0.5
    assert not on_region.any()
    assert set(labels[0].unique().tolist()) <= {0, 2} and (labels[0] == 2).any()
    # without the flag the same region is an object of class 3
    plain = {k: v for k, v in _ignore_target().items() if k != "iscrowd"}
    _, _, plain_labels, _ = heads.sampler([proposals], [plain])
    assert (plain_labels[0] == 3).any()


def test_an_image_without_objects_samples_only_background() -> None:
    heads = build_detector(TEST_MODEL_CFG, num_classes=3).roi_heads
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    sampled, matched, labels, regression = heads.sampler([torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]])], [empty])
    assert labels[0].tolist() == [0, 0] and matched[0].tolist() == [0, 0] and regression[0].shape == (2, 4)


@pytest.mark.parametrize("levels, backbone, scales", [
    (["0"], "tiny", [1 / 4]),
    (["1", "2", "pool"], "tiny", [1 / 8, 1 / 16, 1 / 32]),
    (["0", "1", "2", "3"], "resnet18", [1 / 4, 1 / 8, 1 / 16, 1 / 32]),
])
def test_roi_align_scales_come_from_the_backbone_not_the_first_batch(levels, backbone, scales) -> None:
    """torchvision infers them from the first batch it sees: a 33 px image padded to 64 would give 1/2 for 1/4."""
    model = build_detector({**TEST_MODEL_CFG, "backbone": backbone, "roi_feature_levels": levels}, 3).eval()
    for pool in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool):
        assert pool.scales == scales
        assert (pool.map_levels.k_min, pool.map_levels.k_max) == (-math.log2(scales[0]), -math.log2(scales[-1]))
    big, _ = FakeDetectionDataset(1, size=96)[0]
    with torch.no_grad():
        model([torch.rand(3, 33, 33)])  # a small first batch
        after_small = model([big])[0]
        fresh = build_detector({**TEST_MODEL_CFG, "backbone": backbone, "roi_feature_levels": levels}, 3).eval()
        fresh.load_state_dict(model.state_dict())
        straight = fresh([big])[0]
    assert model.roi_heads.box_roi_pool.scales == scales
    for key in ("boxes", "scores", "masks"):
        assert torch.equal(after_small[key], straight[key]), key


@pytest.mark.parametrize("levels", [["4"], ["0", "2"], ["1", "0"], [], ["pool", "0"]])
def test_roi_feature_levels_must_be_consecutive_fpn_maps(levels) -> None:
    from longtail_seg.models.config import resolve_model_cfg

    with pytest.raises(ValueError, match=r"model.roi_feature_levels must be (consecutive FPN maps|a non-empty list)"):
        resolve_model_cfg({"roi_feature_levels": levels})
