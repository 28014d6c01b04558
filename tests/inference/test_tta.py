"""Multi-scale + flip testing: single-view parity with single-scale inference, flip and resize geometry, the
merge rules (NMS, soft-NMS, scale-adaptive ranges), mask voting, the test config, and the file-level entry; the
results equal those of the straightforward path (every view's features kept, voted masks pasted into the full
image) while at most one view's features are alive at a time."""

from __future__ import annotations

import json
import weakref

import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from longtail_seg.inference.config import TestConfig
from longtail_seg.inference.predict import predict_dataset
from longtail_seg.inference.run import predict_annotation_file
from longtail_seg.inference.tta import (
    View,
    _to_original,
    _to_view,
    augmented_views,
    in_size_range,
    merge_detections,
    predict_dataset_multiscale,
    run_view,
    vote_masks,
)
from longtail_seg.models.detector import build_detector, save_checkpoint
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset
from tests.inference.test_predict import _paste_reference


def _model(max_dets: int = 40) -> torch.nn.Module:
    torch.manual_seed(3)
    model = build_detector(TEST_MODEL_CFG, num_classes=3).eval()
    model.roi_heads.detections_per_img = max_dets
    return model


def _sorted(results: list[dict]) -> list[tuple]:
    return sorted((r["image_id"], r["category_id"], round(r["score"], 6), tuple(r["bbox"]),
                   r["segmentation"]["counts"]) for r in results)


def test_one_unflipped_view_at_the_image_size_equals_single_scale_inference():
    model, dataset = _model(), FakeDetectionDataset(num_images=3, size=64)
    category_of = lambda label: 100 + label  # noqa: E731
    single = predict_dataset(model, dataset, "cpu", batch_size=2, max_dets=40, category_of=category_of)
    cfg = TestConfig(min_size=64, max_size=200, batch_size=2, max_dets=40, scales=(64,))
    multi = predict_dataset_multiscale(model, dataset, cfg, "cpu", category_of=category_of)
    assert len(single) > 10 and _sorted(multi) == _sorted(single)


def test_flipped_view_of_a_flipped_image_gives_the_mirrored_detections():
    model, (image, _) = _model(), FakeDetectionDataset(num_images=1, size=64)[0]
    _, flipped = run_view(model, [image.flip(-1)], View(64, flip=True), max_size=200)
    _, plain = run_view(model, [image], View(64, flip=False), max_size=200)
    assert torch.equal(flipped[0]["labels"], plain[0]["labels"])
    mirrored = torch.stack([64 - plain[0]["boxes"][:, 2], plain[0]["boxes"][:, 1],
                            64 - plain[0]["boxes"][:, 0], plain[0]["boxes"][:, 3]], dim=1)
    assert torch.allclose(flipped[0]["boxes"], mirrored, atol=1e-4)


def test_resized_views_map_boxes_back_into_the_original_image():
    model, (image, _) = _model(), FakeDetectionDataset(num_images=1, size=64)[0]
    features, detections = run_view(model, [image[:, :, :48]], View(96, flip=True), max_size=400)
    assert features.image_sizes == [(128, 96)] and features.factors == [(2.0, 2.0)]
    boxes = detections[0]["boxes"]
    assert len(boxes) and boxes[:, 2].max() <= 48 + 1e-4 and boxes[:, 3].max() <= 64 + 1e-4


def test_box_mapping_round_trips():
    boxes = torch.tensor([[1.0, 2.0, 10.0, 20.0], [30.0, 5.0, 47.5, 9.0]])
    for flip in (False, True):
        in_view = _to_view(boxes, (1.5, 2.0), view_width=72, flip=flip)
        assert torch.allclose(_to_original(in_view, (1.5, 2.0), view_width=72, flip=flip), boxes)
    flipped = _to_view(boxes, (1.0, 1.0), view_width=48, flip=True)
    assert flipped[0].tolist() == [38.0, 2.0, 47.0, 20.0]


def test_views_and_their_size_ranges():
    assert augmented_views([64, 96], flip=True) == [View(64, False), View(64, True), View(96, False), View(96, True)]
    cfg = TestConfig(scales=(64, 96), flip=True, scale_ranges=((0, 32), (16, 1e9)))
    assert cfg.view_size_ranges() == [(0, 32), (0, 32), (16, 1e9), (16, 1e9)]


def _dets(boxes, scores, labels) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


def test_merge_rules_on_hand_made_views():
    # view 0 (small scale) and view 1 (large scale) see the same object (IoU 0.6) and view 1 a small one
    small = _dets([[0, 0, 10, 10]], [0.9], [1])
    large = _dets([[2.5, 0, 12.5, 10], [30, 30, 34, 34]], [0.8, 0.7], [1, 1])
    merged = merge_detections([small, large], [None, None], "nms")
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.7])  # the 0.8 duplicate is suppressed
    soft = merge_detections([small, large], [None, None], "soft_nms")
    assert soft["scores"].tolist() == pytest.approx([0.9, 0.7, 0.8 * 0.4])  # decayed, not deleted
    # scale-adaptive: the small scale keeps objects >= 8 px, the large one objects < 8 px
    adaptive = merge_detections([small, large], [(8, 1e9), (0, 8)], "nms")
    assert adaptive["boxes"].tolist() == [[0, 0, 10, 10], [30, 30, 34, 34]]
    assert merge_detections([small, large], [None, None], "nms", max_dets=1)["scores"].tolist() == pytest.approx([0.9])
    with pytest.raises(ValueError, match="merge method"):
        merge_detections([small], [None], "wbf")
    assert in_size_range(torch.tensor([[0.0, 0, 4, 9]]), (6, 7)).tolist() == [True]  # sqrt(36) = 6


def _mirror(boxes: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def test_mask_voting_averages_views_and_undoes_the_flip():
    model, (image, _) = _model(), FakeDetectionDataset(num_images=1, size=64)[0]
    plain_view, plain = run_view(model, [image], View(64, flip=False), max_size=200)
    boxes, labels = [plain[0]["boxes"][:5]], [plain[0]["labels"][:5]]
    direct = model.roi_heads.class_mask_probs(plain_view.features, boxes, labels, plain_view.image_sizes)[0]
    assert torch.allclose(vote_masks(model, [plain_view], boxes, labels)[0], direct)
    # the flipped view of the mirrored image sees the original pixels: its masks of the mirrored boxes are the
    # direct masks, mirrored back into the mirrored image's frame
    mirrored_view, _ = run_view(model, [image.flip(-1)], View(64, flip=True), max_size=200)
    from_mirror = vote_masks(model, [mirrored_view], [_mirror(boxes[0], 64)], labels)[0]
    assert torch.allclose(from_mirror, direct.flip(-1), atol=1e-5)
    # voting over the plain and the flipped view of one image averages the two, the flipped one flipped back
    flip_view, _ = run_view(model, [image], View(64, flip=True), max_size=200)
    seen_flipped = model.roi_heads.class_mask_probs(flip_view.features, [_mirror(boxes[0], 64)], labels,
                                                    flip_view.image_sizes)[0]
    voted = vote_masks(model, [plain_view, flip_view], boxes, labels)[0]
    assert torch.allclose(voted, (direct + seen_flipped.flip(-1)) / 2, atol=1e-5)
    # a resized view maps the boxes into its own pixels
    resized_view, _ = run_view(model, [image], View(96, flip=False), max_size=200)
    in_resized = model.roi_heads.class_mask_probs(resized_view.features, [boxes[0] * 1.5], labels,
                                                  resized_view.image_sizes)[0]
    assert torch.allclose(vote_masks(model, [resized_view], boxes, labels)[0], in_resized, atol=1e-5)


def test_annotation_file_entry_runs_the_multiscale_path(small_lvis, tmp_path):
    annotations, image_root = small_lvis
    model = _model()
    checkpoint = tmp_path / "model.pth"
    save_checkpoint(checkpoint, model, model.model_cfg, [1, 2, 3])
    cfg = TestConfig.from_dict({"min_size": 32, "max_size": 200, "batch_size": 2, "max_dets": 20,
                                "scales": [32, 48], "flip": True, "merge": "soft_nms", "mask_voting": True})
    results, num_images, _ = predict_annotation_file(checkpoint, annotations, image_root, cfg)
    images = {im["id"]: im for im in json.loads(annotations.read_text())["images"]}
    assert num_images == len(images) and results
    for result in results:
        image = images[result["image_id"]]
        assert result["segmentation"]["size"] == [image["height"], image["width"]]
        x, y, w, h = result["bbox"]
        assert -1e-3 <= x and x + w <= image["width"] + 1e-3 and y + h <= image["height"] + 1e-3
    assert max(sum(r["image_id"] == i for r in results) for i in images) <= 20


def test_views_without_detections_merge_to_nothing_and_give_no_results():
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    for method in ("nms", "soft_nms"):
        merged = merge_detections([empty, empty], [None, None], method)
        assert merged["boxes"].shape == (0, 4) and merged["scores"].shape == (0,)
    model = _model()
    model.roi_heads.score_thresh = 1.1  # nothing passes
    cfg = TestConfig(min_size=64, max_size=200, scales=(64, 80), flip=True, mask_voting=True)
    results = predict_dataset_multiscale(model, FakeDetectionDataset(num_images=2, size=64), cfg,
                                         category_of=lambda label: label)
    assert results == []


def _straightforward_multiscale(model, dataset, cfg: TestConfig, category_of) -> list[dict]:
    """The multi-scale path as it was before bounding its memory, kept as the reference: one batch of the whole
    dataset, every view's features kept, masks voted over the views, pasted into the full image, encoded."""
    views, ranges = augmented_views(cfg.test_scales, cfg.flip), cfg.view_size_ranges()
    images, targets = zip(*(dataset[index] for index in range(len(dataset))))
    with torch.inference_mode():
        features, per_view = zip(*(run_view(model, list(images), view, cfg.max_size) for view in views))
        merged = [merge_detections([detections[i] for detections in per_view], ranges, cfg.merge, cfg.merge_iou,
                                   cfg.max_dets, cfg.soft_nms_method, model.roi_heads.score_thresh)
                  for i in range(len(images))]
        voting_views = list(features) if cfg.mask_voting else [features[0]]
        probs = vote_masks(model, voting_views, [m["boxes"] for m in merged], [m["labels"] for m in merged])
    results = []
    for image, target, detections, prob in zip(images, targets, merged, probs):
        size = tuple(image.shape[-2:])
        full = dict(detections, masks=paste_masks_in_image(prob, detections["boxes"], size, padding=1))
        results += _paste_reference(target["image_id"], full, size, category_of)
    return results


class LiveFeatureCounter(torch.nn.Module):
    """Wraps a backbone: counts its calls and, at each call, how many earlier calls' features are still alive."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone, self.out_channels = backbone, backbone.out_channels
        self.outputs: list[weakref.ref] = []
        self.calls, self.most_alive = 0, 0

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.most_alive = max(self.most_alive, sum(ref() is not None for ref in self.outputs))
        self.calls += 1
        features = self.backbone(images)
        self.outputs.append(weakref.ref(features["0"]))
        return features


@pytest.mark.parametrize("settings", [
    {"merge": "soft_nms", "mask_voting": True, "scale_ranges": [[0, 40], [8, 1e9], [0, 1e9]]},
    {"merge": "nms", "mask_voting": False},
])
def test_results_equal_keeping_every_view_while_one_view_at_a_time_is_alive(settings):
    model = _model()
    dataset = FakeDetectionDataset(num_images=2, size=64, sizes=[64, 48])
    cfg = TestConfig.from_dict({"max_size": 200, "batch_size": 2, "max_dets": 40, "scales": [48, 64, 80],
                                "flip": True, **settings})
    category_of = lambda label: 1200 + label  # noqa: E731
    expected = _straightforward_multiscale(model, dataset, cfg, category_of)
    model.backbone = LiveFeatureCounter(model.backbone)
    results = predict_dataset_multiscale(model, dataset, cfg, "cpu", category_of=category_of)
    assert len(results) > 30 and results == expected
    views = 6
    # voting recomputes every view but the largest one, whose features are kept from the box pass
    assert model.backbone.calls == (2 * views - 1 if cfg.mask_voting else views)
    assert model.backbone.most_alive == 0  # no view's features alive while another view's backbone runs


def _per_class_nms_float64(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou: float) -> list[int]:
    """Reference merge: torchvision's nms once per class on float64 boxes, then all kept by score (ties: index)."""
    from torchvision.ops import nms

    kept = []
    for label in labels.unique():
        members = torch.nonzero(labels == label).squeeze(1)
        kept += members[nms(boxes[members].double(), scores[members].double(), iou)].tolist()
    return sorted(kept, key=lambda i: (-float(scores[i]), i))


def test_nms_merge_is_per_class_exact_at_lvis_ids_and_sizes():
    """The multi-scale 'nms' merge keeps what per-class float64 NMS keeps, in its order, with class ids near 1203 and
    crowded few-pixel boxes near 2400 px (models/postprocess.py's tests show where float32 label offsets fail)."""
    generator = torch.Generator().manual_seed(3)
    views = []
    for _ in range(3):
        corner = 2300 + torch.rand((300, 2), generator=generator) * 40
        size = torch.rand((300, 2), generator=generator) * 3 + 0.5
        views.append({"boxes": torch.cat([corner, corner + size], dim=1),
                      "scores": torch.rand(300, generator=generator),
                      "labels": torch.randint(1190, 1204, (300,), generator=generator)})
    merged = merge_detections(views, [None] * 3, "nms", iou_threshold=0.5, max_dets=300)
    boxes = torch.cat([v["boxes"] for v in views])
    scores = torch.cat([v["scores"] for v in views])
    labels = torch.cat([v["labels"] for v in views])
    expected = _per_class_nms_float64(boxes, scores, labels, 0.5)[:300]
    assert len(expected) >= 100
    assert torch.equal(merged["boxes"], boxes[expected]) and torch.equal(merged["labels"], labels[expected])
