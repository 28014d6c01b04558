"""LVIS's federated AP with any IoU: lvis-api's matching and accumulation (as hotcoco runs them), for the IoU hotcoco
does not have, boundary AP's min(mask IoU, boundary IoU) (``evaluation/boundary_iou.py``).

With the mask IoU it equals hotcoco's segm metrics (tests/evaluation/test_federated_eval.py). The protocol: a
detection counts only on images where its category is present or in ``neg_category_ids``; per image and category,
detections in score order take the best-IoU free ground truth at each threshold (non-ignored ones first, ties to the
later one); unmatched detections outside the area range, or of a category in the image's
``not_exhaustive_category_ids``, are ignored; precision at 101 recall points, averaged over categories with ground
truth. Only detections whose best IoU reaches the lowest threshold enter the greedy loop.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import hotcoco
import numpy as np

from longtail_seg.evaluation.lvis_eval import METRIC_KEYS

# (image record, detections in score order, ground truths) -> IoU array (len(dt), len(gt))
IoUFunction = Callable[[dict, list[dict], list[dict]], np.ndarray]
FREQUENCIES = ("r", "c", "f")


def evaluate_federated(gt: Any, detections: Any, iou_fn: IoUFunction) -> dict[str, float | None]:
    """LVIS AP metrics in percent (None where a group has no ground truth) of ``detections`` against the hotcoco
    LVIS dataset ``gt``. ``detections``: hotcoco results (read one image at a time, so a split's millions of
    detections are never Python dicts all at once) or a list of dicts with id, image_id, category_id, score, area
    and what ``iou_fn`` reads."""
    params = hotcoco.Params(iou_type="segm")
    thresholds = np.asarray(params.iou_thrs, dtype=np.float64)
    area_ranges = [tuple(r) for r in params.area_rng]
    category_ids = sorted(gt.get_cat_ids())
    images = gt.imgs
    gts: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for ann in gt.load_anns(gt.get_ann_ids()):
        gts[ann["image_id"], ann["category_id"]].append(ann)
    present: dict[int, set[int]] = defaultdict(set)
    for image_id, category_id in gts:
        present[image_id].add(category_id)
    detections_of = _detection_reader(detections)
    per_category: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = defaultdict(list)
    gt_counts: dict[tuple[int, int], int] = defaultdict(int)
    for image_id in sorted(images):  # image order, as lvis-api concatenates them
        image = images[image_id]
        # the federated protocol: a detection counts where its category is present or verified absent
        evaluated = present[image_id] | set(image.get("neg_category_ids", []))
        if not evaluated:
            continue
        not_exhaustive = set(image.get("not_exhaustive_category_ids", []))
        image_dets = detections_of(image_id, evaluated)
        for category_id in sorted(evaluated):
            image_gts, image_dts = gts.get((image_id, category_id), []), image_dets.get(category_id, [])
            if not image_gts and not image_dts:
                continue
            image_dts = sorted(image_dts, key=lambda d: -d["score"])  # stable: ties keep their order
            ious = iou_fn(image, image_dts, image_gts) if image_gts and image_dts else None
            scores = np.array([d["score"] for d in image_dts], dtype=np.float64)
            for area_index, area_range in enumerate(area_ranges):
                gt_ignored = np.array([bool(g.get("ignore", 0)) or not _within(g["area"], area_range)
                                       for g in image_gts], dtype=bool)
                matched, matched_ignored = _match(ious, gt_ignored, thresholds, len(image_dts))
                dt_outside = np.array([not _within(d["area"], area_range) or category_id in not_exhaustive
                                       for d in image_dts], dtype=bool)
                ignored = matched_ignored | (~matched & dt_outside[None, :])
                per_category[category_id, area_index].append((scores, matched, ignored))
                gt_counts[category_id, area_index] += int(np.count_nonzero(~gt_ignored))
    precision = _accumulate(per_category, gt_counts, category_ids, len(area_ranges), thresholds,
                            np.asarray(params.rec_thrs, dtype=np.float64))
    groups = _frequency_groups(gt, category_ids)
    return _summarize(precision, thresholds, groups)


def _within(area: float, area_range: tuple[float, float]) -> bool:
    return area_range[0] <= area <= area_range[1]


def _detection_reader(detections: Any) -> Callable[[int, set[int]], dict[int, list[dict]]]:
    """(image id, categories) -> that image's detections of those categories by category, in result-id order."""
    def by_category(anns: Iterable[dict], categories: set[int]) -> dict[int, list[dict]]:
        grouped: dict[int, list[dict]] = defaultdict(list)
        for ann in sorted(anns, key=lambda d: d["id"]):
            if ann["category_id"] in categories:
                grouped[ann["category_id"]].append(ann)
        return grouped

    if hasattr(detections, "get_ann_ids"):  # hotcoco results: ask for one image's evaluated categories only
        return lambda image_id, categories: by_category(
            detections.load_anns(detections.get_ann_ids(img_ids=[image_id], cat_ids=sorted(categories))), categories)
    by_image: dict[int, list[dict]] = defaultdict(list)
    for det in detections:
        by_image[det["image_id"]].append(det)
    return lambda image_id, categories: by_category(by_image.get(image_id, []), categories)


def _match(
    ious: np.ndarray | None, gt_ignored: np.ndarray, thresholds: np.ndarray, num_dt: int
) -> tuple[np.ndarray, np.ndarray]:
    """lvis-api's greedy matching of one image and category at every threshold at once: (matched, matched to an
    ignored ground truth), each (thresholds, detections). Detections are in score order; each takes the free ground
    truth of the highest IoU >= the threshold, non-ignored ones first, the later one on a tie."""
    matched = np.zeros((len(thresholds), num_dt), dtype=bool)
    matched_ignored = np.zeros_like(matched)
    if ious is None or num_dt == 0 or len(gt_ignored) == 0:
        return matched, matched_ignored
    order = np.argsort(gt_ignored, kind="stable")
    ious, ignored = ious[:, order], gt_ignored[order]
    regular = int(np.count_nonzero(~ignored))
    limits = np.minimum(thresholds, 1 - 1e-10)[:, None]
    taken = np.zeros((len(thresholds), len(ignored)), dtype=bool)
    rows = np.arange(len(thresholds))
    for d in np.flatnonzero(ious.max(axis=1) >= limits.min()):
        candidates = ~taken & (ious[d][None, :] >= limits)
        pick = np.full(len(thresholds), -1)
        for start, stop in ((regular, len(ignored)), (0, regular)):  # regular last: it wins where it has one
            part = candidates[:, start:stop]
            if part.shape[1] == 0:
                continue
            values = np.where(part, ious[d][start:stop][None, :], -np.inf)
            last_best = part.shape[1] - 1 - np.argmax(values[:, ::-1], axis=1)
            found = part.any(axis=1)
            pick = np.where(found, start + last_best, pick)
        hit = pick >= 0
        taken[rows[hit], pick[hit]] = True
        matched[hit, d] = True
        matched_ignored[hit, d] = ignored[pick[hit]]
    return matched, matched_ignored


def _accumulate(
    per_category: dict, gt_counts: dict, category_ids: list[int], num_areas: int, thresholds: np.ndarray,
    recall_points: np.ndarray,
) -> np.ndarray:
    """Interpolated precision (thresholds, recall points, categories, areas); -1 where a category has no ground
    truth in the area range."""
    precision = -np.ones((len(thresholds), len(recall_points), len(category_ids), num_areas))
    for k, category_id in enumerate(category_ids):
        for a in range(num_areas):
            entries = per_category.get((category_id, a))
            num_gt = gt_counts.get((category_id, a), 0)
            if not entries or num_gt == 0:
                continue
            scores = np.concatenate([e[0] for e in entries])
            order = np.argsort(-scores, kind="mergesort")
            matched = np.concatenate([e[1] for e in entries], axis=1)[:, order]
            ignored = np.concatenate([e[2] for e in entries], axis=1)[:, order]
            tp = np.cumsum(matched & ~ignored, axis=1, dtype=np.float64)
            fp = np.cumsum(~matched & ~ignored, axis=1, dtype=np.float64)
            for t in range(len(thresholds)):
                precision[t, :, k, a] = _precision_at_recalls(tp[t], fp[t], num_gt, recall_points)
    return precision


def _precision_at_recalls(tp: np.ndarray, fp: np.ndarray, num_gt: int, recall_points: np.ndarray) -> np.ndarray:
    """The precision envelope read at each recall point (0 past the highest recall)."""
    out = np.zeros(len(recall_points))
    if tp.size == 0:
        return out
    recall = tp / num_gt
    precision = np.maximum.accumulate((tp / (tp + fp + np.spacing(1)))[::-1])[::-1]
    index = np.searchsorted(recall, recall_points, side="left")
    valid = index < len(precision)
    out[valid] = precision[index[valid]]
    return out


def _frequency_groups(gt: Any, category_ids: list[int]) -> dict[str, list[int]]:
    """Category positions of each LVIS frequency group."""
    frequency = {c["id"]: c.get("frequency") for c in gt.load_cats(category_ids)}
    return {f: [k for k, c in enumerate(category_ids) if frequency[c] == f] for f in FREQUENCIES}


def _summarize(precision: np.ndarray, thresholds: np.ndarray, groups: dict[str, list[int]]) -> dict[str, float | None]:
    """METRIC_KEYS in percent from the precision array, as lvis-api summarises it (None for no ground truth)."""
    def mean(values: np.ndarray) -> float | None:
        valid = values[values > -1]
        return None if valid.size == 0 else 100.0 * float(np.mean(valid))

    at = {name: np.flatnonzero(np.isclose(thresholds, value)) for name, value in (("AP50", 0.5), ("AP75", 0.75))}
    metrics = {
        "AP": mean(precision[:, :, :, 0]),
        "AP50": mean(precision[at["AP50"], :, :, 0]),
        "AP75": mean(precision[at["AP75"], :, :, 0]),
        "APs": mean(precision[:, :, :, 1]),
        "APm": mean(precision[:, :, :, 2]),
        "APl": mean(precision[:, :, :, 3]),
    }
    for f in FREQUENCIES:
        metrics[f"AP{f}"] = mean(precision[:, :, groups[f], 0])
    return {key: metrics[key] for key in METRIC_KEYS}
