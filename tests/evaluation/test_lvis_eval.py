"""LVIS evaluation: perfect and empty predictions, the federated protocol by hand, the 300-per-image cap,
the evaluate.py script, and parity with the reference lvis-api (0.5.3)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from longtail_seg.evaluation.lvis_eval import METRIC_KEYS, evaluate_lvis, load_results, write_metrics
from tests.conftest import load_workflow_script
from tests.evaluation.hand_lvis import (
    GROUP_KEYS,
    SIZE,
    annotation,
    box_mask,
    detection,
    false_positive,
    gt_as_detections,
)


def test_ground_truth_as_detections_scores_100(hand_gt: Path) -> None:
    metrics = evaluate_lvis(hand_gt, gt_as_detections(hand_gt))
    for iou_type in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75", "APs", "APr", "APc", "APf"):
            assert metrics[iou_type][key] == pytest.approx(100.0)
        assert metrics[iou_type]["APm"] is None and metrics[iou_type]["APl"] is None  # no medium / large gt


def test_empty_predictions_score_zero(hand_gt: Path, tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text("[]")
    for results in ([], path):
        metrics = evaluate_lvis(hand_gt, results)
        for iou_type in ("bbox", "segm"):
            for key in ("AP", "AP50", "AP75", "APs", "APr", "APc", "APf"):
                assert metrics[iou_type][key] == 0.0


def test_false_positive_of_a_negative_category_counts(hand_gt: Path) -> None:
    # cat 2 is negative on image 1: an FP there, scored above cat 2's one true positive, halves its precision.
    metrics = evaluate_lvis(hand_gt, gt_as_detections(hand_gt) + [false_positive(1, 2)])
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["APc"] == pytest.approx(50.0)
        assert metrics[iou_type]["AP"] == pytest.approx((100 + 50 + 100 + 100) / 4)
        assert metrics[iou_type]["APr"] == pytest.approx(100.0)


def test_detection_of_an_unverified_category_is_ignored(hand_gt: Path) -> None:
    # cat 2 is neither present nor negative on image 3: the federated protocol ignores the detection.
    metrics = evaluate_lvis(hand_gt, gt_as_detections(hand_gt) + [false_positive(3, 2)])
    assert metrics["bbox"]["AP"] == pytest.approx(100.0) and metrics["segm"]["APc"] == pytest.approx(100.0)


def test_not_exhaustive_category_false_positive_is_ignored(hand_gt: Path) -> None:
    # cat 3 is not exhaustively annotated on image 2 (ignored FP) but is on image 1 (counted FP).
    ignored = evaluate_lvis(hand_gt, gt_as_detections(hand_gt) + [false_positive(2, 3)])
    counted = evaluate_lvis(hand_gt, gt_as_detections(hand_gt) + [false_positive(1, 3)])
    for iou_type in ("bbox", "segm"):
        assert ignored[iou_type]["APf"] == pytest.approx(100.0)
        # cat 3 ranks FP, TP, TP: interpolated precision 2/3 at every recall level.
        assert counted[iou_type]["APf"] == pytest.approx((200 / 3 + 100) / 2)
        assert counted[iou_type]["AP"] == pytest.approx((100 + 100 + 200 / 3 + 100) / 4)


def test_only_300_detections_per_image_count(hand_gt: Path) -> None:
    # 300 higher-scored misses of cat 1 on image 1 push its true positive out of the per-image budget.
    misses = [detection(1, 1, box_mask(SIZE, SIZE, 40 + i % 4, 40 + i // 4 % 4, 20, 20), 0.9 + i * 1e-4)
              for i in range(300)]
    results = misses + gt_as_detections(hand_gt)
    capped = evaluate_lvis(hand_gt, results, iou_types=("bbox",))["bbox"]
    uncapped = evaluate_lvis(hand_gt, results, iou_types=("bbox",), max_dets=400)["bbox"]
    # Image 1 keeps only the 300 misses: cat 1 (rare) finds its image-3 object behind 300 FPs (recall 1/2 at
    # precision 1/301), cat 3 its image-2 object first (recall 1/2 at precision 1); 51 of 101 recall levels <= 1/2.
    assert capped["APr"] == pytest.approx(100 * 51 / 101 / 301)
    assert capped["APf"] == pytest.approx((100 * 51 / 101 + 100) / 2)
    assert capped["APc"] == pytest.approx(100.0)
    # With room for 400, both cat 1 objects are found behind the misses: precision 2/302 at full recall.
    assert uncapped["APr"] == pytest.approx(100 * 2 / 302)
    assert uncapped["APf"] == pytest.approx(100.0)


def test_bad_results_name_the_record(hand_gt: Path) -> None:
    unknown_image = gt_as_detections(hand_gt) + [false_positive(99, 1)]
    with pytest.raises(ValueError, match="image_id 99"):
        evaluate_lvis(hand_gt, unknown_image)
    no_masks = [{k: v for k, v in r.items() if k != "segmentation"} for r in gt_as_detections(hand_gt)]
    with pytest.raises(ValueError, match="segmentation"):
        evaluate_lvis(hand_gt, no_masks)
    assert evaluate_lvis(hand_gt, no_masks, iou_types=("bbox",))["bbox"]["AP"] == pytest.approx(100.0)
    wrong_size = gt_as_detections(hand_gt) + [detection(1, 1, np.ones((SIZE // 2, SIZE), np.uint8), 0.1)]
    with pytest.raises(ValueError, match="result 6 has a 32x64 mask"):
        evaluate_lvis(hand_gt, wrong_size)


def test_write_metrics_round_trips(tmp_path: Path) -> None:
    metrics = {"bbox": {key: 1.5 for key in METRIC_KEYS}, "num_images": 3}
    write_metrics(tmp_path / "out" / "metrics.json", metrics)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["metrics.json"]


def test_evaluate_script_writes_metrics(hand_gt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = load_workflow_script("evaluate")
    predictions = tmp_path / "pred.json"
    predictions.write_text(json.dumps(gt_as_detections(hand_gt) + [false_positive(1, 2)]))
    out = tmp_path / "eval" / "metrics.json"
    script.main(script.parse_args(["--annotations", str(hand_gt), "--predictions", str(predictions),
                                   "--out", str(out)]))
    metrics = json.loads(out.read_text())
    assert metrics["num_images"] == 3 and metrics["num_detections"] == 7
    assert metrics["segm"]["APc"] == pytest.approx(50.0) and metrics["bbox"]["APr"] == pytest.approx(100.0)
    assert "APc" in capsys.readouterr().out


# ---------------------------------------------------------------- parity with lvis-api 0.5.3

def random_lvis(tmp_path: Path, seed: int = 0) -> tuple[Path, list[dict]]:
    """30 images, 12 categories (4 r / 4 c / 4 f), neg and not-exhaustive lists, noisy detections (>300 on one)."""
    rng = np.random.default_rng(seed)
    height, width = 150, 200
    frequencies = ["r"] * 4 + ["c"] * 4 + ["f"] * 4
    category_ids = np.arange(1, 13)
    weights = np.array([1] * 4 + [3] * 4 + [8] * 4, dtype=float)
    images, annotations, results = [], [], []

    def random_mask(x: float, y: float, w: float, h: float) -> np.ndarray:
        """An ellipse in the box with a few pixels flipped, so masks differ from boxes."""
        yy, xx = np.mgrid[0:height, 0:width]
        cx, cy = x + w / 2, y + h / 2
        mask = ((xx + 0.5 - cx) / (w / 2)) ** 2 + ((yy + 0.5 - cy) / (h / 2)) ** 2 <= 1
        flips = rng.random(mask.shape) < 0.02
        return (mask ^ (flips & (np.abs(xx - cx) < w / 2) & (np.abs(yy - cy) < h / 2))).astype(np.uint8)

    def random_box() -> tuple[float, float, float, float]:
        w, h = rng.uniform(6, 170), rng.uniform(6, 140)
        return rng.uniform(0, width - w), rng.uniform(0, height - h), w, h

    for image_id in range(1, 31):
        present = set(rng.choice(category_ids, size=rng.integers(1, 4), replace=False, p=weights / weights.sum()))
        for category in present:
            for _ in range(rng.integers(1, 3)):
                box = random_box()
                mask = random_mask(*box)
                if mask.sum() == 0:
                    continue
                annotations.append(annotation(len(annotations) + 1, image_id, int(category), mask))
                if rng.random() < 0.8:  # a jittered detection of it
                    jitter = np.array(box) + rng.normal(0, 3, 4) * [1, 1, 0.5, 0.5]
                    jitter[2:] = np.maximum(jitter[2:], 3)
                    results.append(detection(image_id, int(category), random_mask(*jitter), float(rng.random())))
        absent = [int(c) for c in category_ids if c not in present]
        negatives = sorted(rng.choice(absent, size=len(absent) // 2, replace=False).tolist())
        not_exhaustive = sorted(int(c) for c in present if rng.random() < 0.3)
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": height, "width": width,
                       "neg_category_ids": negatives, "not_exhaustive_category_ids": not_exhaustive})
        for _ in range(rng.integers(2, 8)):  # false positives: present, negative and unverified categories
            category = int(rng.choice(category_ids))
            results.append(detection(image_id, category, random_mask(*random_box()), float(rng.random())))
        if negatives:
            results.append(detection(image_id, negatives[0], random_mask(*random_box()), float(rng.random())))
        if image_id == 1:  # more than 300 detections: both evaluators keep the 300 best-scored
            for _ in range(305):
                category = int(rng.choice(sorted(present) + negatives))
                results.append(detection(image_id, category, random_mask(*random_box()), float(rng.random())))
    categories = [{"id": int(c), "name": f"cat{c}", "frequency": f} for c, f in zip(category_ids, frequencies)]
    path = tmp_path / "random_gt.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, results


def test_matches_reference_lvis_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lvis  # the reference evaluator, a test dependency: a missing install fails here instead of skipping
    monkeypatch.setattr(np, "float", float, raising=False)  # lvis 0.5.3 uses np.float, removed in NumPy 1.24
    monkeypatch.setattr(np, "int", int, raising=False)
    gt_path, results = random_lvis(tmp_path)
    ours = evaluate_lvis(gt_path, results)
    reference_gt = lvis.LVIS(str(gt_path))
    for iou_type in ("bbox", "segm"):
        reference = lvis.LVISEval(reference_gt, lvis.LVISResults(reference_gt, copy.deepcopy(results)), iou_type)
        reference.run()
        expected = reference.get_results()
        for key in GROUP_KEYS + ("APs", "APm", "APl"):  # non-trivial scores, so the comparison means something
            assert 0.05 < expected[key] < 0.95, (iou_type, key, expected[key])
        for key in GROUP_KEYS + ("APs", "APm", "APl"):
            ours_fraction = -1.0 if ours[iou_type][key] is None else ours[iou_type][key] / 100
            assert ours_fraction == pytest.approx(expected[key], abs=1e-6), (iou_type, key)


def test_load_results_rejects_non_list(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"annotations": []}')
    with pytest.raises(ValueError, match="JSON list"):
        load_results(path)


def test_a_truncated_predictions_file_names_the_file_position_and_fix(hand_gt: Path, tmp_path: Path) -> None:
    path = tmp_path / "predictions" / "val.json"
    path.parent.mkdir()
    text = json.dumps(gt_as_detections(hand_gt))
    path.write_text(text[:len(text) // 2])
    with pytest.raises(ValueError) as error:
        load_results(path)
    message = str(error.value)
    assert message.startswith(f"{path}: this predictions file is not valid JSON at line 1, column ")
    assert "truncated" in message and "delete the predictions file and rerun the `infer` job" in message
    path.write_bytes(b"\x80\x81 binary")
    with pytest.raises(ValueError, match="is not JSON text"):
        load_results(path)


def _script_error(hand_gt: Path, tmp_path: Path, results: list, *extra: str) -> str:
    """evaluate.py's exit message on a predictions file holding ``results``."""
    script = load_workflow_script("evaluate")
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(results))
    with pytest.raises(SystemExit) as error:
        script.main(script.parse_args(["--annotations", str(hand_gt), "--predictions", str(predictions),
                                       "--out", str(tmp_path / "metrics.json"), *extra]))
    assert not (tmp_path / "metrics.json").exists()
    return str(error.value)


BAD_RESULTS = [  # (how result 3 is broken, what the message says after "PATH: result 3 ")
    (lambda r: r.pop("score"), "lacks ['score']; rerun inference"),
    (lambda r: r.update(score=float("nan")), "has score nan, not a finite number; rerun inference"),
    (lambda r: r.update(score="0.5"), "has score '0.5', not a finite number; rerun inference"),
    (lambda r: r.update(category_id=77), "has category_id 77 that is not in the ground truth categories"),
    (lambda r: r.update(image_id=[1]), "has image_id [1], not an integer id; rerun inference"),
    (lambda r: r.update(bbox=[1, 2, 3]), "has bbox [1, 2, 3], not [x, y, width, height] numbers; rerun inference"),
    (lambda r: r.update(segmentation=None), "has segmentation None, not an RLE dict"),
    (lambda r: r.pop("segmentation"), "lacks ['segmentation']; segm evaluation needs masks"),
]


@pytest.mark.parametrize("breaks, expected", BAD_RESULTS, ids=[e.split(";")[0] for _, e in BAD_RESULTS])
def test_a_bad_result_names_the_predictions_file_and_the_result(hand_gt: Path, tmp_path: Path, breaks,
                                                               expected: str) -> None:
    results = gt_as_detections(hand_gt)
    breaks(results[3])
    message = _script_error(hand_gt, tmp_path, results)
    assert message.startswith(f"evaluate: {tmp_path / 'predictions.json'}: result 3 {expected}"), message


def test_a_result_that_is_not_a_dict_is_named(hand_gt: Path, tmp_path: Path) -> None:
    results = gt_as_detections(hand_gt)
    message = _script_error(hand_gt, tmp_path, results[:2] + [[1, 2, 3]] + results[2:])
    assert message.startswith(f"evaluate: {tmp_path / 'predictions.json'}: result 2 is a list ([1, 2, 3]), not a "
                              "detection dict"), message
    message = _script_error(hand_gt, tmp_path, {"annotations": []})  # type: ignore[arg-type]
    assert message.startswith(f"evaluate: {tmp_path / 'predictions.json'}: LVIS results must be a JSON list")
    assert "rerun inference" in message


def test_results_in_memory_are_named_as_such_or_by_source(hand_gt: Path) -> None:
    no_score = gt_as_detections(hand_gt)
    del no_score[0]["score"]
    with pytest.raises(ValueError, match=r"^predictions \(in memory\): result 0 lacks \['score'\]"):
        evaluate_lvis(hand_gt, no_score)
    with pytest.raises(ValueError, match=r"^preds/val\.json: result 0 lacks \['score'\]"):
        evaluate_lvis(hand_gt, no_score, source="preds/val.json")
