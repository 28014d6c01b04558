"""Soft-NMS (Bodla et al., 2017), used by the report's multi-scale testing (Table 2, "+Soft-nms", IoU 0.5).

Instead of deleting every box that overlaps a higher-scored one of the same class, soft-NMS lowers its score:

* ``linear``: s_i <- s_i * (1 - IoU(M, b_i)) when IoU(M, b_i) >= iou_threshold (else unchanged);
* ``gaussian``: s_i <- s_i * exp(-IoU(M, b_i)^2 / sigma) for every remaining box;

where M is the highest-scored remaining box, picked greedily. Boxes whose score falls below ``score_threshold``
are dropped. Classes never interact: only boxes of the picked box's label decay. The IoUs are computed on the boxes
as given, not shifted apart by label (``torchvision.ops.batched_nms``'s offset trick): in float32 that trick loses
precision at LVIS's class ids and image sizes, so decayed scores would depend on the class id.

The greedy loop runs for all classes at once: each step picks every class's current best box and decays the rest
of its class, so a multi-scale merge of thousands of boxes takes as many steps as the largest class has boxes, not
one step per box. Classes never interact, so each class sees the same picks, decays and float32 arithmetic as
in the one-box-at-a-time loop (``soft_nms_one_at_a_time``, kept as the reference), and the global pick order of
that loop is the picks sorted by decayed score, ties by index: each pick is the best remaining box, and a box's
score only falls until it is picked.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

SOFT_NMS_METHODS = ("linear", "gaussian")


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    iou_threshold: float = 0.5,
    method: str = "linear",
    sigma: float = 0.5,
    score_threshold: float = 1e-4,
    max_dets: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class soft-NMS over boxes [N, 4] (xyxy), scores [N] and labels [N], all classes in step.

    Returns (indices into the inputs of the kept boxes, their decayed scores), in pick order, which is also
    non-increasing score order (ties: lower index first); at most ``max_dets`` boxes.
    """
    check_soft_nms_arguments(method, iou_threshold, sigma)
    limit = len(boxes) if max_dets is None else min(int(max_dets), len(boxes))
    candidates = torch.nonzero(scores.detach().float() >= score_threshold).flatten()
    if limit <= 0 or candidates.numel() == 0:
        return _empty(boxes, scores)
    table = ClassTable.of(boxes.float()[candidates], scores.detach().float()[candidates], labels[candidates])
    picked, picked_scores = [], []
    while True:
        rows = table.rows_with_boxes_left()
        if rows is None:
            break
        column, best_score = table.best_per_class()
        picked.append(candidates[table.index[table.row_ids, column]][rows])
        picked_scores.append(best_score[rows])
        table.decay_around(column, iou_threshold, method, sigma, score_threshold)
    return _in_pick_order(torch.cat(picked), torch.cat(picked_scores), limit, scores.dtype)


class ClassTable:
    """Boxes grouped one class per row (padded to the largest class): scores [G, K], boxes [G, K, 4], whether each
    box is still in play, and the position of each box in the input. Rows whose class is done get dropped."""

    def __init__(self, index: torch.Tensor, scores: torch.Tensor, boxes: torch.Tensor, alive: torch.Tensor) -> None:
        self.index, self.scores, self.boxes, self.alive = index, scores, boxes, alive
        self.row_ids = torch.arange(len(index), device=index.device)

    @classmethod
    def of(cls, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> ClassTable:
        """The table of N boxes; within a row, boxes keep their input order (ties then go to the lower index)."""
        by_label = torch.sort(labels, stable=True).indices
        counts = torch.unique_consecutive(labels[by_label], return_counts=True)[1]
        rows = torch.repeat_interleave(torch.arange(len(counts), device=labels.device), counts)
        columns = torch.arange(len(labels), device=labels.device) - (torch.cumsum(counts, 0) - counts)[rows]
        shape = (len(counts), int(counts.max()))
        index = torch.full(shape, -1, dtype=torch.int64, device=labels.device)
        index[rows, columns] = by_label
        padded_scores = scores.new_full(shape, float("-inf"))
        padded_scores[rows, columns] = scores[by_label]
        padded_boxes = boxes.new_zeros((*shape, 4))
        padded_boxes[rows, columns] = boxes[by_label]
        alive = torch.zeros(shape, dtype=torch.bool, device=labels.device)
        alive[rows, columns] = True
        return cls(index, padded_scores, padded_boxes, alive)

    def rows_with_boxes_left(self) -> torch.Tensor | None:
        """Which rows still have a box in play (None when none has); drops finished rows once they are half."""
        active = self.alive.any(dim=1)
        count = int(active.sum())
        if count == 0:
            return None
        if count <= len(active) // 2:
            keep = torch.nonzero(active).flatten()
            self.index, self.scores, self.boxes, self.alive = (
                self.index[keep], self.scores[keep], self.boxes[keep], self.alive[keep])
            self.row_ids = torch.arange(len(keep), device=keep.device)
            return torch.ones(len(keep), dtype=torch.bool, device=keep.device)
        return active

    def best_per_class(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, the column of the highest-scored box in play (the first of equals) and its score."""
        in_play = torch.where(self.alive, self.scores, torch.full_like(self.scores, float("-inf")))
        column = torch.argmax(in_play, dim=1)
        return column, in_play[self.row_ids, column]

    def decay_around(self, column: torch.Tensor, iou_threshold: float, method: str, sigma: float,
                     score_threshold: float) -> None:
        """Take each row's picked box out of play, decay the rest of its row by their IoU with it, and drop boxes
        whose score fell below ``score_threshold``."""
        self.alive[self.row_ids, column] = False
        overlap = box_iou(self.boxes[self.row_ids, column][:, None, :], self.boxes)[:, 0, :]
        decayed = self.scores * _decay(overlap, method, iou_threshold, sigma)
        self.scores = torch.where(self.alive, decayed, self.scores)
        self.alive &= self.scores >= score_threshold


def _in_pick_order(
    indices: torch.Tensor, picked_scores: torch.Tensor, limit: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The picks sorted by decayed score descending, ties by input index, the first ``limit``."""
    by_index = torch.sort(indices).indices
    indices, picked_scores = indices[by_index], picked_scores[by_index]
    order = torch.sort(picked_scores, descending=True, stable=True).indices[:limit]
    return indices[order], picked_scores[order].to(dtype)


def _empty(boxes: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return boxes.new_zeros(0, dtype=torch.int64), scores.new_zeros(0)


def check_soft_nms_arguments(method: str, iou_threshold: float, sigma: float) -> None:
    """A clear error for an unknown method, an IoU threshold outside [0, 1] or a non-positive Gaussian sigma."""
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"soft-NMS method must be one of {list(SOFT_NMS_METHODS)}, got {method!r}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"soft-NMS iou_threshold must be in [0, 1], got {iou_threshold}")
    if method == "gaussian" and sigma <= 0:
        raise ValueError(f"soft-NMS sigma must be > 0, got {sigma}")


def soft_nms_one_at_a_time(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    iou_threshold: float = 0.5,
    method: str = "linear",
    sigma: float = 0.5,
    score_threshold: float = 1e-4,
    max_dets: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The straightforward loop, one picked box per step (what ``soft_nms`` computes; the reference for tests and
    ``benchmarks/postprocess_speed.py``)."""
    check_soft_nms_arguments(method, iou_threshold, sigma)
    limit = len(boxes) if max_dets is None else min(int(max_dets), len(boxes))
    if limit <= 0:
        return _empty(boxes, scores)
    boxes = boxes.float()
    current = scores.detach().float().clone()
    remaining = torch.nonzero(current >= score_threshold).flatten()
    kept, kept_scores = [], []
    while remaining.numel() and len(kept) < limit:
        best = remaining[torch.argmax(current[remaining])]
        kept.append(best)
        kept_scores.append(current[best])
        remaining = remaining[remaining != best]
        same_class = remaining[labels[remaining] == labels[best]]
        if same_class.numel():
            overlap = box_iou(boxes[best].unsqueeze(0), boxes[same_class])[0]
            current[same_class] *= _decay(overlap, method, iou_threshold, sigma)
            remaining = remaining[current[remaining] >= score_threshold]
    if not kept:  # nothing passed score_threshold
        return _empty(boxes, scores)
    return torch.stack(kept).to(torch.int64), torch.stack(kept_scores).to(scores.dtype)


def _decay(overlap: torch.Tensor, method: str, iou_threshold: float, sigma: float) -> torch.Tensor:
    """Score multipliers for the remaining boxes given their IoU with the picked box."""
    if method == "linear":
        return torch.where(overlap >= iou_threshold, 1.0 - overlap, torch.ones_like(overlap))
    return torch.exp(-(overlap**2) / sigma)
