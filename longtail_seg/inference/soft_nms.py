"""Soft-NMS (Bodla et al., 2017), used by the report's multi-scale testing (Table 2, "+Soft-nms", IoU 0.5).

Instead of deleting every box that overlaps a higher-scored one of the same class, soft-NMS lowers its score:

* ``linear``: s_i <- s_i * (1 - IoU(M, b_i)) when IoU(M, b_i) >= iou_threshold (else unchanged);
* ``gaussian``: s_i <- s_i * exp(-IoU(M, b_i)^2 / sigma) for every remaining box;

where M is the highest-scored remaining box, picked greedily. Boxes whose score falls below ``score_threshold``
are dropped. Classes never interact: the boxes of different labels are shifted apart before the IoUs (the same
offset trick as ``torchvision.ops.batched_nms``), so one pass serves all classes.
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
    """Per-class soft-NMS over boxes [N, 4] (xyxy), scores [N] and labels [N].

    Returns (indices into the inputs of the kept boxes, their decayed scores), in pick order, which is also
    non-increasing score order; at most ``max_dets`` boxes.
    """
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"soft-NMS method must be one of {list(SOFT_NMS_METHODS)}, got {method!r}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"soft-NMS iou_threshold must be in [0, 1], got {iou_threshold}")
    if method == "gaussian" and sigma <= 0:
        raise ValueError(f"soft-NMS sigma must be > 0, got {sigma}")
    limit = len(boxes) if max_dets is None else min(int(max_dets), len(boxes))
    if limit <= 0:
        return boxes.new_zeros(0, dtype=torch.int64), scores.new_zeros(0)
    shifted = _separate_classes(boxes.float(), labels)
    current = scores.detach().float().clone()
    remaining = torch.nonzero(current >= score_threshold).flatten()
    kept, kept_scores = [], []
    while remaining.numel() and len(kept) < limit:
        best = remaining[torch.argmax(current[remaining])]
        kept.append(best)
        kept_scores.append(current[best])
        remaining = remaining[remaining != best]
        if not remaining.numel():
            break
        overlap = box_iou(shifted[best].unsqueeze(0), shifted[remaining])[0]
        current[remaining] *= _decay(overlap, method, iou_threshold, sigma)
        remaining = remaining[current[remaining] >= score_threshold]
    return torch.stack(kept).to(torch.int64), torch.stack(kept_scores).to(scores.dtype)


def _decay(overlap: torch.Tensor, method: str, iou_threshold: float, sigma: float) -> torch.Tensor:
    """Score multipliers for the remaining boxes given their IoU with the picked box."""
    if method == "linear":
        return torch.where(overlap >= iou_threshold, 1.0 - overlap, torch.ones_like(overlap))
    return torch.exp(-(overlap**2) / sigma)


def _separate_classes(boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Boxes shifted by label so that boxes of different labels never overlap."""
    if boxes.numel() == 0:
        return boxes
    offset = boxes.max() - boxes.min() + 1.0
    return boxes + (labels.to(boxes.dtype) * offset)[:, None]
