"""Per-category AP (against lvis-api and hand-computed values), the per-category tables and changes, the TIDE
breakdown, the analysis scripts' CSVs and PNGs, and the prediction viewer."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from longtail_seg.evaluation.lvis_eval import (
    calibration_by_group,
    error_breakdown,
    load_detections,
    load_ground_truth,
    per_category_ap,
    run_evaluator,
    summary_metrics,
)
from longtail_seg.evaluation.per_category import (
    CATEGORY_AP_COLUMNS,
    CHANGE_COLUMNS,
    CONFUSION_COLUMNS,
    ap_changes,
    category_ap,
    error_table,
    per_category_frame,
    top_changes,
)
from longtail_seg.evaluation.viewer import pick_images
from tests.conftest import load_workflow_script
from tests.evaluation.hand_lvis import SIZE, box_mask, detection, false_positive, gt_as_detections
from tests.evaluation.test_lvis_eval import random_lvis


def _evaluators(gt_path: Path, results: list[dict]) -> dict:
    gt = load_ground_truth(gt_path)
    detections = load_detections(gt, results, ("bbox", "segm"))
    return {t: run_evaluator(gt, detections.results, t, 300) for t in ("bbox", "segm")}


def test_per_category_ap_by_hand(hand_gt: Path) -> None:
    # cat 1 (r): both objects found; cat 3 (f): a false positive on image 3 (3 is negative there) above the one hit
    # of its two objects -> precision 1/2 up to recall 1/2: AP = 0.5 * 51 / 101; cats 2 and 4: nothing detected
    truth = [d for d in gt_as_detections(hand_gt, 0.9) if d["category_id"] == 1 or (d["category_id"], d["image_id"])
             == (3, 1)]
    ap = per_category_ap(_evaluators(hand_gt, truth + [false_positive(3, 3, score=0.95)])["segm"])
    assert ap[1] == pytest.approx(100.0)
    assert ap[3] == pytest.approx(100 * 0.5 * 51 / 101)
    assert set(ap) == {1, 2, 3, 4}
    assert ap[2] == ap[4] == 0.0  # ground truth but no detection


def test_per_category_ap_matches_lvis_api_and_the_group_means(tmp_path: Path, monkeypatch) -> None:
    import lvis

    monkeypatch.setattr(np, "float", float, raising=False)  # lvis 0.5.3 uses np.float, removed in NumPy 1.24
    monkeypatch.setattr(np, "int", int, raising=False)
    gt_path, results = random_lvis(tmp_path)
    evaluators = _evaluators(gt_path, results)
    reference_gt = lvis.LVIS(str(gt_path))
    for iou_type, evaluator in evaluators.items():
        ours = per_category_ap(evaluator)
        reference = lvis.LVISEval(reference_gt, lvis.LVISResults(reference_gt, copy.deepcopy(results)), iou_type)
        with contextlib.redirect_stdout(io.StringIO()):
            reference.run()
        precision = reference.eval["precision"]  # [T, R, K, A]
        for index, category in enumerate(reference.params.cat_ids):
            valid = precision[:, :, index, 0][precision[:, :, index, 0] > -1]
            expected = 100 * valid.mean() if valid.size else None
            assert (ours[category] is None) == (expected is None), category
            if expected is not None:
                assert ours[category] == pytest.approx(expected, abs=1e-6), (iou_type, category)
        metrics = summary_metrics(evaluator)
        frequency = {c["id"]: c["frequency"] for c in json.loads(gt_path.read_text())["categories"]}
        for group in "rcf":
            values = [v for c, v in ours.items() if frequency[c] == group and v is not None]
            assert np.mean(values) == pytest.approx(metrics[f"AP{group}"], abs=1e-6)


def test_error_breakdown_counts_a_background_and_a_missed_error(hand_gt: Path) -> None:
    truth = [d for d in gt_as_detections(hand_gt, 0.9) if d["image_id"] != 2]  # image 2's two objects missed
    breakdown = error_breakdown(_evaluators(hand_gt, truth + [false_positive(1, 3, 0.95)])["bbox"])
    assert breakdown["counts"]["Miss"] == 2 and breakdown["counts"]["Bkg"] == 1
    assert breakdown["counts"]["Cls"] == breakdown["counts"]["Dupe"] == 0
    assert breakdown["delta_ap"]["Miss"] > 0 and breakdown["delta_ap"]["Bkg"] > 0
    assert 0 < breakdown["ap50"] < 100


def test_rare_confusions_count_other_categories_on_rare_objects(hand_gt: Path) -> None:
    detections = gt_as_detections(hand_gt, 0.9)
    for det in detections:  # category 1 (rare) is on images 1 and 3
        if (det["category_id"], det["image_id"]) == (1, 1):
            det["category_id"] = 3  # a frequent category on a rare object: a confusion
        elif (det["category_id"], det["image_id"]) == (1, 3):
            det.update(category_id=4, score=0.2)  # below the score floor: not counted
    # a second, lower-scored detection on the same rare object: the matching is one-to-one, so not a confusion
    detections.append(dict(detections[0], category_id=2, score=0.5))
    categories = json.loads(hand_gt.read_text())["categories"]
    breakdown = error_breakdown(_evaluators(hand_gt, detections)["segm"], categories, confusion_min_score=0.3)
    assert breakdown["rare_confusions"] == [
        {"gt_category_id": 1, "gt_name": "cat1", "predicted_category_id": 3, "predicted_name": "cat3",
         "predicted_frequency": "f", "count": 1}]
    no_rare = [dict(c, frequency="f") for c in categories]
    assert error_breakdown(_evaluators(hand_gt, detections)["segm"], no_rare)["rare_confusions"] == []


def test_per_category_frame_has_one_row_per_category_nan_without_ap() -> None:
    categories = [{"id": 7, "name": "dog", "frequency": "r"}, {"id": 2, "name": "cat", "frequency": "f"}]
    frame = per_category_frame(categories, {"segm": {2: 50.0, 7: None}, "bbox": {2: 40.0, 7: 10.0}})
    assert list(frame.columns) == ["category_id", "name", "frequency", "AP_bbox", "AP_segm"]
    assert frame["category_id"].tolist() == [2, 7] and frame["AP_segm"].iloc[0] == 50.0
    assert math.isnan(frame["AP_segm"].iloc[1]) and frame["AP_bbox"].iloc[1] == 10.0
    assert per_category_frame(categories, {"segm": {2: 1.0}})["AP_bbox"].isna().all()


def _per_category(values: dict[int, float | None]) -> pd.DataFrame:
    names = {1: ("rare one", "r"), 2: ("common two", "c"), 3: ("frequent three", "f"), 1203: ("last", "r")}
    return per_category_frame([{"id": c, "name": names[c][0], "frequency": names[c][1]} for c in values],
                              {"segm": values, "bbox": {c: 0.0 for c in values}})


STATS = pd.DataFrame({"category_id": [1, 2, 3], "instance_count": [4, 50, 900], "frequency": ["r", "c", "f"]})


def test_category_ap_adds_training_instances_and_sorts_by_them() -> None:
    table = category_ap(_per_category({1: 10.0, 2: 20.0, 3: 30.0, 1203: None}), STATS)
    assert list(table.columns) == list(CATEGORY_AP_COLUMNS)
    assert table["category_id"].tolist() == [3, 2, 1, 1203]
    assert table["instance_count"].tolist() == [900, 50, 4, 0]  # 1203: not in the statistics -> 0
    with pytest.raises(ValueError, match=r"lack the columns \['instance_count'\]"):
        category_ap(_per_category({1: 1.0}), STATS.drop(columns="instance_count"))


def test_ap_changes_against_the_previous_row_by_hand() -> None:
    rows = [("A", category_ap(_per_category({1: 10.0, 2: 20.0, 3: 30.0, 1203: None}), STATS)),
            ("B", category_ap(_per_category({1: 25.0, 2: 15.0, 3: 30.0, 1203: 5.0}), STATS)),
            ("C", category_ap(_per_category({1: 20.0, 2: 15.0, 3: 40.0, 1203: 5.0}), STATS))]
    changes = ap_changes(rows)
    assert list(changes.columns) == list(CHANGE_COLUMNS)
    b = changes[changes["step"] == "B"].set_index("category_id")
    assert (b["previous"] == "A").all()
    assert b.loc[1, "change"] == 15.0 and b.loc[2, "change"] == -5.0 and b.loc[3, "change"] == 0.0
    assert math.isnan(b.loc[1203, "change"]) and pd.isna(b.loc[1203, "rank"])  # no AP in A
    assert b.loc[[1, 3, 2], "rank"].tolist() == [1, 2, 3]
    c = changes[changes["step"] == "C"].set_index("category_id")
    assert c.loc[3, "change"] == 10.0 and c.loc[1, "change"] == -5.0 and c.loc[1203, "change"] == 0.0
    assert c.loc[1, "AP_previous"] == 25.0 and c.loc[1, "AP"] == 20.0
    gains, losses = top_changes(changes, "B", 5)
    assert gains["category_id"].tolist() == [1] and losses["category_id"].tolist() == [2]
    gains, losses = top_changes(changes, "C", 1)
    assert gains["category_id"].tolist() == [3] and losses["category_id"].tolist() == [1]
    assert ap_changes(rows[:1]).empty and list(ap_changes(rows[:1]).columns) == list(CHANGE_COLUMNS)


def _errors(ap50: float, miss: float) -> dict:
    keys = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
    confusion = {"gt_category_id": 1, "gt_name": "rare one", "predicted_category_id": 3,
                 "predicted_name": "frequent three", "predicted_frequency": "f", "count": int(miss)}
    return {"segm": {"ap50": ap50, "delta_ap": {**{k: 1.0 for k in keys}, "Miss": miss, "FP": 0.0, "FN": 0.0},
                     "counts": {k: 2 for k in keys}, "rare_confusions": [confusion]}}


def test_error_table_has_a_row_per_table_row() -> None:
    table = error_table([("A", _errors(40.0, 9.0)), ("B", _errors(45.0, 6.0))])
    assert table["model"].tolist() == ["A", "B"] and table["AP50"].tolist() == [40.0, 45.0]
    assert table["dAP_Miss"].tolist() == [9.0, 6.0] and table["count_Cls"].tolist() == [2, 2]
    with pytest.raises(ValueError, match="errors of 'A' have no 'bbox' entry"):
        error_table([("A", _errors(40.0, 9.0))], "bbox")


def test_the_analysis_scripts_write_the_csvs_and_pngs(tmp_path: Path) -> None:
    stats = tmp_path / "category_stats.csv"
    STATS.to_csv(stats, index=False)
    paths = []
    for name, values in (("a", {1: 10.0, 2: 20.0, 3: 30.0}), ("b", {1: 25.0, 2: 15.0, 3: 30.0})):
        path = tmp_path / f"{name}.csv"
        _per_category(values).to_csv(path, index=False)
        paths.append(path)
    script = load_workflow_script("category_ap")
    script.main(script.parse_args(["--per-category", str(paths[0]), "--category-stats", str(stats), "--title", "a",
                                   "--out-csv", str(tmp_path / "ap.csv"), "--out-png", str(tmp_path / "ap.png")]))
    written = pd.read_csv(tmp_path / "ap.csv")
    assert written["AP_segm"].tolist() == [30.0, 20.0, 10.0] and written["instance_count"].tolist() == [900, 50, 4]
    script = load_workflow_script("category_changes")
    rows = json.dumps([{"label": "A", "model": "a", "test": "t"}, {"label": "+B", "model": "b", "test": "t"}])
    script.main(script.parse_args(["--rows", rows, "--per-category", *map(str, paths), "--category-stats",
                                   str(stats), "--top", "2", "--out-csv", str(tmp_path / "ch.csv"),
                                   "--out-png", str(tmp_path / "ch.png")]))
    changes = pd.read_csv(tmp_path / "ch.csv")
    assert changes["step"].unique().tolist() == ["+B"] and changes["change"].tolist() == [15.0, 0.0, -5.0]
    errors = [tmp_path / "ea.json", tmp_path / "eb.json"]
    errors[0].write_text(json.dumps(_errors(40.0, 9.0)))
    errors[1].write_text(json.dumps(_errors(45.0, 6.0)))
    script = load_workflow_script("error_breakdown")
    script.main(script.parse_args(["--rows", rows, "--errors", *map(str, errors), "--out-csv",
                                   str(tmp_path / "err.csv"), "--out-png", str(tmp_path / "err.png"),
                                   "--out-confusions", str(tmp_path / "conf.csv")]))
    assert pd.read_csv(tmp_path / "err.csv")["dAP_Miss"].tolist() == [9.0, 6.0]
    confusions = pd.read_csv(tmp_path / "conf.csv")
    assert list(confusions.columns) == list(CONFUSION_COLUMNS)
    assert confusions[["model", "gt_name", "predicted_name", "count"]].values.tolist() == [
        ["A", "rare one", "frequent three", 9], ["+B", "rare one", "frequent three", 6]]
    for png in ("ap.png", "ch.png", "err.png"):
        with Image.open(tmp_path / png) as image:
            assert image.size[0] > 500 and image.size[1] > 200
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_the_evaluate_script_writes_per_category_ap_and_errors(hand_gt: Path, tmp_path: Path) -> None:
    script = load_workflow_script("evaluate")
    predictions = tmp_path / "pred.json"
    predictions.write_text(json.dumps(gt_as_detections(hand_gt) + [false_positive(1, 2)]))
    out = tmp_path / "eval"
    script.main(script.parse_args(["--annotations", str(hand_gt), "--predictions", str(predictions),
                                   "--out", str(out / "metrics.json"), "--out-per-category",
                                   str(out / "per_category.csv"), "--out-errors", str(out / "errors.json")]))
    table = pd.read_csv(out / "per_category.csv")
    assert list(table.columns) == ["category_id", "name", "frequency", "AP_bbox", "AP_segm"]
    assert table["category_id"].tolist() == [1, 2, 3, 4] and table["frequency"].tolist() == ["r", "c", "f", "f"]
    # a false positive of cat 2 on image 1 (negative there) above its one hit: 50; every other category: 100
    assert table["AP_segm"].tolist() == pytest.approx([100.0, 50.0, 100.0, 100.0])
    errors = json.loads((out / "errors.json").read_text())
    assert set(errors) == {"bbox", "segm"} and errors["segm"]["counts"]["Bkg"] == 1
    assert errors["segm"]["counts"]["Miss"] == 0


def _gt_with_images(tmp_path: Path, hand_gt: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for image in json.loads(hand_gt.read_text())["images"]:
        Image.fromarray(np.full((SIZE, SIZE, 3), 60 * image["id"], dtype=np.uint8)).save(root / image["file_name"])
    return root


def test_the_viewer_shows_ground_truth_next_to_each_model(hand_gt: Path, tmp_path: Path) -> None:
    root = _gt_with_images(tmp_path, hand_gt)
    gt = load_ground_truth(hand_gt)
    assert pick_images(gt, 2) == [1, 3]  # images 1 and 3 hold the rare category 1, then image 2
    assert pick_images(gt, 5) == [1, 3, 2] and pick_images(gt, 1, [2]) == [2]
    with pytest.raises(ValueError, match=r"image ids \[9\] are not in the ground truth"):
        pick_images(gt, 1, [9])
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(gt_as_detections(hand_gt, 0.8)))
    b.write_text(json.dumps([detection(1, 3, box_mask(SIZE, SIZE, 5, 5, 10, 10), 0.3)]))
    script = load_workflow_script("view_predictions")
    shown = script.main(script.parse_args(["--annotations", str(hand_gt), "--image-root", str(root),
                                           "--predictions", str(a), str(b), "--labels", "RFS", "+BGS",
                                           "--num-images", "2", "--out", str(tmp_path / "viewer.png")]))
    assert shown == [1, 3]
    with Image.open(tmp_path / "viewer.png") as image:
        width, height = image.size
    assert width >= 3 * 480 and height >= 2 * 480  # 3 panels (gt, two models) x 2 images, each >= 480 px
    with pytest.raises(SystemExit, match="2 --predictions but 1 --labels"):
        script.main(script.parse_args(["--annotations", str(hand_gt), "--image-root", str(root), "--predictions",
                                       str(a), str(b), "--labels", "RFS", "--out", str(tmp_path / "v.png")]))


def test_teacher_calibration_per_group_by_hand(hand_gt: Path, tmp_path: Path) -> None:
    # every object found at score 0.95, plus a false positive of category 2 (common) where it is negative
    predictions = tmp_path / "teacher.json"
    predictions.write_text(json.dumps(gt_as_detections(hand_gt, 0.95) + [false_positive(1, 2, 0.95)]))
    gt = load_ground_truth(hand_gt)
    calibration = calibration_by_group(gt, load_detections(gt, str(predictions), ("segm",)), "segm", bins=10)
    assert sorted(calibration) == ["all", "c", "f", "r"]

    def top_bin(group: str) -> dict:
        used = [b for b in calibration[group]["bins"] if b["count"]]
        assert len(used) == 1 and used[0]["bin_lower"] == pytest.approx(0.9)
        return used[0]

    assert top_bin("all")["count"] == 7 and top_bin("all")["avg_accuracy"] == pytest.approx(6 / 7)
    assert calibration["all"]["ece"] == pytest.approx(abs(0.95 - 6 / 7))
    assert top_bin("c")["count"] == 2 and top_bin("c")["avg_accuracy"] == pytest.approx(0.5)
    assert top_bin("r")["count"] == 2 and top_bin("r")["avg_accuracy"] == pytest.approx(1.0)
    assert calibration["r"]["ece"] == pytest.approx(0.05)
    script = load_workflow_script("teacher_calibration")
    table = script.main(script.parse_args(["--annotations", str(hand_gt), "--predictions", str(predictions),
                                           "--threshold", "0.5", "--out-csv", str(tmp_path / "cal.csv"),
                                           "--out-png", str(tmp_path / "cal.png")]))
    written = pd.read_csv(tmp_path / "cal.csv")
    assert list(written.columns) == ["group", "ece", "bin_lower", "bin_upper", "avg_confidence", "avg_accuracy",
                                     "count"]
    assert len(written) == len(table) == 4 * 10 and written.groupby("group")["count"].sum()["all"] == 7
    assert (tmp_path / "cal.png").stat().st_size > 0
