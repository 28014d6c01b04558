"""Results of a MaskIoU head carry a ``mask_score``: the segm evaluation ranks by it, the bbox evaluation by the
class ``score`` (in memory and from a file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longtail_seg.evaluation.lvis_eval import evaluate_lvis, has_mask_scores, load_ground_truth, summary_metrics
from longtail_seg.evaluation.protocols import VARIANTS, evaluate_protocol
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


@pytest.mark.parametrize("protocol", ["standard", "fixed", "boundary", "challenge2021"])
def test_every_protocol_ranks_masks_by_the_mask_score(hand_gt: Path, tmp_path: Path, protocol: str) -> None:
    # The workflow's evaluate rule goes through evaluate_protocol: a MaskIoU head's mask scores must reach it too,
    # and the per-type evaluators handed back (per-category AP, TIDE) must be the mask-scored ones.
    results = [dict(result, mask_score=0.5) for result in gt_as_detections(hand_gt)]
    results.append(dict(false_positive(1, 2), mask_score=0.1))
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(results))
    evaluators: dict = {}
    metrics, count = evaluate_protocol(load_ground_truth(hand_gt), path, protocol, evaluators=evaluators)
    assert count == len(results)
    assert metrics["bbox"]["APc"] == pytest.approx(50.0)
    assert metrics["segm"]["APc"] == pytest.approx(100.0)
    suffixes = [suffix for suffix, _, _ in VARIANTS[protocol]]
    plain, _ = evaluate_protocol(load_ground_truth(hand_gt), [{k: v for k, v in r.items() if k != "mask_score"}
                                                              for r in results], protocol)
    assert {t: sorted(m) for t, m in metrics.items()} == {t: sorted(m) for t, m in plain.items()}
    assert plain["segm"]["APc"] == pytest.approx(50.0)  # the same file without mask scores: the class score ranks
    for suffix in suffixes:
        assert metrics["segm"]["APc" + suffix] == pytest.approx(100.0)
    assert summary_metrics(evaluators["segm"])["APc"] == pytest.approx(100.0)
    assert summary_metrics(evaluators["bbox"])["APc"] == pytest.approx(50.0)
