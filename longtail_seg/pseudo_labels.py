"""Pseudo labels from unlabeled images (the report's Section 4.1, "Unlabeled Data").

A teacher (the best retrained model) predicts on the unlabeled images; predictions with score >= 0.8 become
labels (box, category, RLE mask), and only images with at least one pseudo label of a RARE category are kept,
since frequent categories already have enough training data. The result is an LVIS-format file whose images keep
their unlabeled-split file names, so the retraining reads them with the same image root.

``pseudo_label_precision`` scores a pseudo-label file against ground truth the training never sees (the synthetic
generator's hidden file): a label is correct when it matches an unmatched ground-truth instance of the same
category with box IoU >= 0.5, greedily in score order, as detection evaluation matches.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from longtail_seg.data.lvis_io import DatasetError
from longtail_seg.data.masks import segmentation_to_rle

GROUPS = {"r": "rare", "c": "common", "f": "frequent"}
DEFAULT_SCORE_THRESHOLD = 0.8


def read_frequency_groups(category_stats_csv: str | os.PathLike) -> dict[int, str]:
    """Category id -> LVIS frequency group ('r', 'c', 'f') of the training set, from category_stats.csv."""
    if not os.path.isfile(category_stats_csv):
        raise DatasetError(f"{category_stats_csv}: category statistics not found; run the dataset statistics step")
    table = pd.read_csv(category_stats_csv)
    missing = [c for c in ("category_id", "frequency") if c not in table.columns]
    if missing:
        raise DatasetError(f"{category_stats_csv}: missing column(s) {missing}; regenerate it with dataset_stats")
    return dict(zip(table["category_id"].astype(int), table["frequency"].astype(str)))


def filter_pseudo_labels(
    predictions: Sequence[Mapping[str, Any]],
    frequency_of: Mapping[int, str],
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    rare_only: bool = True,
    class_agnostic_nms_iou: float | None = None,
) -> dict[int, list[Mapping[str, Any]]]:
    """Predictions kept as pseudo labels, grouped by image id (each image's labels in descending score order).

    A prediction is kept when ``score >= score_threshold``. With ``class_agnostic_nms_iou`` a kept label whose box
    overlaps a higher-scored kept label of any class by more than that IoU is dropped: one label per object. (The
    teacher's NMS is per class, and balanced group softmax scores of different groups do not compete, so one object
    can carry a frequent parent's label and a rare variant's label at once.) With ``rare_only`` an image is kept only
    when one of its labels is of a rare category (``frequency_of[category_id] == "r"``, the training-set LVIS
    group), and then ALL its labels stay (dropping the frequent objects would teach the student they are background).
    """
    _check_threshold("pseudo-label score threshold", score_threshold)
    kept = {}
    for image_id, labels in _per_image_at_least(predictions, frequency_of, score_threshold).items():
        if class_agnostic_nms_iou is not None:
            labels = _class_agnostic_nms(labels, class_agnostic_nms_iou)
        if rare_only and not any(frequency_of[int(p["category_id"])] == "r" for p in labels):
            continue
        kept[image_id] = labels
    return kept


def uncertain_regions(
    predictions: Sequence[Mapping[str, Any]],
    kept: Mapping[int, Sequence[Mapping[str, Any]]],
    frequency_of: Mapping[int, str],
    ignore_threshold: float,
    overlap_iou: float = 0.5,
) -> dict[int, list[Mapping[str, Any]]]:
    """Per kept image, the teacher's detections below the label threshold but >= ``ignore_threshold``: objects the
    teacher half-saw. The student ignores them (neither object nor background) instead of learning them as
    background. One region per object: a detection overlapping a kept label or a higher-scored region by more than
    ``overlap_iou`` (box IoU) is dropped. Images not in ``kept`` get none.
    """
    _check_threshold("pseudo-label ignore threshold", ignore_threshold)
    candidates = _per_image_at_least(predictions, frequency_of, ignore_threshold)
    regions = {}
    for image_id, labels in kept.items():
        label_keys = {id(label) for label in labels}
        pool = list(labels) + [p for p in candidates.get(image_id, []) if id(p) not in label_keys]
        pool.sort(key=lambda p: -float(p["score"]))
        survivors = _class_agnostic_nms(pool, overlap_iou, fixed=label_keys)
        regions[image_id] = [p for p in survivors if id(p) not in label_keys]
    return regions


def _check_threshold(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _per_image_at_least(
    predictions: Sequence[Mapping[str, Any]], frequency_of: Mapping[int, str], threshold: float
) -> dict[int, list[Mapping[str, Any]]]:
    """Predictions with score >= threshold grouped by image id, each list in descending score order."""
    per_image: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for prediction in predictions:
        category_id = int(prediction["category_id"])
        if category_id not in frequency_of:
            raise DatasetError(
                f"prediction for image {prediction.get('image_id')}: category id {category_id} is not in the "
                "training statistics; the teacher was trained on another category set"
            )
        if float(prediction["score"]) >= threshold:
            per_image[int(prediction["image_id"])].append(prediction)
    return {image_id: sorted(labels, key=lambda p: -float(p["score"])) for image_id, labels in per_image.items()}


def _class_agnostic_nms(
    labels: Sequence[Mapping[str, Any]], iou_threshold: float, fixed: set[int] | None = None
) -> list[Mapping[str, Any]]:
    """Greedy NMS over labels already sorted by descending score, whatever their class (box IoU). Labels whose
    ``id()`` is in ``fixed`` always survive (and still suppress others)."""
    _check_threshold("class-agnostic NMS IoU", iou_threshold)
    if not labels:
        return []
    ious = _box_ious(labels, labels)
    fixed = fixed or set()
    kept: list[int] = []
    for index in range(len(labels)):
        if id(labels[index]) in fixed or all(ious[index, other] <= iou_threshold for other in kept):
            kept.append(index)
    return [labels[i] for i in kept]


def pseudo_label_dataset(
    kept: Mapping[int, Sequence[Mapping[str, Any]]],
    unlabeled: Mapping[str, Any],
    categories: Sequence[Mapping[str, Any]],
    ignore: Mapping[int, Sequence[Mapping[str, Any]]] | None = None,
) -> dict[str, Any]:
    """LVIS-format dict of the kept images and their pseudo labels (bbox, RLE segmentation, area, score).

    ``unlabeled`` is the unlabeled split's LVIS/COCO dict (image records), ``categories`` the training categories.
    ``ignore`` (from ``uncertain_regions``) adds regions written as ``iscrowd: 1`` annotations, COCO's mark for
    "ignore this region". Pseudo-labelled images are not exhaustively annotated, so ``neg_category_ids`` stay empty.
    """
    ignore = ignore or {}
    images_by_id = {int(image["id"]): image for image in unlabeled["images"]}
    images, annotations = [], []
    for image_id in sorted(kept):
        if image_id not in images_by_id:
            raise DatasetError(f"pseudo label for image id {image_id}, which is not in the unlabeled image list")
        record = dict(images_by_id[image_id])
        record.update(neg_category_ids=[], not_exhaustive_category_ids=[], pseudo_labeled=True)
        images.append(record)
        for prediction in kept[image_id]:
            annotations.append(_annotation(len(annotations) + 1, record, prediction))
        for prediction in ignore.get(image_id, []):
            annotations.append(_annotation(len(annotations) + 1, record, prediction, iscrowd=1))
    return {
        "info": {"description": "pseudo labels from a teacher model (longtail_seg.pseudo_labels)"},
        "images": images,
        "annotations": annotations,
        "categories": [dict(category) for category in categories],
    }


def _annotation(
    annotation_id: int, image: Mapping[str, Any], prediction: Mapping[str, Any], iscrowd: int = 0
) -> dict[str, Any]:
    x, y, w, h = (float(v) for v in prediction["bbox"])
    annotation = {"id": annotation_id, "image_id": int(image["id"]), "category_id": int(prediction["category_id"]),
                  "bbox": [x, y, w, h], "area": w * h, "iscrowd": iscrowd, "score": float(prediction["score"])}
    segmentation = prediction.get("segmentation")
    if segmentation is not None:
        annotation["segmentation"] = segmentation
        rle = segmentation_to_rle(segmentation, int(image["height"]), int(image["width"]))
        annotation["area"] = float(mask_utils.area(rle))
    return annotation


def pseudo_label_summary(
    dataset: Mapping[str, Any], num_unlabeled_images: int, frequency_of: Mapping[int, str],
    score_threshold: float, rare_only: bool,
) -> dict[str, Any]:
    """Images kept, pseudo labels per LVIS frequency group (of the training set) and ignore regions."""
    labels = [a for a in dataset["annotations"] if not a.get("iscrowd", 0)]
    per_group = {name: 0 for name in GROUPS.values()}
    for annotation in labels:
        per_group[GROUPS[frequency_of[int(annotation["category_id"])]]] += 1
    return {
        "unlabeled_images": int(num_unlabeled_images),
        "images_kept": len(dataset["images"]),
        "labels": len(labels),
        "labels_per_group": per_group,
        "ignore_regions": len(dataset["annotations"]) - len(labels),
        "categories_with_labels": len({int(a["category_id"]) for a in labels}),
        "score_threshold": float(score_threshold),
        "rare_only": bool(rare_only),
    }


def pseudo_label_precision(
    pseudo: Mapping[str, Any],
    ground_truth: Mapping[str, Any],
    frequency_of: Mapping[int, str],
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Precision of pseudo labels against hidden ground truth, overall and per frequency group of the label's
    category; also the recall of the ground-truth instances on the kept images. Ignore regions (``iscrowd``) are
    not labels and are not scored."""
    truth_by_image: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for annotation in ground_truth["annotations"]:
        truth_by_image[int(annotation["image_id"])].append(annotation)
    labels_by_image: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    regions_by_image: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for annotation in pseudo["annotations"]:
        by_image = regions_by_image if annotation.get("iscrowd", 0) else labels_by_image
        by_image[int(annotation["image_id"])].append(annotation)
    correct = {name: 0 for name in ("all", *GROUPS.values())}
    total = dict(correct)
    truth_on_kept = regions_on_objects = 0
    for image in pseudo["images"]:
        image_id = int(image["id"])
        truths = truth_by_image.get(image_id, [])
        truth_on_kept += len(truths)
        regions_on_objects += _regions_on_objects(regions_by_image.get(image_id, []), truths, iou_threshold)
        matched = _match(labels_by_image.get(image_id, []), truths, iou_threshold)
        for label, is_correct in matched:
            group = GROUPS[frequency_of[int(label["category_id"])]]
            for key in ("all", group):
                total[key] += 1
                correct[key] += int(is_correct)
    precision = {key: (correct[key] / total[key] if total[key] else None) for key in total}
    return {"iou_threshold": iou_threshold, "labels": total, "correct": correct, "precision": precision,
            "ground_truth_instances_on_kept_images": truth_on_kept,
            "recall_on_kept_images": correct["all"] / truth_on_kept if truth_on_kept else None,
            "ignore_regions": sum(len(r) for r in regions_by_image.values()),
            "ignore_regions_on_objects": regions_on_objects}


def _regions_on_objects(
    regions: Sequence[Mapping[str, Any]], truths: Sequence[Mapping[str, Any]], iou_threshold: float
) -> int:
    """How many ignore regions cover a ground-truth object of any category (box IoU >= iou_threshold)."""
    if not regions or not truths:
        return 0
    return int((_box_ious(regions, truths).max(axis=1) >= iou_threshold).sum())


def _match(
    labels: Sequence[Mapping[str, Any]], truths: Sequence[Mapping[str, Any]], iou_threshold: float
) -> list[tuple[Mapping[str, Any], bool]]:
    """Greedy matching in descending score order: each label takes the best unmatched same-category truth."""
    order = sorted(labels, key=lambda a: -float(a.get("score", 1.0)))
    if not order:
        return []
    if not truths:
        return [(label, False) for label in order]
    ious = _box_ious(order, truths)
    used = np.zeros(len(truths), dtype=bool)
    truth_categories = np.array([int(t["category_id"]) for t in truths])
    results = []
    for row, label in enumerate(order):
        candidates = (~used) & (truth_categories == int(label["category_id"])) & (ious[row] >= iou_threshold)
        if candidates.any():
            best = int(np.argmax(np.where(candidates, ious[row], -1.0)))
            used[best] = True
            results.append((label, True))
        else:
            results.append((label, False))
    return results


def _box_ious(rows: Sequence[Mapping[str, Any]], columns: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Box IoU matrix [len(rows), len(columns)] of two non-empty lists of records with an xywh ``bbox``."""
    ious = mask_utils.iou([list(r["bbox"]) for r in rows], [list(c["bbox"]) for c in columns], [0] * len(columns))
    return np.asarray(ious).reshape(len(rows), len(columns))
