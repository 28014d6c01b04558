"""Pseudo labels: the score threshold and rare-only rules on hand-made predictions, the LVIS file they become,
precision against hidden ground truth (hand-counted), and the workflow script from a predictions file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from longtail_seg.data.dataset import LVISDetectionDataset
from longtail_seg.data.lvis_io import DatasetError, validate_dataset
from longtail_seg.data.masks import encode_mask
from longtail_seg.pseudo_labels import (
    filter_pseudo_labels,
    pseudo_label_dataset,
    pseudo_label_precision,
    pseudo_label_summary,
    read_frequency_groups,
    uncertain_regions,
)
from tests.conftest import load_workflow_script

# category 1 rare, 2 common, 3 frequent
FREQUENCY = {1: "r", 2: "c", 3: "f"}
CATEGORIES = [{"id": c, "name": f"cat{c}"} for c in (1, 2, 3)]


def _rle(x: int, y: int, w: int, h: int, size: int = 32) -> dict:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[y : y + h, x : x + w] = 1
    return encode_mask(mask)


def _prediction(image_id: int, category_id: int, score: float, bbox=(2, 2, 10, 10)) -> dict:
    return {"image_id": image_id, "category_id": category_id, "score": score, "bbox": list(bbox),
            "segmentation": _rle(*bbox)}


PREDICTIONS = [
    _prediction(10, 1, 0.95),                      # image 10: a confident rare label ...
    _prediction(10, 3, 0.85, (15, 15, 6, 6)),      # ... and a confident frequent one: both stay
    _prediction(10, 2, 0.50, (20, 2, 5, 5)),       # below the threshold: dropped
    _prediction(11, 3, 0.99),                      # image 11: confident, but no rare label -> image dropped
    _prediction(12, 1, 0.79),                      # image 12: rare, just below 0.8 -> nothing left
    _prediction(13, 1, 0.80),                      # image 13: exactly at the threshold -> kept (>=)
]


def test_threshold_and_rare_only_rules():
    kept = filter_pseudo_labels(PREDICTIONS, FREQUENCY, score_threshold=0.8, rare_only=True)
    assert sorted(kept) == [10, 13]
    assert [p["category_id"] for p in kept[10]] == [1, 3]  # descending score, the frequent label kept too
    assert [p["score"] for p in kept[13]] == [0.80]


def test_without_rare_only_every_confident_image_stays():
    kept = filter_pseudo_labels(PREDICTIONS, FREQUENCY, score_threshold=0.8, rare_only=False)
    assert sorted(kept) == [10, 11, 13]


def test_threshold_moves_the_cut():
    kept = filter_pseudo_labels(PREDICTIONS, FREQUENCY, score_threshold=0.5, rare_only=True)
    assert sorted(kept) == [10, 12, 13]
    assert len(kept[10]) == 3


def test_unknown_category_and_bad_threshold_raise():
    with pytest.raises(DatasetError, match="category id 9"):
        filter_pseudo_labels([_prediction(1, 9, 0.9)], FREQUENCY)
    with pytest.raises(ValueError, match="threshold"):
        filter_pseudo_labels(PREDICTIONS, FREQUENCY, score_threshold=1.5)


def _unlabeled(image_ids) -> dict:
    images = [{"id": i, "file_name": f"unlabeled/{i:06d}.png", "height": 32, "width": 32} for i in image_ids]
    return {"images": images, "annotations": [], "categories": CATEGORIES}


def test_pseudo_dataset_is_valid_lvis_with_masks_and_summary(tmp_path: Path):
    kept = filter_pseudo_labels(PREDICTIONS, FREQUENCY)
    dataset = pseudo_label_dataset(kept, _unlabeled([10, 11, 12, 13]), CATEGORIES)
    validate_dataset(dataset, "pseudo.json")
    assert [im["id"] for im in dataset["images"]] == [10, 13]
    assert all(im["file_name"].startswith("unlabeled/") and im["neg_category_ids"] == [] for im in dataset["images"])
    assert len({a["id"] for a in dataset["annotations"]}) == 3
    first = dataset["annotations"][0]
    assert first["area"] == 100.0  # the RLE's pixel count: a 10 x 10 square
    assert first["segmentation"]["size"] == [32, 32]
    summary = pseudo_label_summary(dataset, 4, FREQUENCY, 0.8, True)
    assert summary["images_kept"] == 2 and summary["unlabeled_images"] == 4
    assert summary["labels_per_group"] == {"rare": 2, "common": 0, "frequent": 1}
    # it loads as a training dataset, masks included
    image_root = tmp_path / "images" / "unlabeled"
    image_root.mkdir(parents=True)
    from PIL import Image

    for image_id in (10, 13):
        Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image_root / f"{image_id:06d}.png")
    path = tmp_path / "pseudo.json"
    path.write_text(json.dumps(dataset))
    loaded = LVISDetectionDataset(path, tmp_path / "images", category_ids=[1, 2, 3])
    _, target = loaded[0]
    assert target["masks"].shape == (2, 32, 32)
    assert int(target["masks"][0].sum()) == 100


def test_label_for_an_image_outside_the_unlabeled_list_raises():
    kept = filter_pseudo_labels([_prediction(99, 1, 0.9)], FREQUENCY)
    with pytest.raises(DatasetError, match="99"):
        pseudo_label_dataset(kept, _unlabeled([10]), CATEGORIES)


def test_precision_against_hidden_truth_hand_counted():
    truth = {"images": [], "categories": CATEGORIES, "annotations": [
        {"id": 1, "image_id": 10, "category_id": 1, "bbox": [2, 2, 10, 10]},    # matched by the rare label
        {"id": 2, "image_id": 10, "category_id": 2, "bbox": [15, 15, 6, 6]},    # a common object labelled frequent
        {"id": 3, "image_id": 13, "category_id": 1, "bbox": [3, 3, 10, 10]},    # IoU 81/119 = 0.68 with the label
        {"id": 4, "image_id": 11, "category_id": 3, "bbox": [2, 2, 10, 10]},    # image 11 not kept: not counted
    ]}
    pseudo = pseudo_label_dataset(filter_pseudo_labels(PREDICTIONS, FREQUENCY), _unlabeled([10, 11, 12, 13]),
                                  CATEGORIES)
    report = pseudo_label_precision(pseudo, truth, FREQUENCY)
    assert report["labels"] == {"all": 3, "rare": 2, "common": 0, "frequent": 1}
    assert report["correct"] == {"all": 2, "rare": 2, "common": 0, "frequent": 0}
    assert report["precision"]["all"] == pytest.approx(2 / 3)
    assert report["precision"]["rare"] == 1.0 and report["precision"]["common"] is None
    assert report["ground_truth_instances_on_kept_images"] == 3
    assert report["recall_on_kept_images"] == pytest.approx(2 / 3)
    strict = pseudo_label_precision(pseudo, truth, FREQUENCY, iou_threshold=0.7)
    assert strict["correct"]["rare"] == 1  # image 13's label (IoU 0.68) no longer counts


def test_one_truth_matches_one_label_only():
    truth = {"annotations": [{"id": 1, "image_id": 10, "category_id": 1, "bbox": [2, 2, 10, 10]}]}
    duplicates = {"images": [{"id": 10}], "annotations": [
        {"id": 1, "image_id": 10, "category_id": 1, "bbox": [2, 2, 10, 10], "score": 0.9},
        {"id": 2, "image_id": 10, "category_id": 1, "bbox": [2, 2, 10, 10], "score": 0.95},
    ]}
    report = pseudo_label_precision(duplicates, truth, FREQUENCY)
    assert report["correct"]["all"] == 1 and report["labels"]["all"] == 2


def test_script_from_a_predictions_file(tmp_path: Path):
    from PIL import Image

    unlabeled = tmp_path / "unlabeled.json"
    unlabeled.write_text(json.dumps(_unlabeled([10, 11, 12, 13])))
    (tmp_path / "unlabeled").mkdir()
    for image_id in (10, 11, 12, 13):
        Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "unlabeled" / f"{image_id:06d}.png")
    train = tmp_path / "train.json"
    train.write_text(json.dumps({"images": [], "annotations": [], "categories": CATEGORIES}))
    stats = tmp_path / "category_stats.csv"
    stats.write_text("category_id,name,frequency\n1,cat1,r\n2,cat2,c\n3,cat3,f\n")
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(PREDICTIONS))
    assert read_frequency_groups(stats) == FREQUENCY
    script = load_workflow_script("pseudo_labels")
    out, summary = tmp_path / "pseudo" / "pseudo.json", tmp_path / "pseudo" / "summary.json"
    script.main(script.parse_args([
        "--predictions", str(predictions), "--unlabeled", str(unlabeled), "--image-root", str(tmp_path),
        "--train-annotations", str(train), "--category-stats", str(stats), "--score-threshold", "0.8",
        "--out", str(out), "--summary", str(summary),
    ]))
    written = json.loads(out.read_text())
    assert [im["id"] for im in written["images"]] == [10, 13]
    assert json.loads(summary.read_text())["labels"] == 3
    # with ignore regions: image 10's 0.50 detection (between 0.3 and 0.8) becomes one
    script.main(script.parse_args([
        "--predictions", str(predictions), "--unlabeled", str(unlabeled), "--image-root", str(tmp_path),
        "--train-annotations", str(train), "--category-stats", str(stats), "--score-threshold", "0.8",
        "--ignore-threshold", "0.3", "--out", str(out), "--summary", str(summary),
    ]))
    written = json.loads(out.read_text())
    crowd = [a for a in written["annotations"] if a["iscrowd"]]
    assert [(a["image_id"], a["score"]) for a in crowd] == [(10, 0.50)]
    assert json.loads(summary.read_text())["ignore_regions"] == 1
    with pytest.raises(SystemExit, match="ignore-threshold"):
        script.main(script.parse_args([
            "--predictions", str(predictions), "--unlabeled", str(unlabeled), "--image-root", str(tmp_path),
            "--train-annotations", str(train), "--category-stats", str(stats), "--score-threshold", "0.8",
            "--ignore-threshold", "0.9", "--out", str(out), "--summary", str(summary),
        ]))


def test_class_agnostic_nms_keeps_one_label_per_object():
    # one object labelled as its frequent parent (0.9) and its rare variant (0.85), plus a separate rare object
    predictions = [_prediction(20, 3, 0.90), _prediction(20, 1, 0.85, (3, 3, 10, 10)),
                   _prediction(20, 1, 0.82, (20, 20, 8, 8))]
    kept = filter_pseudo_labels(predictions, FREQUENCY, 0.8, rare_only=True, class_agnostic_nms_iou=0.5)
    assert [(p["category_id"], p["score"]) for p in kept[20]] == [(3, 0.90), (1, 0.82)]
    without = filter_pseudo_labels(predictions, FREQUENCY, 0.8, rare_only=True)
    assert len(without[20]) == 3
    # only the overlapping rare label was on the image: after NMS it has no rare label left and is dropped
    lone = filter_pseudo_labels(predictions[:2], FREQUENCY, 0.8, rare_only=True, class_agnostic_nms_iou=0.5)
    assert lone == {}


# image 30: one confident rare label; below it, a half-seen object elsewhere, the same object again (another class),
# a second detection of the labelled object, and noise under the ignore threshold. Image 31 has no label.
UNCERTAIN = [
    _prediction(30, 1, 0.90, (2, 2, 10, 10)),
    _prediction(30, 3, 0.40, (18, 18, 10, 10)),    # -> ignore region
    _prediction(30, 2, 0.30, (19, 19, 10, 10)),    # same object as the 0.40 one (IoU 0.68): suppressed
    _prediction(30, 3, 0.35, (3, 2, 10, 10)),      # the labelled object again (IoU 0.82): suppressed
    _prediction(30, 2, 0.05, (20, 2, 6, 6)),       # under the ignore threshold: nothing
    _prediction(31, 3, 0.40, (5, 5, 10, 10)),      # image 31 is not kept: no region
]


def test_uncertain_regions_between_the_thresholds_one_per_object():
    kept = filter_pseudo_labels(UNCERTAIN, FREQUENCY, 0.8, rare_only=True)
    regions = uncertain_regions(UNCERTAIN, kept, FREQUENCY, ignore_threshold=0.1, overlap_iou=0.5)
    assert sorted(regions) == [30]
    assert [(p["category_id"], p["score"]) for p in regions[30]] == [(3, 0.40)]
    lower = uncertain_regions(UNCERTAIN, kept, FREQUENCY, ignore_threshold=0.01, overlap_iou=0.5)
    assert [p["score"] for p in lower[30]] == [0.40, 0.05]
    with pytest.raises(ValueError, match="ignore threshold"):
        uncertain_regions(UNCERTAIN, kept, FREQUENCY, ignore_threshold=-0.1)


def test_ignore_regions_are_crowd_annotations_that_are_neither_labels_nor_scored():
    kept = filter_pseudo_labels(UNCERTAIN, FREQUENCY, 0.8, rare_only=True)
    regions = uncertain_regions(UNCERTAIN, kept, FREQUENCY, ignore_threshold=0.1)
    dataset = pseudo_label_dataset(kept, _unlabeled([30, 31]), CATEGORIES, ignore=regions)
    validate_dataset(dataset, "pseudo.json")
    assert [a["iscrowd"] for a in dataset["annotations"]] == [0, 1]
    summary = pseudo_label_summary(dataset, 2, FREQUENCY, 0.8, True)
    assert summary["labels"] == 1 and summary["ignore_regions"] == 1
    assert summary["labels_per_group"] == {"rare": 1, "common": 0, "frequent": 0}
    truth = {"annotations": [
        {"id": 1, "image_id": 30, "category_id": 1, "bbox": [2, 2, 10, 10]},
        {"id": 2, "image_id": 30, "category_id": 2, "bbox": [18, 18, 10, 10]},  # the half-seen object (other class)
    ]}
    report = pseudo_label_precision(dataset, truth, FREQUENCY)
    assert report["labels"]["all"] == 1 and report["precision"]["all"] == 1.0
    assert report["ignore_regions"] == 1 and report["ignore_regions_on_objects"] == 1
    assert report["recall_on_kept_images"] == pytest.approx(1 / 2)
