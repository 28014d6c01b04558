"""LVIS evaluation (federated protocol, 300 detections per image) with hotcoco's lvis-api drop-in.

Metrics are reported in percent, like the report's tables; a metric whose group has no ground truth
(e.g. APr on a split without rare categories) is ``None`` (lvis-api prints -1 there).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hotcoco

from longtail_seg.io_utils import atomic_write_json

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
IOU_TYPES = ("bbox", "segm")
LVIS_MAX_DETS_PER_IMAGE = 300

Results = str | os.PathLike | list


def load_results(results: Results) -> list[dict]:
    """Return the result dicts of a results JSON path, or the list itself."""
    if isinstance(results, list):
        return results
    path = Path(results)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist; run inference first")
    with open(path) as f:
        loaded = json.load(f)
    if not isinstance(loaded, list):
        raise ValueError(f"{path}: LVIS results must be a JSON list of detection dicts, got {type(loaded).__name__}")
    return loaded


def _check_results(results: list[dict], gt: Any, iou_types: Iterable[str], source: str) -> None:
    """Fail early, naming the record, on detections hotcoco would silently drop or reject."""
    images, category_ids = gt.imgs, set(gt.get_cat_ids())
    needs_segm = "segm" in iou_types
    for index, result in enumerate(results):
        missing = {"image_id", "category_id", "bbox", "score"} - set(result)
        if needs_segm:
            missing |= {"segmentation"} - set(result)
        if missing:
            fix = " (segm evaluation needs masks: run inference with masks or use --iou-types bbox)" \
                if "segmentation" in missing else ""
            raise ValueError(f"{source}: result {index} lacks {sorted(missing)}{fix}")
        image = images.get(result["image_id"])
        if image is None:
            raise ValueError(f"{source}: result {index} has image_id {result['image_id']} that is not in the "
                             "ground truth; predictions and annotations come from different splits")
        size = result.get("segmentation", {}).get("size") if needs_segm else None
        if size is not None and list(size) != [image["height"], image["width"]]:
            raise ValueError(f"{source}: result {index} has a {size[0]}x{size[1]} mask on image "
                             f"{result['image_id']} of {image['height']}x{image['width']}; encode masks at the "
                             "original image size (pass scale= to detections_to_lvis_results)")
        if result["category_id"] not in category_ids:
            raise ValueError(f"{source}: result {index} has category_id {result['category_id']} that is not "
                             "in the ground truth categories; check the label -> category id mapping")


def _percent(value: float) -> float | None:
    """lvis-api fraction to percent; its -1 ("no ground truth in this group") becomes None."""
    return None if value < 0 else 100.0 * float(value)


def _evaluate_one(gt: Any, results: list[dict], iou_type: str, max_dets: int) -> dict[str, float | None]:
    """Run hotcoco's LVISEval for one IoU type and return the AP metrics in percent."""
    if iou_type == "bbox":  # masks are not needed: skip parsing them
        results = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    detections = hotcoco.LVISResults(gt, results, max_dets=max_dets)
    evaluator = hotcoco.LVISEval(gt, detections, iou_type)
    evaluator.params.max_dets = [max_dets]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # summarize() prints a table
        warnings.filterwarnings("ignore", message=".*max_dets differ.*")  # concerns AR lines, not reported here
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    raw = evaluator.get_results()
    return {key: _percent(raw[key]) for key in METRIC_KEYS}


def load_ground_truth(gt_json_path: str | os.PathLike) -> Any:
    """Load LVIS-format annotations into a hotcoco dataset, checking every category has an r/c/f frequency."""
    gt_path = Path(gt_json_path)
    if not gt_path.is_file():
        raise FileNotFoundError(f"ground-truth annotations {gt_path} do not exist")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = hotcoco.LVIS(str(gt_path))
    for category in gt.load_cats(gt.get_cat_ids()):
        if category.get("frequency") not in ("r", "c", "f"):
            raise ValueError(f"{gt_path}: category {category.get('id')} has frequency "
                             f"{category.get('frequency')!r}; LVIS evaluation needs 'r', 'c' or 'f' on every "
                             "category (compute it from the training split's image counts)")
    return gt


def evaluate_lvis(
    gt_json_path: str | os.PathLike | Any,
    results: Results,
    iou_types: Iterable[str] = IOU_TYPES,
    max_dets: int = LVIS_MAX_DETS_PER_IMAGE,
) -> dict[str, dict[str, float | None]]:
    """Evaluate LVIS results against an LVIS-format ground truth; returns {iou_type: {AP, ..., APf}} in percent.

    ``gt_json_path`` is a path or a dataset from :func:`load_ground_truth`. Follows the federated protocol:
    detections of a category neither annotated nor in an image's ``neg_category_ids`` are ignored, unmatched
    ones of ``not_exhaustive_category_ids`` are not false positives, and each image keeps its ``max_dets``
    highest-scoring detections.
    """
    iou_types = tuple(iou_types)
    unknown = set(iou_types) - set(IOU_TYPES)
    if unknown:
        raise ValueError(f"unknown iou types {sorted(unknown)}; choose from {IOU_TYPES}")
    is_path = isinstance(gt_json_path, (str, os.PathLike))
    gt = load_ground_truth(gt_json_path) if is_path else gt_json_path
    source = str(results) if not isinstance(results, list) else "results"
    results = load_results(results)
    _check_results(results, gt, iou_types, source)
    return {iou_type: _evaluate_one(gt, results, iou_type, int(max_dets)) for iou_type in iou_types}


def format_metrics_table(metrics: dict[str, dict[str, float | None]]) -> str:
    """A small fixed-width table: one row per IoU type, one column per metric."""
    header = f"{'':6}" + "".join(f"{key:>7}" for key in METRIC_KEYS)
    rows = [header]
    for iou_type, values in metrics.items():
        if not isinstance(values, dict):
            continue
        cells = "".join(f"{'-':>7}" if values.get(key) is None else f"{values[key]:7.2f}" for key in METRIC_KEYS)
        rows.append(f"{iou_type:6}{cells}")
    return "\n".join(rows)


def write_metrics(path: str | os.PathLike, metrics: dict[str, Any]) -> None:
    """Write the metrics dict as indented JSON, atomically."""
    atomic_write_json(path, metrics, indent=2)
