"""Evaluation protocols: AP-fixed's per-category top k (by hand, ties, order), AP-fixed against the 300-per-image cap
on a crowded image, the metric names of each protocol, bad arguments, and the evaluate.py script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longtail_seg.evaluation.lvis_eval import METRIC_KEYS, load_ground_truth
from longtail_seg.evaluation.protocols import VARIANTS, evaluate_protocol, top_per_category
from longtail_seg.inference.config import PROTOCOLS
from tests.conftest import load_workflow_script
from tests.evaluation.hand_lvis import SIZE, box_mask, detection, gt_as_detections


def test_top_per_category_keeps_the_best_in_file_order() -> None:
    results = [{"category_id": 1, "score": 0.5, "n": 0}, {"category_id": 1, "score": 0.9, "n": 1},
               {"category_id": 2, "score": 0.1, "n": 2}, {"category_id": 1, "score": 0.5, "n": 3},
               {"category_id": 1, "score": 0.7, "n": 4}, {"category_id": 1200, "score": 0.0, "n": 5}]
    assert [r["n"] for r in top_per_category(results, 2)] == [1, 2, 4, 5]
    assert [r["n"] for r in top_per_category(results, 3)] == [0, 1, 2, 4, 5]  # the tie goes to the earlier one
    assert [r["n"] for r in top_per_category(results, 10)] == [0, 1, 2, 3, 4, 5]
    assert top_per_category([], 5) == []


def crowded(hand_gt: Path) -> list[dict]:
    """The hand gt's own masks as detections (score 0.5) and, on image 1, 300 false positives of category 2 (a
    verified-absent category there) at 0.9: the 300-per-image cap keeps only those on image 1."""
    noise = box_mask(SIZE, SIZE, 40, 2, 20, 20)
    return gt_as_detections(hand_gt) + [detection(1, 2, noise, 0.9) for _ in range(300)]


def test_ap_fixed_has_no_per_image_cap(hand_gt: Path) -> None:
    metrics, count = evaluate_protocol(load_ground_truth(hand_gt), crowded(hand_gt), "fixed")
    assert count == 306
    for iou_type in ("bbox", "segm"):
        values = metrics[iou_type]
        # standard: image 1's true positives (categories 1 and 3) fall under the cap -> category 1 at recall 1/2
        assert values["APr"] == pytest.approx(100 * 51 / 101)
        assert values["APr_fixed"] == pytest.approx(100.0)
        # category 2: its one true positive ranks below 300 false positives either way
        assert values["APc"] == pytest.approx(100 / 301) and values["APc_fixed"] == pytest.approx(100 / 301)


def test_ap_fixed_keeps_dets_per_category(hand_gt: Path) -> None:
    metrics, _ = evaluate_protocol(load_ground_truth(hand_gt), crowded(hand_gt), "fixed", dets_per_category=1)
    assert metrics["segm"]["APc_fixed"] == 0.0  # category 2 keeps one false positive only
    assert metrics["segm"]["APr_fixed"] == pytest.approx(100 * 51 / 101)  # category 1 keeps one of its two


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_protocol_names_its_metrics(hand_gt: Path, protocol: str) -> None:
    metrics, _ = evaluate_protocol(load_ground_truth(hand_gt), gt_as_detections(hand_gt), protocol)
    suffixes = [suffix for suffix, _, _ in VARIANTS[protocol]]
    box_suffixes = [suffix for suffix, _, boundary in VARIANTS[protocol] if not boundary]
    assert set(metrics["segm"]) == {key + suffix for key in METRIC_KEYS for suffix in suffixes}
    assert set(metrics["bbox"]) == {key + suffix for key in METRIC_KEYS for suffix in box_suffixes}
    assert all(metrics["segm"][f"AP{s}"] == pytest.approx(100.0) for s in suffixes)  # perfect masks everywhere


def test_challenge2021_holds_boundary_ap_fixed(hand_gt: Path) -> None:
    metrics, _ = evaluate_protocol(load_ground_truth(hand_gt), gt_as_detections(hand_gt), "challenge2021")
    assert {"AP_fixed_boundary", "APr_fixed_boundary", "AP_fixed", "AP_boundary"} <= set(metrics["segm"])
    assert "AP_boundary" not in metrics["bbox"] and "AP_fixed" in metrics["bbox"]


def test_bad_protocol_arguments(hand_gt: Path) -> None:
    gt = load_ground_truth(hand_gt)
    with pytest.raises(ValueError, match="unknown evaluation protocol 'fixd'"):
        evaluate_protocol(gt, [], "fixd")
    with pytest.raises(ValueError, match="boundary AP, which needs masks"):
        evaluate_protocol(gt, [], "boundary", iou_types=("bbox",))
    with pytest.raises(ValueError, match="dets_per_category must be an integer >= 1"):
        evaluate_protocol(gt, [], "fixed", dets_per_category=0)


def test_evaluate_script_writes_the_protocol_metrics(hand_gt: Path, tmp_path: Path) -> None:
    script = load_workflow_script("evaluate")
    predictions = tmp_path / "pred.json"
    predictions.write_text(json.dumps(crowded(hand_gt)))
    out = tmp_path / "metrics.json"
    script.main(script.parse_args(["--annotations", str(hand_gt), "--predictions", str(predictions), "--out", str(out),
                                   "--protocol", "challenge2021", "--dets-per-category", "10000"]))
    metrics = json.loads(out.read_text())
    assert metrics["protocol"] == "challenge2021" and metrics["num_detections"] == 306
    assert metrics["segm"]["APr"] == pytest.approx(100 * 51 / 101)
    assert metrics["segm"]["APr_fixed_boundary"] == pytest.approx(100.0)
    assert metrics["bbox"]["APr_fixed"] == pytest.approx(100.0)
