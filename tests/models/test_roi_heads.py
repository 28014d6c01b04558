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


@pytest.mark.parametrize("roi_heads", ["standard", "cascade"])
def test_no_proposal_in_any_image_gives_no_detections(roi_heads: str) -> None:
    """A collapsed RPN (no proposal left in the batch) yields empty detections, not a crash."""
    torch.manual_seed(0)
    model = build_detector(dict(TEST_MODEL_CFG, roi_heads=roi_heads), num_classes=3).eval()
    features = {"0": torch.rand(2, TEST_MODEL_CFG["fpn_channels"], 16, 16)}
    with torch.no_grad():
        detections = model.roi_heads(features, [torch.zeros(0, 4), torch.zeros(0, 4)], [(64, 64), (64, 64)])[0]
    assert [d["boxes"].shape for d in detections] == [(0, 4), (0, 4)]
    assert [d["masks"].shape for d in detections] == [(0, 1, 28, 28), (0, 1, 28, 28)]


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


# ---------------------------------------------------------------------------------- post-processing at LVIS size

LVIS_CLASSES, LVIS_ROIS, LVIS_IMAGE = 1203, 1000, (1600, 2400)  # image (height, width): coordinates up to 2400 px


def _lvis_head_outputs(distribution: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class probabilities [R, C+1], decoded boxes [R, C+1, 4] and proposals [R, 4] shaped like LVIS inference.

    RoIs cluster around 40 objects (so NMS suppresses). ``peaked``: trained-like softmax, background logit 12 and 20
    classes per RoI at 6..13 (the object's class among them), ~20k (RoI, class) pairs above 1e-4; ``flat``: an
    untrained classifier, logits N(0, 2.85^2), ~320k pairs above 1e-4."""
    g = torch.Generator().manual_seed(seed)
    height, width = LVIS_IMAGE
    centres = torch.rand(40, 2, generator=g) * torch.tensor([width, height])
    sizes = torch.rand(40, 2, generator=g) * 300 + 10
    objects = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    owner = torch.randint(0, 40, (LVIS_ROIS,), generator=g)
    proposals = objects[owner] + torch.randn(LVIS_ROIS, 4, generator=g) * 8
    boxes = proposals[:, None, :] + torch.randn(LVIS_ROIS, LVIS_CLASSES + 1, 4, generator=g) * 4
    if distribution == "flat":
        logits = torch.randn(LVIS_ROIS, LVIS_CLASSES + 1, generator=g) * 2.85
    else:
        logits = torch.randn(LVIS_ROIS, LVIS_CLASSES + 1, generator=g)
        logits[:, 0] += 12
        classes = torch.randint(1, LVIS_CLASSES + 1, (LVIS_ROIS, 20), generator=g)
        classes[:, 0] = LVIS_CLASSES - owner  # the object's class: ids near 1203
        logits.scatter_(1, classes, 6 + 7 * torch.rand(LVIS_ROIS, 20, generator=g))
    return logits.softmax(dim=-1), boxes, proposals


def _straightforward_postprocess(scores, boxes, image_shape, score_thresh, nms_thresh, detections_per_img):
    """The reference: every candidate (boxes clipped first, as torchvision does), one float64 NMS per class, ties
    broken by candidate index (score descending, then RoI-major candidate order)."""
    from torchvision.ops import boxes as box_ops

    num_rois, num_classes = scores.shape
    boxes = box_ops.clip_boxes_to_image(boxes, image_shape)[:, 1:].reshape(-1, 4)
    labels = torch.arange(1, num_classes).repeat(num_rois)
    scores = scores[:, 1:].reshape(-1)
    keep = torch.nonzero(scores > score_thresh).squeeze(1)
    keep = keep[box_ops.remove_small_boxes(boxes[keep], 1e-2)]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    kept = []
    by_class = torch.sort(labels, stable=True).indices
    for members in by_class.split(torch.unique_consecutive(labels[by_class], return_counts=True)[1].tolist()):
        members = members[torch.sort(scores[members], descending=True, stable=True).indices]
        visit_order = -torch.arange(len(members), dtype=torch.float64)  # nms must visit `members` in this order
        kept.append(members[box_ops.nms(boxes[members].double(), visit_order, nms_thresh)])
    kept = torch.cat(kept).sort().values if kept else keep[:0]
    kept = kept[torch.sort(scores[kept], descending=True, stable=True).indices][:detections_per_img]
    return {"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]}


def _lvis_heads() -> StandardRoIHeads:
    heads = build_detector(TEST_MODEL_CFG, num_classes=3).roi_heads
    heads.score_thresh, heads.nms_thresh, heads.detections_per_img = 1e-4, 0.5, 300
    return heads


def _assert_same_detections(ours: dict, reference: dict) -> None:
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(ours[key], reference[key]), key


@pytest.mark.parametrize("distribution, candidates", [("peaked", (15_000, 25_000)), ("flat", (250_000, 400_000))])
def test_postprocess_at_lvis_size_equals_nms_over_every_candidate(distribution, candidates) -> None:
    """1203 classes, 1000 RoIs, 300 detections: the same boxes, scores, labels and order as the straightforward
    path, for a trained-like and an untrained score distribution."""
    scores, boxes, proposals = _lvis_head_outputs(distribution)
    assert candidates[0] < int((scores[:, 1:] > 1e-4).sum()) < candidates[1]
    heads = _lvis_heads()
    ours = heads.postprocess_detections(scores, boxes, [proposals], [LVIS_IMAGE])[0]
    reference = _straightforward_postprocess(scores, boxes, LVIS_IMAGE, 1e-4, 0.5, 300)
    assert len(ours["boxes"]) == 300 and ours["labels"].max() > 1190
    _assert_same_detections(ours, reference)


def test_postprocess_edge_cases_at_lvis_class_ids() -> None:
    """No candidate, fewer than 300, one class only, duplicate boxes with equal scores, zero-area boxes."""
    heads = _lvis_heads()
    scores, boxes, proposals = _lvis_head_outputs("peaked", seed=1)
    scores, boxes, proposals = scores[:200], boxes[:200], proposals[:200]
    nothing = torch.zeros_like(scores)
    nothing[:, 0] = 1
    one_class = nothing.clone()
    one_class[:, 1203] = torch.rand(200, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.01
    few = torch.where(scores >= scores[:, 1:].flatten().topk(150).values[-1], scores, torch.zeros(()))  # 150
    # RoIs 0 and 1 tie (0.3) with boxes of IoU 0.6, RoI 2 (0.2) overlaps RoI 1's by 0.6 and RoI 0's by 0.33: visiting
    # RoI 0 first keeps RoIs 0 and 2, visiting RoI 1 first would keep RoI 1 alone. RoIs 3..199 duplicate RoI 0.
    ties, tie_boxes = nothing.clone(), boxes.clone()
    ties[:3, 1203] = torch.tensor([0.3, 0.3, 0.2])
    ties[3:, 1203] = 0.3
    tie_boxes[:3, 1203] = torch.tensor([[100.0, 100, 200, 200], [125, 100, 225, 200], [150, 100, 250, 200]])
    tie_boxes[3:, 1203] = tie_boxes[0, 1203]
    zero_area = boxes.clone()
    zero_area[::2, :, 2] = zero_area[::2, :, 0]  # every second RoI's boxes have zero width
    cases = {"nothing": (nothing, boxes), "few": (few, boxes), "one class": (one_class, boxes),
             "ties": (ties, tie_boxes), "zero area": (scores, zero_area)}
    for name, (case_scores, case_boxes) in cases.items():
        ours = heads.postprocess_detections(case_scores, case_boxes, [proposals], [LVIS_IMAGE])[0]
        reference = _straightforward_postprocess(case_scores, case_boxes, LVIS_IMAGE, 1e-4, 0.5, 300)
        _assert_same_detections(ours, reference)
        if name == "nothing":
            assert [t.shape for t in ours.values()] == [(0, 4), (0,), (0,)]
        if name == "few":
            assert 0 < len(ours["boxes"]) < 300
        if name == "one class":
            assert set(ours["labels"].tolist()) == {1203} and len(ours["boxes"]) > 1
        if name == "ties":
            assert ours["boxes"].tolist() == tie_boxes[[0, 2], 1203].tolist()
        if name == "zero area":
            assert len(ours["boxes"]) == 300 and bool(((ours["boxes"][:, 2] - ours["boxes"][:, 0]) > 0).all())
