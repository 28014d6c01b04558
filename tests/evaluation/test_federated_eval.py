"""The federated evaluator with a pluggable IoU: with the mask IoU it must equal hotcoco's segm metrics, on random
LVIS-style splits (several objects per image and category, every area range, negative and not-exhaustive categories,
score ties, IoUs exactly at thresholds) and by hand; with boundary IoU it matches later or never where the boundary
is worse than the mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longtail_seg.evaluation.boundary_iou import boundary_ap_iou
from longtail_seg.evaluation.federated_eval import evaluate_federated
from longtail_seg.evaluation.lvis_eval import (
    METRIC_KEYS,
    evaluate_detections,
    load_detections,
    load_ground_truth,
)
from longtail_seg.evaluation.protocols import boundary_iou_of, mask_iou
from tests.evaluation.hand_lvis import annotation, box_mask, detection

IMAGE = 128  # large enough for all three area ranges (> 96^2 = 9216 px)


def random_split(tmp_path: Path, seed: int) -> tuple[Path, list[dict]]:
    """A random LVIS-style ground truth of 4 images and 5 categories, and detections near and away from its objects."""
    rng = np.random.default_rng(seed)
    frequencies = ["r", "c", "f", "f", "c"]
    images, annotations, detections = [], [], []
    for image_id in range(1, 5):
        present = sorted(rng.choice(5, size=int(rng.integers(1, 4)), replace=False) + 1)
        absent = [c for c in range(1, 6) if c not in present]
        negatives = [int(c) for c in absent if rng.random() < 0.5]
        not_exhaustive = [int(c) for c in present if rng.random() < 0.3]
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": IMAGE, "width": IMAGE,
                       "neg_category_ids": negatives, "not_exhaustive_category_ids": not_exhaustive})
        for category in present:
            for _ in range(int(rng.integers(1, 4))):
                side = int(rng.choice([12, 20, 40, 110]))  # small, small, medium, large
                x, y = (int(v) for v in rng.integers(0, IMAGE - side + 1, 2))
                mask = box_mask(IMAGE, IMAGE, x, y, side, side)
                annotations.append(annotation(len(annotations) + 1, image_id, int(category), mask))
                for _ in range(int(rng.integers(0, 4))):  # detections near the object, some at exact IoUs
                    w = max(1, side - int(rng.integers(0, side // 2 + 1)))
                    h = max(1, side - int(rng.integers(0, side // 3 + 1)))
                    dx, dy = int(rng.integers(0, side - w + 1)), int(rng.integers(0, side - h + 1))
                    score = float(rng.choice([0.3, 0.5, 0.7])) if rng.random() < 0.3 else float(rng.random())
                    label = int(category) if rng.random() < 0.85 else int(rng.integers(1, 6))
                    detections.append(detection(image_id, label, box_mask(IMAGE, IMAGE, x + dx, y + dy, w, h), score))
        for _ in range(int(rng.integers(0, 5))):  # detections anywhere, any category
            side = int(rng.integers(4, 60))
            x, y = (int(v) for v in rng.integers(0, IMAGE - side + 1, 2))
            detections.append(detection(image_id, int(rng.integers(1, 6)), box_mask(IMAGE, IMAGE, x, y, side, side),
                                        float(rng.random())))
    categories = [{"id": c, "name": f"cat{c}", "frequency": frequencies[c - 1]} for c in range(1, 6)]
    path = tmp_path / f"gt_{seed}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, detections


def both(gt_path: Path, detections: list[dict], iou_fn=None) -> tuple[dict, dict]:
    """hotcoco's segm metrics and ours (mask IoU unless ``iou_fn``) on the same loaded detections, read from hotcoco
    or passed as dicts."""
    gt = load_ground_truth(gt_path)
    loaded = load_detections(gt, detections, ("segm",))
    reference = evaluate_detections(gt, loaded, ("segm",))["segm"]
    iou_fn = iou_fn or (lambda image, dts, gts: mask_iou(image, dts, gts, gt))
    ours = evaluate_federated(gt, loaded.results, iou_fn)  # read from hotcoco one image at a time
    anns = loaded.results.load_anns(loaded.results.get_ann_ids())
    assert evaluate_federated(gt, anns, iou_fn) == ours  # the same detections as a list of dicts
    return reference, ours


def assert_same(reference: dict, ours: dict) -> None:
    for key in METRIC_KEYS:
        if reference[key] is None:
            assert ours[key] is None, key
        else:
            assert ours[key] == pytest.approx(reference[key], abs=1e-9), key


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1))
def test_mask_iou_equals_hotcoco_segm_on_random_splits(tmp_path: Path, seed: int) -> None:
    gt_path, detections = random_split(tmp_path, seed)
    assert_same(*both(gt_path, detections))


def test_mask_iou_equals_hotcoco_segm_with_ties_and_exact_thresholds(hand_gt: Path) -> None:
    # image 1 cat 3's object is the 20x20 square at (30, 30): 20x15 inside it has IoU 0.75 exactly, 20x10 0.5;
    # equal scores tie across images and within one
    detections = [
        detection(1, 3, box_mask(64, 64, 30, 30, 20, 15), 0.6),
        detection(1, 3, box_mask(64, 64, 30, 30, 20, 10), 0.6),
        detection(2, 3, box_mask(64, 64, 30, 30, 20, 20), 0.6),
        detection(1, 1, box_mask(64, 64, 2, 2, 20, 20), 0.9),
        detection(3, 1, box_mask(64, 64, 30, 35, 20, 15), 0.9),
        detection(2, 4, box_mask(64, 64, 0, 0, 5, 5), 0.95),  # negative category of image 2: a false positive
    ]
    reference, ours = both(hand_gt, detections)
    assert_same(reference, ours)
    assert 0 < ours["AP"] < 100


def test_no_detections_and_no_ground_truth_of_a_group(hand_gt: Path) -> None:
    reference, ours = both(hand_gt, [])
    assert_same(reference, ours)
    assert ours["AP"] == 0.0 and ours["APm"] is None


def test_boundary_iou_pruned_equals_unpruned(tmp_path: Path) -> None:
    gt_path, detections = random_split(tmp_path, 7)
    gt = load_ground_truth(gt_path)
    loaded = load_detections(gt, detections, ("segm",))
    anns = loaded.results.load_anns(loaded.results.get_ann_ids())

    def unpruned(image, dts, gts):
        return boundary_ap_iou([d["segmentation"] for d in dts], [g["segmentation"] for g in gts], 0.0)

    assert evaluate_federated(gt, anns, boundary_iou_of(gt)) == evaluate_federated(gt, anns, unpruned)


def test_boundary_ap_by_hand(tmp_path: Path) -> None:
    # one 64x64 image (band d = round(0.02 * 90.5) = 2), one object: the 40x40 square at (10, 10). The detection is
    # the square with a 2 x 5 px notch cut into each side's middle: mask IoU 1560 / 1600 = 0.975, but its boundary
    # moves inward along the notches.
    size = 64
    gt_mask = box_mask(size, size, 10, 10, 40, 40)
    dt_mask = gt_mask.copy()
    dt_mask[10:12, 28:33] = 0
    dt_mask[48:50, 28:33] = 0
    dt_mask[28:33, 10:12] = 0
    dt_mask[28:33, 48:50] = 0
    images = [{"id": 1, "file_name": "1.png", "height": size, "width": size, "neg_category_ids": [],
               "not_exhaustive_category_ids": []}]
    data = {"images": images, "annotations": [annotation(1, 1, 1, gt_mask)],
            "categories": [{"id": 1, "name": "a", "frequency": "r"}]}
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(data))
    dets = [detection(1, 1, dt_mask, 0.9)]
    gt = load_ground_truth(gt_path)
    combined = boundary_ap_iou([dets[0]["segmentation"]], [data["annotations"][0]["segmentation"]])[0, 0]
    reference, _ = both(gt_path, dets)
    _, boundary = both(gt_path, dets, boundary_iou_of(gt))
    assert reference["AP"] == pytest.approx(100.0)  # mask IoU 0.975 passes every threshold
    thresholds = np.linspace(0.5, 0.95, 10)
    passed = np.count_nonzero(combined >= thresholds - 1e-12)
    assert 0 < passed < 10  # the boundary IoU fails the strictest thresholds only
    assert boundary["AP"] == pytest.approx(100.0 * passed / 10)
