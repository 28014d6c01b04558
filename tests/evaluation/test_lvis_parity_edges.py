"""Parity with the reference lvis-api (0.5.3) on its edge cases: zero-width and zero-height boxes, empty masks,
images without detections, more than 300 detections per image, tied scores; and the deliberate departures
(detections of images or categories the ground truth lacks are errors), read from a file as the evaluate rule does."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from longtail_seg.evaluation.lvis_eval import evaluate_lvis
from tests.evaluation.hand_lvis import GROUP_KEYS, SIZE, box_mask, detection, gt_as_detections

COMPARED = GROUP_KEYS + ("APs", "APm", "APl")


@pytest.fixture
def reference(monkeypatch: pytest.MonkeyPatch):
    """lvis-api's evaluator as a function (ground-truth path, results) -> {iou_type: {metric: fraction}}."""
    import lvis  # a test dependency: a missing install fails here instead of skipping

    monkeypatch.setattr(np, "float", float, raising=False)  # lvis 0.5.3 uses np.float, removed in NumPy 1.24
    monkeypatch.setattr(np, "int", int, raising=False)

    def evaluate(gt_path: Path, results: list[dict]) -> dict[str, dict[str, float]]:
        gt = lvis.LVIS(str(gt_path))
        detections = lvis.LVISResults(gt, copy.deepcopy(results))
        metrics = {}
        for iou_type in ("bbox", "segm"):
            evaluator = lvis.LVISEval(gt, detections, iou_type)
            evaluator.run()
            metrics[iou_type] = evaluator.get_results()
        return metrics

    return evaluate


def assert_same_as_reference(ours: dict, expected: dict) -> None:
    for iou_type in ("bbox", "segm"):
        for key in COMPARED:
            ours_fraction = -1.0 if ours[iou_type][key] is None else ours[iou_type][key] / 100
            assert ours_fraction == pytest.approx(expected[iou_type][key], abs=1e-9), (iou_type, key)


def from_file(tmp_path: Path, results: list[dict]) -> Path:
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(results))
    return path


def evaluate_both_ways(gt_path: Path, results: list[dict], tmp_path: Path) -> dict:
    """Our metrics from a file (hotcoco reads it) and from the list in memory, which must agree."""
    from_disk = evaluate_lvis(gt_path, from_file(tmp_path, results))
    in_memory = evaluate_lvis(gt_path, copy.deepcopy(results))
    assert from_disk == in_memory
    return from_disk


@pytest.mark.parametrize("box", [[30, 30, 0, 20], [30, 30, 20, 0], [2, 2, 0, 20], [2, 2, 0, 0]],
                         ids=["zero-width miss", "zero-height miss", "zero-width on an object", "empty box"])
def test_zero_area_boxes_are_dropped_like_lvis(hand_gt: Path, tmp_path: Path, reference, box: list[int]) -> None:
    # A top-scored detection of cat 1 on image 1 with a degenerate box (its mask is a real 20x20 square): lvis-api
    # keeps annotations of area > 0 only, and a detection's area is its box's, so it counts for neither IoU type.
    degenerate = detection(1, 1, box_mask(SIZE, SIZE, 40, 2, 20, 20), 0.99)
    degenerate["bbox"] = box
    results = gt_as_detections(hand_gt) + [degenerate]
    ours = evaluate_both_ways(hand_gt, results, tmp_path)
    expected = reference(hand_gt, results)
    assert expected["segm"]["APr"] == pytest.approx(1.0)  # the mask alone would have been a false positive
    assert_same_as_reference(ours, expected)


def test_zero_area_boxes_count_toward_the_300_cap_like_lvis(hand_gt: Path, tmp_path: Path, reference) -> None:
    # 300 zero-width detections above image 1's objects fill its budget before they are dropped: image 1's true
    # positives are cut by the cap, so cat 1 and cat 3 lose recall, as in lvis-api.
    degenerate = [dict(detection(1, 1, box_mask(SIZE, SIZE, 40, 2, 20, 20), 0.9 + i * 1e-4), bbox=[40, 2, 0, 20])
                  for i in range(300)]
    results = degenerate + gt_as_detections(hand_gt)
    ours = evaluate_both_ways(hand_gt, results, tmp_path)
    expected = reference(hand_gt, results)
    assert expected["bbox"]["APr"] < 0.9  # the cap did bite
    assert_same_as_reference(ours, expected)


def test_empty_masks_are_misses_like_lvis(hand_gt: Path, tmp_path: Path, reference) -> None:
    # Detections whose RLE mask is all zeros but whose box is real: a false positive for segm, while for bbox the
    # first one matches image 1's cat-3 object (and the later copy of that object becomes the false positive).
    nothing = np.zeros((SIZE, SIZE), np.uint8)
    empty = [detection(1, 3, nothing, 0.95), detection(3, 1, nothing, 0.2)]
    for item, box in zip(empty, ([30, 30, 20, 20], [40, 40, 10, 10])):
        item["bbox"] = box
    results = gt_as_detections(hand_gt) + empty
    ours = evaluate_both_ways(hand_gt, results, tmp_path)
    expected = reference(hand_gt, results)
    assert expected["segm"]["APf"] < expected["bbox"]["APf"] < 1.0
    assert_same_as_reference(ours, expected)


def test_images_without_detections_like_lvis(hand_gt: Path, tmp_path: Path, reference) -> None:
    # Image 2 gets no detection at all: its objects are missed, nothing else breaks.
    results = [r for r in gt_as_detections(hand_gt) if r["image_id"] != 2]
    ours = evaluate_both_ways(hand_gt, results, tmp_path)
    expected = reference(hand_gt, results)
    assert 0 < expected["bbox"]["AP"] < 1
    assert_same_as_reference(ours, expected)


def test_more_than_300_per_image_keeps_the_best_scored_like_lvis(hand_gt: Path, tmp_path: Path, reference) -> None:
    # 320 detections on image 1, the true ones in the middle of the file and of the scores: only the 300 best count.
    rng = np.random.default_rng(3)
    misses = [detection(1, int(rng.choice([1, 2, 3])), box_mask(SIZE, SIZE, 40 + i % 4, 40 + i // 4 % 4, 20, 20),
                        float(rng.uniform(0.2, 0.8))) for i in range(318)]
    results = misses[:150] + gt_as_detections(hand_gt) + misses[150:]
    ours = evaluate_both_ways(hand_gt, results, tmp_path)
    assert_same_as_reference(ours, reference(hand_gt, results))


def test_tied_scores_rank_like_lvis(hand_gt: Path, tmp_path: Path, reference) -> None:
    # Every detection scores 0.5: ties are broken by file order within an image and by image id across images,
    # in both evaluators; false positives listed before, between and after the true ones.
    fps = [detection(i, c, box_mask(SIZE, SIZE, 40, 2, 20, 20), 0.5) for i, c in ((1, 2), (2, 3), (3, 4), (2, 4))]
    results = fps[:1] + gt_as_detections(hand_gt)[:3] + fps[1:3] + gt_as_detections(hand_gt)[3:] + fps[3:]
    ours = evaluate_both_ways(hand_gt, results, tmp_path)
    expected = reference(hand_gt, results)
    assert 0 < expected["bbox"]["AP"] < 1
    assert_same_as_reference(ours, expected)


def test_unknown_image_is_an_error_like_lvis(hand_gt: Path, tmp_path: Path, reference) -> None:
    results = gt_as_detections(hand_gt) + [detection(99, 1, box_mask(SIZE, SIZE, 2, 2, 20, 20), 0.5)]
    with pytest.raises(AssertionError, match="do not correspond"):
        reference(hand_gt, results)
    with pytest.raises(ValueError, match=r"predictions\.json: result 6 has image_id 99 that is not in the ground"):
        evaluate_lvis(hand_gt, from_file(tmp_path, results))


def test_unknown_category_is_an_error_where_lvis_drops_it(hand_gt: Path, tmp_path: Path, reference) -> None:
    # Deliberate: lvis-api silently ignores category 77 (not among its categories); we name it, since it means the
    # model's label -> category mapping or the dataset is wrong.
    stray = detection(1, 77, box_mask(SIZE, SIZE, 40, 2, 20, 20), 0.9)
    results = gt_as_detections(hand_gt) + [stray]
    assert reference(hand_gt, results)["bbox"]["AP"] == pytest.approx(1.0)  # dropped there
    with pytest.raises(ValueError, match=r"predictions\.json: result 6 has category_id 77 that is not in the ground"):
        evaluate_lvis(hand_gt, from_file(tmp_path, results))


def test_ties_at_the_300_cap_keep_file_order_like_lvis(hand_gt: Path, tmp_path: Path, reference) -> None:
    # 300 misses and then image 1's true detections, all scored 0.5: the cap keeps the first 300 in file order.
    misses = [detection(1, 1 + 2 * (i % 2), box_mask(SIZE, SIZE, 40 + i % 4, 40 + i // 4 % 4, 20, 20), 0.5)
              for i in range(300)]
    results = misses + gt_as_detections(hand_gt)
    ours = evaluate_both_ways(hand_gt, results, tmp_path)
    expected = reference(hand_gt, results)
    assert expected["bbox"]["APr"] < 0.5  # image 1's cat-1 object was cut by the cap
    assert_same_as_reference(ours, expected)
