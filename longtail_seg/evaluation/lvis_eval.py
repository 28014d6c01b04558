"""LVIS evaluation (federated protocol, 300 detections per image) with hotcoco's lvis-api drop-in.

Metrics are reported in percent, like the report's tables; a metric whose group has no ground truth
(e.g. APr on a split without rare categories) is ``None`` (lvis-api prints -1 there).

A results file is read by hotcoco itself (no Python dict per detection: LVIS val has ~6M) and checked through what
hotcoco rejects or warns about plus one streaming count of the score and RLE keys; only when one of those finds a
problem is the file parsed in Python, to name the first bad result (0-based index) and the fix. Masks are sized
against their image on the first result only there (a scale bug hits them all); a later mask of the wrong size or
with corrupt counts goes unseen (hotcoco scores it as a miss). Results in memory get the full per-result check.

Where lvis-api and hotcoco differ, lvis-api is followed: a detection whose box has zero width or height is dropped
after the 300-per-image cap (lvis-api keeps annotations of area > 0 only). Deliberately stricter than lvis-api: a
detection of a category the ground truth lacks is an error (lvis-api drops it silently), since it means a
label-mapping or dataset mix-up; a detection of an image the ground truth lacks is an error in both.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hotcoco

from longtail_seg.config_keys import is_int, is_number
from longtail_seg.io_utils import atomic_write_json, load_json_file

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
IOU_TYPES = ("bbox", "segm")
LVIS_MAX_DETS_PER_IMAGE = 300

Results = str | os.PathLike | list
# What to do about a broken predictions file (the error names the file and the result).
RERUN_INFERENCE = ("rerun inference: delete the predictions file and rerun the `infer` job that writes it "
                   "(`snakemake --cores all` rebuilds a missing file; by hand: workflow_scripts/infer.py)")
IN_MEMORY = "predictions (in memory)"  # how a list of results passed directly is named


def load_results(results: Results) -> list[dict]:
    """Return the result dicts of a results JSON path, or the list itself. A missing, truncated or non-list file
    raises naming the file and the fix."""
    if isinstance(results, list):
        return results
    path = _existing_file(results)
    loaded = load_json_file(path, "predictions file", RERUN_INFERENCE)
    if not isinstance(loaded, list):
        raise ValueError(f"{path}: LVIS results must be a JSON list of detection dicts, got "
                         f"{type(loaded).__name__}; {RERUN_INFERENCE}")
    return loaded


def _check_results(results: list[dict], gt: Any, iou_types: Iterable[str], source: str) -> None:
    """Fail early, naming the predictions file (``source``), the result's index and the fix, on detections hotcoco
    would silently drop, reject or crash on."""
    images, category_ids = gt.imgs, set(gt.get_cat_ids())
    needs_segm = "segm" in iou_types
    required = RESULT_KEYS | ({"segmentation"} if needs_segm else set())
    for index, result in enumerate(results):
        problem = _result_problem(result, images, category_ids, required, needs_segm)
        if problem is not None:
            raise ValueError(f"{source}: result {index} {problem}")  # 0-based, as in the JSON list


RESULT_KEYS = frozenset({"image_id", "category_id", "bbox", "score"})


def _result_problem(
    result: Any, images: dict, category_ids: set[int], required: frozenset[str], needs_segm: bool
) -> str | None:
    """What is wrong with one detection, with the fix, or None (no message is built for a good one: this runs
    once per detection, millions of times at LVIS val size)."""
    if not isinstance(result, dict):
        return (f"is a {type(result).__name__} ({_short(result)}), not a detection dict with image_id, "
                f"category_id, bbox, score; {RERUN_INFERENCE}")
    missing = required - result.keys()
    if missing:
        fix = ("segm evaluation needs masks: run inference with masks or use --iou-types bbox"
               if missing == {"segmentation"} else RERUN_INFERENCE)
        return f"lacks {sorted(missing)}; {fix}"
    for key in ("image_id", "category_id"):
        if not is_int(result[key]):
            return f"has {key} {result[key]!r}, not an integer id; {RERUN_INFERENCE}"
    if not is_number(result["score"]):
        return f"has score {result['score']!r}, not a finite number; {RERUN_INFERENCE}"
    bbox = result["bbox"]
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(map(is_number, bbox))):
        return f"has bbox {_short(bbox)}, not [x, y, width, height] numbers; {RERUN_INFERENCE}"
    image = images.get(result["image_id"])
    if image is None:
        return (f"has image_id {result['image_id']} that is not in the ground truth; predictions and annotations "
                "come from different splits (evaluate against the annotations the predictions were made on, or "
                "rerun inference on this split)")
    segmentation = result.get("segmentation") if needs_segm else None
    if needs_segm and not (isinstance(segmentation, dict) and "counts" in segmentation
                           or isinstance(segmentation, list)):
        return (f"has segmentation {_short(segmentation)}, not an RLE dict with size and counts (or polygons); "
                f"{RERUN_INFERENCE}")
    size = segmentation.get("size") if isinstance(segmentation, dict) else None
    if size is not None and list(size) != [image["height"], image["width"]]:
        return (f"has a {size[0]}x{size[1]} mask on image {result['image_id']} of {image['height']}x"
                f"{image['width']}; encode masks at the original image size (pass scale= to "
                "detections_to_lvis_results)")
    if result["category_id"] not in category_ids:
        return (f"has category_id {result['category_id']} that is not in the ground truth categories; the "
                "predictions come from a model of another dataset, or the label -> category id mapping is wrong "
                f"(evaluate against the annotations the model was trained with, or {RERUN_INFERENCE})")
    return None


def _short(value: Any) -> str:
    """``repr(value)``, cut to 80 characters, for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _percent(value: float) -> float | None:
    """lvis-api fraction to percent; its -1 ("no ground truth in this group") becomes None."""
    return None if value < 0 else 100.0 * float(value)


def _evaluate_one(gt: Any, detections: Any, iou_type: str, max_dets: int) -> dict[str, float | None]:
    """Run hotcoco's LVISEval for one IoU type on capped detections and return the AP metrics in percent."""
    return summary_metrics(run_evaluator(gt, detections, iou_type, max_dets))


def run_evaluator(gt: Any, detections: Any, iou_type: str, max_dets: int) -> Any:
    """hotcoco's LVISEval for one IoU type on capped detections, evaluated, accumulated and summarized."""
    evaluator = hotcoco.LVISEval(gt, detections, iou_type)
    evaluator.params.max_dets = [max_dets]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # summarize() prints a table
        warnings.filterwarnings("ignore", message=".*max_dets differ.*")  # concerns AR lines, not reported here
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def summary_metrics(evaluator: Any) -> dict[str, float | None]:
    """The AP metrics in percent of a :func:`run_evaluator` evaluator."""
    raw = evaluator.get_results()
    return {key: _percent(raw[key]) for key in METRIC_KEYS}


def per_category_ap(evaluator: Any) -> dict[int, float | None]:
    """AP in percent of each category of a :func:`run_evaluator` evaluator, by category id, as lvis-api averages it
    (the precision over IoU thresholds and recall points, all areas, the largest detection cap); None for a category
    without ground truth or negative images (it counts in no group's AP)."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [T, R, K]: all areas, the last max_dets
    values = {}
    for index, category_id in enumerate(evaluator.params.cat_ids):
        valid = precision[:, :, index][precision[:, :, index] > -1]
        values[int(category_id)] = float(100.0 * valid.mean()) if valid.size else None
    return values


TIDE_ERRORS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")


def calibration_by_group(
    gt: Any, detections: Detections, iou_type: str = "segm", max_dets: int = LVIS_MAX_DETS_PER_IMAGE, bins: int = 10
) -> dict[str, dict[str, Any]]:
    """Score calibration (hotcoco's, at IoU 0.5) of all categories and of each LVIS group with ground truth: per
    equal-width score bin the mean score, the fraction of detections that are true positives and the count, and
    the expected calibration error; the federated protocol decides what a detection counts as."""
    categories = gt.load_cats(gt.get_cat_ids())
    groups = {"all": [c["id"] for c in categories]}
    groups.update({group: [c["id"] for c in categories if c.get("frequency") == group] for group in ("r", "c", "f")})
    calibration = {}
    for group, category_ids in groups.items():
        if not category_ids:
            continue
        evaluator = hotcoco.LVISEval(gt, detections.results, iou_type)
        evaluator.params.max_dets = [max_dets]
        evaluator.params.cat_ids = category_ids
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
        result = evaluator.calibration(n_bins=bins, iou_threshold=0.5)
        calibration[group] = {"ece": float(result["ece"]), "num_detections": int(result["num_detections"]),
                              "bins": [dict(b) for b in result["bins"]]}
    return calibration


def error_breakdown(
    evaluator: Any, categories: Sequence[dict] = (), confusion_min_score: float = 0.3, top_confusions: int = 20
) -> dict[str, Any]:
    """hotcoco's TIDE-style breakdown at IoU 0.5: for each error type (classification, localisation, both,
    duplicate, background, missed) the AP points gained if it were fixed (``delta_ap``, percent) and its count;
    ``ap50`` the AP at IoU 0.5 it starts from; ``rare_confusions`` the most frequent mistakes on rare ground truth
    (:func:`rare_confusions`, with the ground truth's ``categories`` records)."""
    tide = evaluator.tide_errors(pos_thr=0.5, bg_thr=0.1)
    return {"ap50": 100.0 * float(tide["ap_base"]),
            "delta_ap": {key: 100.0 * float(tide["delta_ap"][key]) for key in (*TIDE_ERRORS, "FP", "FN")},
            "counts": {key: int(tide["counts"][key]) for key in TIDE_ERRORS},
            "rare_confusions": rare_confusions(evaluator, categories, confusion_min_score, top_confusions)}


def rare_confusions(evaluator: Any, categories: Sequence[dict], min_score: float = 0.3, top: int = 20) -> list[dict]:
    """The ``top`` most frequent (rare ground-truth category, other predicted category) pairs: a detection of score
    >= ``min_score`` of another category matched to a rare object at IoU >= 0.5 (hotcoco's confusion matrix over all
    categories). Most frequent first, ties by ids."""
    frequency = {int(c["id"]): c.get("frequency") for c in categories}
    if not any(value == "r" for value in frequency.values()):
        return []
    confusion = evaluator.confusion_matrix(iou_thr=0.5, max_det=None, min_score=float(min_score))
    ids, names = [int(i) for i in confusion["cat_ids"]], list(confusion["cat_names"])
    matrix = confusion["matrix"][: len(ids), : len(ids)].astype("int64")
    matrix[range(len(ids)), range(len(ids))] = 0  # correct classes are no confusion
    rare_rows = [row for row, category in enumerate(ids) if frequency.get(category) == "r"]
    pairs = [(-int(matrix[row, col]), ids[row], ids[col], row, col) for row in rare_rows
             for col in matrix[row].nonzero()[0].tolist()]
    return [{"gt_category_id": gt_id, "gt_name": names[row], "predicted_category_id": predicted_id,
             "predicted_name": names[col], "predicted_frequency": frequency.get(predicted_id), "count": -negative}
            for negative, gt_id, predicted_id, row, col in sorted(pairs)[:top]]


POSITIVE_AREA = (math.ulp(0.0), math.inf)  # hotcoco's area ranges include the bounds
MASK_MARKER = b'"counts"'  # once per RLE mask in a results file (RLE strings never hold a quote)
READ_CHUNK = 1 << 24


@dataclass
class Detections:
    """Results loaded by hotcoco, capped per image, and how many detections the input held before the cap."""

    results: Any
    count: int


def load_detections(
    gt: Any, results: Results, iou_types: Iterable[str], max_dets: int = LVIS_MAX_DETS_PER_IMAGE,
    source: str | os.PathLike | None = None,
) -> Detections:
    """Load results into hotcoco (a path is parsed by hotcoco, not by Python), keep each image's ``max_dets``
    best-scored, drop zero-area boxes as lvis-api does; a bad result raises naming ``source``, its index and the fix.
    """
    iou_types = tuple(iou_types)
    in_memory = isinstance(results, list)
    source = str(source if source is not None else IN_MEMORY if in_memory else results)
    if in_memory:
        _check_results(results, gt, iou_types, source)  # the dicts exist already: checking them is cheap
        if "segm" not in iou_types:  # masks are not needed: skip parsing them
            results = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
        payload: Any = results
    else:
        payload = str(_existing_file(results))
        head = _file_head(payload)
        if not head.startswith("[") or "segm" in iou_types and _first_mask_off_size(gt, head):
            _diagnose(gt, results, iou_types, source)  # hotcoco reads a JSON object as no results
    try:
        loaded = hotcoco.LVISResults(gt, payload, max_dets=max_dets)
    except ValueError as error:  # hotcoco names a line and column at best: find the result
        _diagnose(gt, results, iou_types, source)
        raise ValueError(f"{source}: hotcoco cannot read these results ({error}); {RERUN_INFERENCE}") from None
    ids = loaded.get_ann_ids()
    count = len(results) if in_memory else _results_in_file(payload, ids)
    if not in_memory and _file_looks_wrong(loaded, payload, count, iou_types):
        _diagnose(gt, results, iou_types, source)  # raises on a bad result; polygon masks pass
    return Detections(_without_zero_area_boxes(loaded, max_dets), count)


def _existing_file(results: str | os.PathLike) -> Path:
    """The predictions path, or an error naming it and the fix."""
    path = Path(results)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist; run inference first")
    return path


def _file_head(path: str) -> str:
    """The file's first 64 KiB as text, leading whitespace stripped."""
    with open(path, "rb") as file:
        return file.read(1 << 16).decode("utf-8", errors="replace").lstrip()


def _first_mask_off_size(gt: Any, head: str) -> bool:
    """Whether the file's first result has an RLE mask of another size than its image: masks encoded at the test
    scale instead of the image's are wrong in every result, and this is the one mask looked at on the fast path."""
    try:
        first, _ = json.JSONDecoder().raw_decode(head[1:].lstrip())
        size = first["segmentation"]["size"]
        image = gt.load_imgs([first["image_id"]])[0]
    except (ValueError, LookupError, TypeError, AttributeError):  # cut, not a dict, or an unknown image: see later
        return False
    return list(size) != [image["height"], image["width"]]


def _results_in_file(path: str, ids: list[int]) -> int:
    """How many results the file holds. hotcoco's result ids are their 1-based positions in the file, kept by the
    cap: with none missing below the highest, their count, without reading (a cap that dropped only the file's last
    results goes unseen there; inference writes at most 300 per image); otherwise the file's image_id keys."""
    if not ids or max(ids) == len(ids):
        return len(ids)
    return count_in_file(path, (b'"image_id"',))[0]


def _file_looks_wrong(loaded: Any, path: str, count: int, iou_types: tuple[str, ...]) -> bool:
    """Cheap signs of a bad result that hotcoco loaded silently: results of images or categories the ground truth
    lacks (hotcoco's load warnings), fewer scores than results, fewer RLE masks than results (one streaming pass)."""
    if loaded.load_warnings:
        return True
    markers = (b'"score"', MASK_MARKER) if "segm" in iou_types else (b'"score"',)
    return any(found != count for found in count_in_file(path, markers))


def count_in_file(path: str | os.PathLike, markers: tuple[bytes, ...]) -> list[int]:
    """Occurrences of each marker (a string that cannot overlap itself, like a quoted key) in the file, in one pass
    of fixed-size chunks, so memory stays flat."""
    keep = max(len(marker) for marker in markers) - 1  # bytes of the previous chunks a cut marker can start in
    totals = [0] * len(markers)
    tail = b""  # the last ``keep`` bytes read so far
    with open(path, "rb") as file:
        while chunk := file.read(READ_CHUNK):
            head = chunk[:keep]
            seam = tail + head
            for index, marker in enumerate(markers):  # whole in the chunk, plus cut by its start
                totals[index] += chunk.count(marker) + seam.count(marker) - tail.count(marker) - head.count(marker)
            tail = (tail + chunk[-keep:])[-keep:] if keep else b""
    return totals


def _diagnose(gt: Any, results: Results, iou_types: tuple[str, ...], source: str) -> None:
    """Parse the results in Python and raise naming the first bad one; return if every result is fine."""
    _check_results(load_results(results), gt, iou_types, source)


def _without_zero_area_boxes(loaded: Any, max_dets: int) -> Any:
    """lvis-api evaluates annotations of area > 0 only (a detection's area is its box's): drop the others, after
    the per-image cap as there."""
    if not loaded.get_ann_ids(area_rng=[-math.inf, 0.0]):
        return loaded
    kept = loaded.filter(area_rng=list(POSITIVE_AREA), drop_empty_images=False)
    return kept.cap_detections_per_image(max_dets)  # marks it capped, so LVISEval does not cap it again


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
    source: str | os.PathLike | None = None,
) -> dict[str, dict[str, float | None]]:
    """Evaluate LVIS results against an LVIS-format ground truth; returns {iou_type: {AP, ..., APf}} in percent.

    ``gt_json_path`` is a path or a dataset from :func:`load_ground_truth`. Follows the federated protocol:
    detections of a category neither annotated nor in an image's ``neg_category_ids`` are ignored, unmatched
    ones of ``not_exhaustive_category_ids`` are not false positives, and each image keeps its ``max_dets``
    highest-scoring detections. ``source`` names the predictions in error messages (default: the path of
    ``results``, or "predictions (in memory)" for a list): pass the file a list was loaded from.
    """
    iou_types = tuple(iou_types)
    unknown = set(iou_types) - set(IOU_TYPES)
    if unknown:
        raise ValueError(f"unknown iou types {sorted(unknown)}; choose from {IOU_TYPES}")
    is_path = isinstance(gt_json_path, (str, os.PathLike))
    gt = load_ground_truth(gt_json_path) if is_path else gt_json_path
    if source is None and not isinstance(results, list):
        source = results  # errors name the file also when its masks are re-ranked in memory
    metrics: dict[str, dict[str, float | None]] = {}
    for types, typed_results in results_per_score(results, iou_types):
        detections = load_detections(gt, typed_results, types, int(max_dets), source)
        metrics.update(evaluate_detections(gt, detections, types, int(max_dets)))
    return {iou_type: metrics[iou_type] for iou_type in iou_types}


def results_per_score(results: Results, iou_types: tuple[str, ...]) -> list[tuple[tuple[str, ...], Results]]:
    """The IoU types and the results they rank: all types on ``score``, except that a MaskIoU head's results
    (carrying ``mask_score``) have their masks ranked by the mask score (``results_with_mask_scores``)."""
    if "segm" not in iou_types or not has_mask_scores(results):
        return [(iou_types, results)]
    box_types = tuple(iou_type for iou_type in iou_types if iou_type != "segm")
    groups: list[tuple[tuple[str, ...], Results]] = [(box_types, results)] if box_types else []
    return groups + [(("segm",), results_with_mask_scores(load_results(results)))]


def has_mask_scores(results: Results) -> bool:
    """Whether the results carry a ``mask_score`` (a MaskIoU head's segm score), judged by the first result."""
    if isinstance(results, list):
        return bool(results) and isinstance(results[0], dict) and "mask_score" in results[0]
    head = _file_head(str(_existing_file(results)))
    try:
        first, _ = json.JSONDecoder().raw_decode(head[1:].lstrip())
    except ValueError:
        return False
    return isinstance(first, dict) and "mask_score" in first


def results_with_mask_scores(results: list[dict]) -> list[dict]:
    """The results with ``score`` replaced by their ``mask_score``: what the segm evaluation ranks by."""
    return [{**result, "score": result.get("mask_score", result.get("score"))} for result in results]


def evaluate_detections(
    gt: Any, detections: Detections, iou_types: Iterable[str] = IOU_TYPES, max_dets: int = LVIS_MAX_DETS_PER_IMAGE
) -> dict[str, dict[str, float | None]]:
    """AP metrics in percent per IoU type of detections from :func:`load_detections`."""
    return {iou_type: _evaluate_one(gt, detections.results, iou_type, max_dets) for iou_type in iou_types}


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
