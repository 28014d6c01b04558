"""Multi-scale + flip testing (the report's Section 4.2 and Table 2).

Each image is seen at several short sides (``scales``), each optionally also flipped left-right. The steps of
Table 2, each switched on by a ``tests:`` key:

* multi-scale box: the detections of every view, mapped back to the original image, are merged by per-class NMS
  (``merge: nms``) and the ``max_dets`` best kept;
* soft-NMS: the merge decays overlapping boxes instead of deleting them (``merge: soft_nms``, IoU 0.5 in the
  report; ``inference/soft_nms.py``);
* scale-adaptive merging: each scale contributes only objects of the sizes it sees best (``scale_ranges``: one
  [min, max] range of sqrt(box area) in original pixels per scale: small objects from the large scales);
* multi-scale mask: the mask head runs on the merged boxes in every view (boxes mapped into that view, masks of
  flipped views flipped back), and the box-relative M x M mask probabilities are averaged (``mask_voting: true``);
  otherwise masks come from the first scale, unflipped. The voted probabilities are encoded from their box crops
  at the original image size (``inference/mask_rle.py``), never pasted into a full image.

Memory is bounded by one view at a time: a view's backbone features are freed as soon as its boxes are found, except
those of the view processed last, which the mask step uses first; the mask step recomputes the features of every
other view it needs, one view at a time (with mask voting off it needs only the first view, which is processed
last, so nothing is recomputed). The views' boxes are merged in view order whatever order they ran in, so the
results are those of keeping every view's features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from longtail_seg.data.transforms import flip_boxes, resize, resized_size
from longtail_seg.inference.config import TestConfig
from longtail_seg.inference.dataset_loop import dataset_category_lookup, run_over_dataset
from longtail_seg.inference.results import detections_to_lvis_results, image_id_of
from longtail_seg.inference.soft_nms import soft_nms
from longtail_seg.models.postprocess import top_detections

Detections = dict[str, torch.Tensor]


@dataclass(frozen=True)
class View:
    """One test-time augmentation: the short side the image is resized to, and whether it is flipped."""

    short_side: int
    flip: bool


def augmented_views(scales: Sequence[int], flip: bool) -> list[View]:
    """Every (scale, flip) view; the first is the first scale unflipped (the single-scale view)."""
    return [View(int(s), f) for s in scales for f in ((False, True) if flip else (False,))]


@dataclass
class _ViewFeatures:
    """What the mask step needs of one view of a batch: backbone features, input sizes, resize factors (fx, fy)."""

    view: View
    features: dict[str, torch.Tensor]
    image_sizes: list[tuple[int, int]]
    factors: list[tuple[float, float]]


def _view_inputs(
    images: Sequence[torch.Tensor], view: View, max_size: int
) -> tuple[list[torch.Tensor], list[tuple[float, float]]]:
    """The images of a batch as one view sees them (resized, flipped), and each one's resize factors (fx, fy)."""
    inputs, factors = [], []
    for image in images:
        height, width = image.shape[-2:]
        size = resized_size(height, width, view.short_side, max_size)
        resized, _ = resize(image, {}, size) if size != (height, width) else (image, {})
        inputs.append(resized.flip(-1) if view.flip else resized)
        factors.append((size[1] / width, size[0] / height))
    return inputs, factors


def run_view(
    model: torch.nn.Module, images: Sequence[torch.Tensor], view: View, max_size: int
) -> tuple[_ViewFeatures, list[Detections]]:
    """Detect boxes in one view of a batch; detections come back in original-image pixels."""
    inputs, factors = _view_inputs(images, view, max_size)
    features, image_sizes, detections = model.boxes_and_features(inputs)
    in_original = [
        dict(d, boxes=_to_original(d["boxes"], factor, size[1], view.flip))
        for d, factor, size in zip(detections, factors, image_sizes)
    ]
    return _ViewFeatures(view, features, image_sizes, factors), in_original


def view_features(model: torch.nn.Module, images: Sequence[torch.Tensor], view: View, max_size: int) -> _ViewFeatures:
    """The backbone features of one view of a batch, recomputed for the mask step (the same values ``run_view``
    computed: same inputs, same backbone)."""
    inputs, factors = _view_inputs(images, view, max_size)
    image_list, _ = model.transform(inputs)
    return _ViewFeatures(view, model.backbone(image_list.tensors), list(image_list.image_sizes), factors)


def _to_original(boxes: torch.Tensor, factor: tuple[float, float], view_width: int, flip: bool) -> torch.Tensor:
    """Boxes of a (flipped, resized) view in original-image pixels."""
    if flip:
        boxes = flip_boxes(boxes, view_width)
    fx, fy = factor
    return boxes / boxes.new_tensor([fx, fy, fx, fy])


def _to_view(boxes: torch.Tensor, factor: tuple[float, float], view_width: int, flip: bool) -> torch.Tensor:
    """Inverse of ``_to_original``: original-image boxes in the pixels of a view."""
    fx, fy = factor
    boxes = boxes * boxes.new_tensor([fx, fy, fx, fy])
    return flip_boxes(boxes, view_width) if flip else boxes


def in_size_range(boxes: torch.Tensor, size_range: Sequence[float] | None) -> torch.Tensor:
    """Boolean mask of boxes whose sqrt(area) lies in [min, max) (all True without a range)."""
    if size_range is None:
        return torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    low, high = float(size_range[0]), float(size_range[1])
    side = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt()
    return (side >= low) & (side < high)


def merge_detections(
    per_view: Sequence[Detections],
    size_ranges: Sequence[Sequence[float] | None],
    method: str = "nms",
    iou_threshold: float = 0.5,
    max_dets: int = 300,
    soft_nms_method: str = "linear",
    score_threshold: float = 1e-4,
) -> Detections:
    """One image's detections from all views (original pixels) -> the merged ``max_dets`` best.

    ``size_ranges[k]`` (or None) is the scale-adaptive range of view k; ``method`` is "nms" or "soft_nms".
    """
    kept = [{key: d[key][in_size_range(d["boxes"], r)] for key in ("boxes", "scores", "labels")}
            for d, r in zip(per_view, size_ranges)]
    boxes = torch.cat([d["boxes"] for d in kept])
    scores = torch.cat([d["scores"] for d in kept])
    labels = torch.cat([d["labels"] for d in kept])
    if method == "nms":
        order = top_detections(boxes, scores, labels, iou_threshold, max_dets)  # exact at any class id and size
        return {"boxes": boxes[order], "scores": scores[order], "labels": labels[order]}
    if method == "soft_nms":
        order, decayed = soft_nms(boxes, scores, labels, iou_threshold, soft_nms_method,
                                  score_threshold=score_threshold, max_dets=max_dets)
        return {"boxes": boxes[order], "scores": decayed, "labels": labels[order]}
    raise ValueError(f"merge method must be 'nms' or 'soft_nms', got {method!r}")


def view_mask_probs(
    model: torch.nn.Module, view: _ViewFeatures, boxes: list[torch.Tensor], labels: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Per image, the box-relative mask probabilities [N, 1, M, M] one view gives the boxes (original pixels) for
    their labels, flipped back for a flipped view."""
    in_view = [_to_view(b, factor, size[1], view.view.flip)
               for b, factor, size in zip(boxes, view.factors, view.image_sizes)]
    probs = model.roi_heads.class_mask_probs(view.features, in_view, labels, view.image_sizes)
    return [p.flip(-1) if view.view.flip else p for p in probs]


def mean_over_views(per_view: Sequence[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Per image, the mean of the views' mask probabilities, summed in view order."""
    if not per_view:
        raise ValueError("mask voting needs at least one view")
    total = list(per_view[0])
    for probs in per_view[1:]:
        total = [t + p for t, p in zip(total, probs)]
    return [t / len(per_view) for t in total]


def vote_masks(
    model: torch.nn.Module, views: Sequence[_ViewFeatures], boxes: list[torch.Tensor], labels: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Per image, the mean over ``views`` of the box-relative mask probabilities [N, 1, M, M] of the merged
    boxes (original pixels) for their labels; masks of flipped views are flipped back first."""
    if not views:
        raise ValueError("vote_masks needs at least one view")
    return mean_over_views([view_mask_probs(model, view, boxes, labels) for view in views])


def predict_dataset_multiscale(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    cfg: TestConfig,
    device: str | torch.device = "cpu",
    category_of: Callable[[int], int] | None = None,
) -> list[dict]:
    """LVIS results of ``model`` over ``dataset`` (images at their original size) with the multi-scale / flip
    settings of ``cfg``; boxes and masks are in original-image pixels (an AP-fixed ``cfg.protocol``: each category's
    ``cfg.dets_per_category`` best over the dataset)."""
    category_of = dataset_category_lookup(dataset, category_of, "predict_dataset_multiscale")
    views = augmented_views(cfg.test_scales, cfg.flip)
    ranges = cfg.view_size_ranges()
    mask_views = slice(None) if cfg.mask_voting else slice(0, 1)

    def predict_batch(images: list[torch.Tensor], targets: Sequence[Any]) -> list[dict]:
        return _predict_batch(model, images, targets, views, ranges, mask_views, cfg, category_of)

    return run_over_dataset(model, dataset, predict_batch, device, cfg.batch_size, cfg.num_workers,
                            desc=f"inference ({len(views)} views)", dets_per_category=cfg.per_category_top_k)


def _predict_batch(
    model: torch.nn.Module,
    images: list[torch.Tensor],
    targets: Sequence[Any],
    views: list[View],
    ranges: list[tuple[float, float] | None],
    mask_views: slice,
    cfg: TestConfig,
    category_of: Callable[[int], int],
) -> list[dict]:
    """Views -> merged boxes -> (voted) box-relative masks -> LVIS results at the original size, for one batch."""
    has_masks = model.roi_heads.has_mask()
    mask_indices = list(range(len(views)))[mask_views] if has_masks else []
    kept_index = max(mask_indices, key=lambda i: views[i].short_side) if mask_indices else None
    per_view, kept = _detect_in_every_view(model, images, views, cfg.max_size, kept_index)
    merged = [
        merge_detections([detections[i] for detections in per_view], ranges, cfg.merge, cfg.merge_iou,
                         cfg.max_dets, cfg.soft_nms_method, model.roi_heads.score_thresh)
        for i in range(len(images))
    ]
    probs = None
    if has_masks:
        boxes, labels = [m["boxes"] for m in merged], [m["labels"] for m in merged]
        probs = _voted_mask_probs(model, images, views, mask_indices, kept, cfg.max_size, boxes, labels)
    results = []
    for index, (image, target, detections) in enumerate(zip(images, targets, merged)):
        if probs is not None:
            detections = dict(detections, masks=probs[index])
        results.extend(detections_to_lvis_results(image_id_of(target), detections, category_of, cfg.mask_threshold,
                                                  cfg.max_dets, image_size=tuple(image.shape[-2:]), box_relative=True))
    return results


def _detect_in_every_view(
    model: torch.nn.Module, images: list[torch.Tensor], views: list[View], max_size: int, kept_index: int | None
) -> tuple[list[list[Detections]], dict[int, _ViewFeatures]]:
    """Each view's detections (in view order), and {kept_index: that view's features} (empty for None). Views run
    one at a time, ``kept_index`` last, so at most one view's features are alive at once."""
    order = [i for i in range(len(views)) if i != kept_index] + ([kept_index] if kept_index is not None else [])
    per_view: list[list[Detections]] = [[] for _ in views]
    kept: dict[int, _ViewFeatures] = {}
    for index in order:
        features, per_view[index] = run_view(model, images, views[index], max_size)
        if index == kept_index:
            kept[index] = features
        del features  # the next view must not run while this one's features are alive
    return per_view, kept


def _voted_mask_probs(
    model: torch.nn.Module,
    images: list[torch.Tensor],
    views: list[View],
    mask_indices: list[int],
    kept: dict[int, _ViewFeatures],
    max_size: int,
    boxes: list[torch.Tensor],
    labels: list[torch.Tensor],
) -> list[torch.Tensor]:
    """The mean over the views ``mask_indices`` of the merged boxes' mask probabilities: the kept view's features
    first (taken out of ``kept``, so they are freed after use), then every other view's recomputed and freed in
    turn; the sum is still taken in view order."""
    per_view: dict[int, list[torch.Tensor]] = {}
    for index in sorted(mask_indices, key=lambda i: i not in kept):
        features = kept.pop(index) if index in kept else view_features(model, images, views[index], max_size)
        per_view[index] = view_mask_probs(model, features, boxes, labels)
        del features
    return mean_over_views([per_view[index] for index in mask_indices])
