"""Sigmoid box classifiers: independent per-class sigmoids plus a background logit, with optional focal weighting
(Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017), and the helpers the sigmoid-based long-tail losses
(EQLv2, ``models/eqlv2.py``; federated loss, ``models/federated.py``) share.

Logits [R, C+1]: column 0 the background ("objectness") logit, column j label j, as the softmax classifier's. Each
RoI is a multi-label target row: a 1 in its label's column (column 0 for background RoIs), 0 elsewhere.
Training: binary cross-entropy of every (RoI, column), times (1 - p_t) ** ``focal_gamma`` (p_t the probability of
the target value), summed and divided by the number of RoIs, as EQLv2's sigmoid baseline.
Inference (EQLv2's): column 0 = sigmoid(background logit), label j = sigmoid(z_j) x (1 - column 0).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from longtail_seg.models.classifiers import feature_dropout


def one_hot_targets(labels: torch.Tensor, num_columns: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[R, num_columns] targets with a 1 at each RoI's label (0 = background column) and 0 elsewhere."""
    return F.one_hot(labels.long(), num_columns).to(dtype)


def sigmoid_scores_with_background(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities [R, C+1] from logits [R, C+1] with the background logit in column 0: column 0 =
    sigmoid(z_0), label j = sigmoid(z_j) * (1 - sigmoid(z_0))."""
    probs = torch.sigmoid(logits.float())
    return torch.cat([probs[:, :1], probs[:, 1:] * (1 - probs[:, :1])], dim=1)


def focal_factor(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1 - p_t) ** gamma per element, p_t = sigmoid(z) where the target is 1 and 1 - sigmoid(z) where it is 0."""
    probs = torch.sigmoid(logits)
    p_t = probs * targets + (1 - probs) * (1 - targets)
    return (1 - p_t).pow(gamma)


class SigmoidClassifier(nn.Module):
    """C+1 independent sigmoids (background in column 0) with binary cross-entropy, optionally focal."""

    def __init__(self, in_features: int, num_classes: int, focal_gamma: float = 0.0, dropout: float = 0.0) -> None:
        """``focal_gamma``: focusing exponent of the focal loss (0 = plain binary cross-entropy); ``dropout``: on the
        input features while training (0 = off)."""
        super().__init__()
        if not focal_gamma >= 0:
            raise ValueError(f"sigmoid classifier focal_gamma must be >= 0, got {focal_gamma}")
        self.num_classes = num_classes
        self.focal_gamma = float(focal_gamma)
        self.dropout = feature_dropout(dropout)
        self.cls_score = nn.Linear(in_features, num_classes + 1)

    @classmethod
    def from_config(cls, cfg: dict[str, Any], in_features: int, num_classes: int) -> SigmoidClassifier:
        """Build from a checked ``{"type": "sigmoid", ...}`` config with its defaults filled in."""
        return cls(in_features, num_classes, cfg["focal_gamma"], cfg["dropout"])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [R, C+1] (background in column 0) for RoI features [R, D]."""
        return self.cls_score(self.dropout(features.flatten(start_dim=1)))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sum over RoIs and columns of the (focal) binary cross-entropy, divided by the number of RoIs."""
        logits = logits.float()
        targets = one_hot_targets(labels, self.num_classes + 1)
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        if self.focal_gamma > 0:
            loss = loss * focal_factor(logits, targets, self.focal_gamma)
        return loss.sum() / max(len(labels), 1)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities [R, C+1]: background sigmoid in column 0, foreground sigmoids times (1 - background)."""
        return sigmoid_scores_with_background(logits)


__all__ = ["SigmoidClassifier", "focal_factor", "one_hot_targets", "sigmoid_scores_with_background"]
