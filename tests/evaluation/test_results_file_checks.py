"""The cheap checks of a results file read by hotcoco: the streaming marker count, polygon masks passing, and the
detection count when the per-image cap drops results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from longtail_seg.evaluation import lvis_eval
from longtail_seg.evaluation.lvis_eval import evaluate_lvis
from tests.conftest import load_workflow_script
from tests.evaluation.hand_lvis import SIZE, box_mask, detection, gt_as_detections


@pytest.mark.parametrize("chunk", [1, 3, 7, 8, 9, 64])
def test_marker_count_is_exact_across_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       chunk: int) -> None:
    rng = np.random.default_rng(chunk)
    pieces = rng.choice([b'"counts"', b'"count', b's"', b"x", b'""counts""', b"\n"], size=300)
    text = b"".join(pieces)
    path = tmp_path / "file.json"
    path.write_bytes(text)
    monkeypatch.setattr(lvis_eval, "READ_CHUNK", chunk)
    markers = (b'"counts"', b'"count', b's"', b"x")  # of different lengths, the shorter ones inside the longer
    assert lvis_eval.count_in_file(path, markers) == [text.count(marker) for marker in markers]
    assert text.count(b'"counts"') > 0


def test_polygon_masks_in_a_file_pass_the_checks(hand_gt: Path, tmp_path: Path) -> None:
    # Polygons carry no RLE counts: the marker count differs, the Python check finds nothing wrong, and the file
    # is evaluated like the same results in memory.
    results = gt_as_detections(hand_gt)
    x, y, w, h = results[2]["bbox"]
    results[2]["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(results))
    assert evaluate_lvis(hand_gt, path) == evaluate_lvis(hand_gt, results)


def test_detection_count_includes_results_the_cap_dropped(hand_gt: Path, tmp_path: Path) -> None:
    misses = [detection(1, 1, box_mask(SIZE, SIZE, 40, 40, 20, 20), 0.9) for _ in range(5)]
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(gt_as_detections(hand_gt) + misses))  # image 1: 2 + 5 results, cap 3
    script = load_workflow_script("evaluate")
    metrics = script.main(script.parse_args(["--annotations", str(hand_gt), "--predictions", str(predictions),
                                             "--out", str(tmp_path / "metrics.json"), "--max-dets", "3"]))
    assert metrics["num_detections"] == 11
    assert metrics["bbox"]["APr"] < 100.0  # image 1's object of cat 1 was pushed out by the misses


def test_masks_at_another_scale_are_named_from_a_file(hand_gt: Path, tmp_path: Path) -> None:
    # Masks encoded at the test scale instead of the image's: the first result shows it, with the fix.
    results = [detection(r["image_id"], r["category_id"], np.ones((SIZE // 2, SIZE), np.uint8), r["score"])
               for r in gt_as_detections(hand_gt)]
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(results))
    with pytest.raises(ValueError, match=r"predictions\.json: result 0 has a 32x64 mask on image 1 of 64x64; encode"):
        evaluate_lvis(hand_gt, path)
    assert evaluate_lvis(hand_gt, path, iou_types=("bbox",))["bbox"]["AP"] < 100.0  # boxes need no mask
