"""Box post-processing at LVIS scale: candidates above the score threshold, exact class-aware NMS, the best few.

With 1203 classes and 1000 RoIs per image there are up to 1.2M (RoI, class) candidates; tens of thousands pass the
1e-4 threshold with a trained classifier, hundreds of thousands with an untrained one. Two things make the
straightforward path (torchvision's ``batched_nms`` over all of them) slow or inexact there:

* size: its per-class loop (1203 NMS calls) above a few thousand boxes, or an all-pairs NMS over every candidate;
  here NMS first runs on the top-k candidates by score, and k grows only when they yield too few detections;
* precision: its coordinate-offset trick separates classes by ``label * (max coordinate + 1)`` in the boxes' own
  float32, whose spacing at label 1203 and 1333 px is 0.125 px, so kept boxes can depend on class ids; here the
  offsets are added in float64 and checked to be exact (a class whose boxes do not survive the shift unchanged
  runs on its own), so every IoU is the one a per-class float64 NMS computes.

Why the top-k shortcut is exact: greedy NMS visits candidates in score order, and a candidate's fate depends only
on higher-scored candidates of its class. So NMS over the k best candidates (all candidates tied with the k-th
included) keeps exactly the boxes the full NMS keeps among them, in the same order; once that is at least
``max_dets`` boxes, they are the full NMS's first ``max_dets``. Ties are broken by candidate index everywhere
(score descending, then index ascending), independently of the sorting algorithm of the device.
"""

from __future__ import annotations

import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import boxes as box_ops
from torchvision.ops import nms

# NMS first runs on the best ``CANDIDATE_FACTOR * max_dets`` candidates (doubled while too few survive).
CANDIDATE_FACTOR = 4
# Largest single NMS call per device: torchvision's CUDA kernel holds an n x n/64 bit mask (copied to the host) and
# its CPU kernel compares each kept box with every later one, so more candidates than this are split into groups
# of whole classes (classes never interact, so the groups' results are the same). The values are the sizes above
# which torchvision's own ``batched_nms`` switches to one call per class.
MAX_BOXES_PER_NMS_CALL = {"cpu": 4000, "cuda": 20000}


def image_candidates(
    class_scores: torch.Tensor, class_boxes: torch.Tensor, image_shape: tuple[int, int], score_thresh: float,
    min_size: float = 1e-2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's detection candidates from class probabilities [R, C+1] and decoded boxes [R, C+1, 4]: one per
    (RoI, foreground class) with score > ``score_thresh``, box clipped to the image and both sides >= ``min_size``.

    Returns (boxes [N, 4], scores [N], labels [N]) in RoI-major, class-minor order, as torchvision's
    ``postprocess_detections`` lists them (boxes are clipped after selection: clipping is per coordinate).
    """
    rois, labels = candidate_pairs(class_scores, score_thresh)
    return _valid_candidates(class_boxes[rois, labels], class_scores, rois, labels, image_shape, min_size)


def regression_candidates(
    class_scores: torch.Tensor, box_regression: torch.Tensor, proposals: torch.Tensor, box_coder: BoxCoder,
    image_shape: tuple[int, int], score_thresh: float, min_size: float = 1e-2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``image_candidates`` from the box regression [R, (C+1) * 4] and the proposals [R, 4] instead of decoded
    boxes: only the candidates' boxes are decoded (tens of thousands of the 1.2M (RoI, class) pairs at 1203
    classes). Decoding is elementwise per pair, so the boxes are bit for bit those of decoding every pair."""
    rois, labels = candidate_pairs(class_scores, score_thresh)
    deltas = box_regression.reshape(len(proposals), class_scores.shape[1], 4)[rois, labels]  # also with no RoI
    boxes = box_coder.decode_single(deltas, proposals[rois])
    return _valid_candidates(boxes, class_scores, rois, labels, image_shape, min_size)


def candidate_pairs(class_scores: torch.Tensor, score_thresh: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(RoI, label) of every foreground score [R, C+1] above ``score_thresh``, RoI-major and class-minor."""
    foreground = class_scores[:, 1:]
    num_foreground = foreground.shape[1]
    flat = torch.nonzero(foreground.reshape(-1) > score_thresh).squeeze(1)
    rois = torch.div(flat, num_foreground, rounding_mode="floor")
    return rois, flat - rois * num_foreground + 1


def _valid_candidates(
    boxes: torch.Tensor, class_scores: torch.Tensor, rois: torch.Tensor, labels: torch.Tensor,
    image_shape: tuple[int, int], min_size: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The candidates' boxes clipped to the image, without those with a side below ``min_size``."""
    boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
    keep = box_ops.remove_small_boxes(boxes, min_size=min_size)
    return boxes[keep], class_scores[rois[keep], labels[keep]], labels[keep]


def top_detections(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float, max_dets: int,
    initial_k: int | None = None,
) -> torch.Tensor:
    """Indices of the first ``max_dets`` boxes a per-class greedy NMS keeps, best first (ties: lower index first).

    NMS runs on the ``initial_k`` best candidates (default ``CANDIDATE_FACTOR * max_dets``), with ties at the k-th
    score included; k doubles while fewer than ``max_dets`` survive, up to all candidates.
    """
    count = len(scores)
    k = max(1, CANDIDATE_FACTOR * max_dets if initial_k is None else int(initial_k))
    while True:
        if k >= count:
            return class_aware_nms(boxes, scores, labels, iou_threshold)[:max_dets]
        kth_score = torch.topk(scores, k, sorted=False).values.min()
        chosen = torch.nonzero(scores >= kth_score).squeeze(1)  # ascending: ties keep their index order
        if len(chosen) >= count:
            return class_aware_nms(boxes, scores, labels, iou_threshold)[:max_dets]
        keep = chosen[class_aware_nms(boxes[chosen], scores[chosen], labels[chosen], iou_threshold)]
        if len(keep) >= max_dets:
            return keep[:max_dets]
        k *= 2


def class_aware_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float,
    max_boxes_per_call: int | None = None,
) -> torch.Tensor:
    """Indices of the boxes greedy NMS keeps within each class, by score descending then index ascending.

    Equal to one ``torchvision.ops.nms`` call per class on float64 boxes; done as one call on float64 boxes
    shifted apart by class (more only above ``max_boxes_per_call`` boxes, default per device
    ``MAX_BOXES_PER_NMS_CALL``, and for a class whose coordinates the shift would round).
    """
    count = len(scores)
    if count == 0:
        return torch.zeros(0, dtype=torch.int64, device=scores.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes64, labels = boxes[order].to(torch.float64), labels[order]
    # nms sorts by score itself, with no promise about ties: strictly decreasing ranks make it visit `order`
    ranks = torch.arange(count, 0, -1, dtype=torch.float64, device=scores.device)
    shifted, exact = shift_apart_by_class(boxes64, labels)
    limit = max_boxes_per_call or MAX_BOXES_PER_NMS_CALL.get(scores.device.type, 4000)
    if count <= limit and bool(exact.all()):
        return order[nms(shifted, ranks, iou_threshold)]
    inexact_labels = labels[~exact].unique()  # rare: a coordinate with bits below the shifted boxes' precision
    shiftable = torch.nonzero(~torch.isin(labels, inexact_labels)).squeeze(1)
    kept = [members[nms(shifted[members], ranks[members], iou_threshold)]
            for members in class_groups(labels[shiftable], limit, shiftable)]
    for label in inexact_labels:  # such a class runs on its own, unshifted
        members = torch.nonzero(labels == label).squeeze(1)
        kept.append(members[nms(boxes64[members], ranks[members], iou_threshold)])
    return order[torch.cat(kept).sort().values]


def shift_apart_by_class(boxes: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 boxes [N, 4] moved by a per-class offset so that boxes of different classes never overlap, and
    whether each box moved exactly (its coordinates minus the offset give back the input bit for bit).

    Offsets are multiples of ``span`` = 2 * ceil(max |coordinate|) + 2, at least one ``span``: a class's boxes land
    strictly inside its own interval of width ``span``, negative coordinates included, and the shifted value is
    within a factor 2 of its offset, so subtracting the offset again is exact (Sterbenz): a difference from the
    input means the sum was rounded. Exactly shifted boxes give the same IoUs as unshifted ones in float64.
    """
    span = torch.ceil(boxes.abs().max()) * 2 + 2
    offsets = ((labels - labels.min() + 1).to(torch.float64) * span)[:, None]
    shifted = boxes + offsets
    exact = ((shifted - offsets) == boxes).all(dim=1)
    return shifted, exact


def class_groups(labels: torch.Tensor, limit: int, positions: torch.Tensor) -> list[torch.Tensor]:
    """``positions`` (ascending) split into groups of whole classes (by ``labels``, aligned with ``positions``) of
    about ``limit`` or fewer, each ascending; one group when there are at most ``limit``."""
    if len(positions) <= limit:
        return [positions] if len(positions) else []
    by_label = torch.sort(labels, stable=True).indices
    sorted_labels = labels[by_label]
    starts_class = torch.ones_like(sorted_labels, dtype=torch.bool)
    starts_class[1:] = sorted_labels[1:] != sorted_labels[:-1]
    index = torch.arange(len(labels), device=labels.device)
    class_start = torch.cummax(torch.where(starts_class, index, torch.zeros_like(index)), dim=0).values
    group = torch.empty_like(index)
    group[by_label] = torch.div(class_start, limit, rounding_mode="floor")
    return [positions[group == g] for g in group.unique()]
