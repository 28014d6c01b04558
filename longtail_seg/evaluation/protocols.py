"""The evaluation protocols a test can ask for (``tests.NAME.protocol``), each metric named after its protocol.

- ``standard``: LVIS AP, 300 detections per image (``evaluation/lvis_eval.py``, hotcoco): ``AP``, ``APr``, ...
- ``fixed``: AP-fixed (Dave, Dollár, Ramanan, Kirillov, Girshick 2021, "Evaluating Large-Vocabulary Object
  Detectors: The Devil is in the Details"): each category's ``dets_per_category`` (10,000) best detections over
  the whole split, no per-image cap: ``AP_fixed``, ``APr_fixed``, ... (boxes and masks), next to the standard ones.
- ``boundary``: boundary AP of masks (Cheng et al. 2021), IoU = min(mask IoU, boundary IoU) with a band of 2% of
  the image diagonal (``evaluation/boundary_iou.py``, matched by ``evaluation/federated_eval.py``):
  ``AP_boundary``, ... next to the standard ones.
- ``challenge2021``: the LVIS 2021 challenge's metric, boundary AP-fixed (``AP_fixed_boundary``), with the standard,
  fixed and boundary metrics beside it.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from longtail_seg.evaluation.boundary_iou import boundary_ap_iou
from longtail_seg.evaluation.federated_eval import evaluate_federated
from longtail_seg.evaluation.lvis_eval import (
    IOU_TYPES,
    LVIS_MAX_DETS_PER_IMAGE,
    Results,
    evaluate_detections,
    load_detections,
    load_results,
    results_per_score,
    run_evaluator,
    summary_metrics,
)
from longtail_seg.inference.config import AP_FIXED_DETS_PER_CATEGORY, PROTOCOLS

# protocol -> its metric variants: (name suffix, per-category top-k without a per-image cap, boundary IoU)
VARIANTS: dict[str, tuple[tuple[str, bool, bool], ...]] = {
    "standard": (("", False, False),),
    "fixed": (("", False, False), ("_fixed", True, False)),
    "boundary": (("", False, False), ("_boundary", False, True)),
    "challenge2021": (("", False, False), ("_fixed", True, False), ("_boundary", False, True),
                      ("_fixed_boundary", True, True)),
}
BOUNDARY_MIN_IOU = 0.5  # LVIS's lowest threshold: a pair below it in mask IoU cannot match (no boundary needed)
assert set(VARIANTS) == set(PROTOCOLS)


def top_per_category(results: list[dict], k: int) -> list[dict]:
    """AP-fixed's detections: each category's ``k`` best-scored results over the whole list (on a tie, the earlier
    one), kept in their original order."""
    by_category: dict[Any, list[int]] = defaultdict(list)
    for index, result in enumerate(results):
        by_category[result["category_id"]].append(index)
    kept: list[int] = []
    for indices in by_category.values():
        if len(indices) > k:
            indices = sorted(indices, key=lambda i: -results[i]["score"])[:k]
        kept.extend(indices)
    return [results[i] for i in sorted(kept)]


def mask_iou(image: dict, dts: list[dict], gts: list[dict], gt: Any) -> np.ndarray:
    """Mask IoU of one image's detections and ground truths (RLEs; polygons of ``gt`` converted)."""
    ious = mask_utils.iou([d["segmentation"] for d in dts], [_rle(gt, g) for g in gts], [0] * len(gts))
    return np.asarray(ious, dtype=np.float64).reshape(len(dts), len(gts))


def boundary_iou_of(gt: Any):
    """The IoU function of boundary AP for :func:`evaluate_federated` on ground truth ``gt``."""
    def iou(image: dict, dts: list[dict], gts: list[dict]) -> np.ndarray:
        return boundary_ap_iou([d["segmentation"] for d in dts], [_rle(gt, g) for g in gts], BOUNDARY_MIN_IOU)
    return iou


def _rle(gt: Any, ann: dict) -> dict:
    """An annotation's mask as a compressed RLE (polygons and uncompressed RLEs converted by hotcoco)."""
    segmentation = ann["segmentation"]
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
        return segmentation
    return gt.ann_to_rle(ann)


def evaluate_protocol(
    gt: Any,
    results: Results,
    protocol: str = "standard",
    iou_types: Iterable[str] = IOU_TYPES,
    max_dets: int = LVIS_MAX_DETS_PER_IMAGE,
    dets_per_category: int = AP_FIXED_DETS_PER_CATEGORY,
    source: str | os.PathLike | None = None,
    evaluators: dict[str, Any] | None = None,
) -> tuple[dict[str, dict[str, float | None]], int]:
    """Every metric of ``protocol`` per IoU type ({"bbox": {"AP": ..., "AP_fixed": ...}, "segm": {...}}, percent)
    and the number of results read. Boundary variants are of masks only (``segm``). A dict passed as
    ``evaluators`` receives the standard evaluation's hotcoco evaluator per IoU type (per-category AP, TIDE errors
    read from it), so nothing is evaluated twice."""
    if protocol not in VARIANTS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; choose from {list(VARIANTS)}")
    if not (isinstance(dets_per_category, int) and dets_per_category >= 1):
        raise ValueError(f"dets_per_category must be an integer >= 1 (AP-fixed keeps that many detections per "
                         f"category; LVIS: {AP_FIXED_DETS_PER_CATEGORY}), got {dets_per_category!r}")
    iou_types = tuple(iou_types)
    if any(boundary for _, _, boundary in VARIANTS[protocol]) and "segm" not in iou_types:
        raise ValueError(f"protocol {protocol!r} includes boundary AP, which needs masks: add segm to the IoU types")
    metrics: dict[str, dict[str, float | None]] = {iou_type: {} for iou_type in iou_types}
    count = 0
    if source is None and not isinstance(results, list):
        source = results  # errors name the file also when its masks are re-ranked in memory
    for types, typed_results in results_per_score(results, iou_types):
        count = _evaluate_variants(gt, typed_results, protocol, types, max_dets, dets_per_category, source,
                                   evaluators, metrics) or count
    return metrics, count


def _evaluate_variants(
    gt: Any, results: Results, protocol: str, iou_types: tuple[str, ...], max_dets: int, dets_per_category: int,
    source: str | os.PathLike | None, evaluators: dict[str, Any] | None, metrics: dict[str, dict],
) -> int:
    """Fill ``metrics`` with every variant of ``protocol`` for ``iou_types`` (boundary ones need segm among them);
    return the number of results read by the standard pass."""
    count = 0
    for fixed in (False, True):
        variants = [(suffix, boundary) for suffix, f, boundary in VARIANTS[protocol]
                    if f == fixed and (not boundary or "segm" in iou_types)]
        if not variants:
            continue
        if fixed:
            payload: Results = top_per_category(load_results(results), dets_per_category)
            cap = max(len(payload), 1)  # no per-image cap
            detections = load_detections(gt, payload, iou_types, cap, source)
        else:
            cap = max_dets
            detections = load_detections(gt, results, iou_types, cap, source)
            count = detections.count
        for suffix, boundary in variants:
            if boundary:
                values = {"segm": evaluate_federated(gt, detections.results, boundary_iou_of(gt))}
            elif not fixed and evaluators is not None:  # the standard evaluation, kept for the caller
                evaluators.update({t: run_evaluator(gt, detections.results, t, cap) for t in iou_types})
                values = {t: summary_metrics(evaluators[t]) for t in iou_types}
            else:
                values = evaluate_detections(gt, detections, iou_types, cap)
            for iou_type, named in values.items():
                metrics[iou_type].update({key + suffix: value for key, value in named.items()})
    return count
