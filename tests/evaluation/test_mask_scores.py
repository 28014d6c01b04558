"""Results of a MaskIoU head carry a ``mask_score``: the segm evaluation ranks by it, the bbox evaluation by the
class ``score`` (in memory and from a file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longtail_seg.evaluation.lvis_eval import evaluate_lvis, has_mask_scores
from tests.evaluation.hand_lvis import false_positive, gt_as_detections


def test_segm_ranks_by_the_mask_score_and_bbox_by_the_class_score(hand_gt: Path, tmp_path: Path) -> None:
    # cat 2's false positive on image 1 outscores its true positive by class score (0.9 > 0.5): bbox APc halves.
    # Its mask score (0.1) is below the true positive's (0.5): segm ranks it last and APc stays 100.
    results = [dict(result, mask_score=0.5) for result in gt_as_detections(hand_gt)]
    results.append(dict(false_positive(1, 2), mask_score=0.1))
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(results))
    for given in (results, path):
        assert has_mask_scores(given)
        metrics = evaluate_lvis(hand_gt, given)
        assert metrics["bbox"]["APc"] == pytest.approx(50.0)
        assert metrics["segm"]["APc"] == pytest.approx(100.0)
        assert list(metrics) == ["bbox", "segm"]


def test_results_without_mask_scores_evaluate_both_types_by_the_class_score(hand_gt: Path) -> None:
    results = gt_as_detections(hand_gt) + [false_positive(1, 2)]
    assert not has_mask_scores(results) and not has_mask_scores([])
    metrics = evaluate_lvis(hand_gt, results)
    assert metrics["bbox"]["APc"] == metrics["segm"]["APc"] == pytest.approx(50.0)
