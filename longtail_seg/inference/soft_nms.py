"""Soft-NMS (Bodla et al., 2017), used by the report's multi-scale testing (Table 2, "+Soft-nms", IoU 0.5).

Instead of deleting every box that overlaps a higher-scored one of the same class, soft-NMS lowers its score:

* ``linear``: s_i <- s_i * (1 - IoU(M, b_i)) when IoU(M, b_i) >= iou_threshold (else unchanged);
* ``gaussian``: s_i <- s_i * exp(-IoU(M, b_i)^2 / sigma) for every remaining box;

where M is the highest-scored remaining box, picked greedily. Boxes whose score falls below ``score_threshold``
are dropped. Classes never interact: only boxes of the picked box's label decay. The IoUs are computed on the boxes
as given, not shifted apart by label (``torchvision.ops.batched_nms``'s offset trick): in float32 that trick loses
precision at LVIS's class ids and image sizes, so decayed scores would depend on the class id.
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
        return boxes.new_zeros(0, dtype=torch.int64), scores.new_zeros(0)
    return torch.stack(kept).to(torch.int64), torch.stack(kept_scores).to(scores.dtype)


def _decay(overlap: torch.Tensor, method: str, iou_threshold: float, sigma: float) -> torch.Tensor:
    """Score multipliers for the remaining boxes given their IoU with the picked box."""
    if method == "linear":
        return torch.where(overlap >= iou_threshold, 1.0 - overlap, torch.ones_like(overlap))
    return torch.exp(-(overlap**2) / sigma)
