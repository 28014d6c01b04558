"""EQLv2 (Tan et al., "Equalization Loss v2: A New Gradient Balance Approach for Long-tailed Object Detection",
CVPR 2021) as a replaceable box classifier of the RoI heads, in the form of the authors' code (tztztztztz/eqlv2).

A sigmoid classifier with a background logit (``models/sigmoid.py``: logits [R, C+1], background in column 0). Its
binary cross-entropy is reweighted per class j from the gradients accumulated over training:

    g_j    = accumulated |dL/dz_j| of the positive samples / of the negative samples  (pos_grad / neg_grad)
    neg_w  = 1 / (1 + exp(-gamma * (g_j - mu)))      weight of the negatives of class j
    pos_w  = 1 + alpha * (1 - neg_w)                 weight of the positives of class j

The background column always has weight 1, and the first loss call (no gradient statistics yet) weights every
column 1. Loss: sum of the weighted binary cross-entropies / number of RoIs. After each loss call the weighted
gradient magnitudes |sigmoid(z) - target| x weight of that batch are added to ``pos_grad`` / ``neg_grad`` (summed
over processes under torch.distributed), buffers saved with the checkpoint.
Inference: EQLv2's, column 0 = sigmoid(background), label j = sigmoid(z_j) x (1 - column 0).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from longtail_seg.models.sigmoid import SigmoidClassifier, one_hot_targets


class EQLv2Classifier(SigmoidClassifier):
    """Sigmoid classifier trained with the gradient-guided reweighting of EQLv2."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        gamma: float = 12.0,
        mu: float = 0.8,
        alpha: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        """``gamma``, ``mu``: slope and centre of the mapping from the gradient ratio to the negative weight;
        ``alpha``: how much a suppressed class's positives are boosted; ``dropout``: on the input features."""
        super().__init__(in_features, num_classes, 0.0, dropout)
        if not (gamma > 0 and alpha >= 0):
            raise ValueError(f"eqlv2 needs gamma > 0 and alpha >= 0, got gamma={gamma}, alpha={alpha}")
        self.gamma, self.mu, self.alpha = float(gamma), float(mu), float(alpha)
        # accumulated weighted gradient magnitudes per foreground class (label j at index j - 1)
        self.register_buffer("pos_grad", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("neg_grad", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))

    @classmethod
    def from_config(cls, cfg: dict[str, Any], in_features: int, num_classes: int) -> EQLv2Classifier:
        """Build from a checked ``{"type": "eqlv2", ...}`` config with its defaults filled in."""
        return cls(in_features, num_classes, cfg["gamma"], cfg["mu"], cfg["alpha"], cfg["dropout"])

    def column_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(pos_w, neg_w), each [C+1] (background column first, always 1): all ones before the first update."""
        ones = torch.ones(self.num_classes + 1, dtype=torch.float64, device=self.pos_grad.device)
        if int(self.num_updates) == 0:
            return ones, ones.clone()
        ratio = self.pos_grad / (self.neg_grad + 1e-10)
        neg_w = torch.cat([ones[:1], torch.sigmoid(self.gamma * (ratio - self.mu))])
        pos_w = 1 + self.alpha * (1 - neg_w)
        return pos_w, neg_w

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Weighted binary cross-entropy summed / number of RoIs; then the batch's gradients are accumulated."""
        logits = logits.float()
        targets = one_hot_targets(labels, self.num_classes + 1)
        pos_w, neg_w = (w.to(logits.dtype) for w in self.column_weights())
        weights = pos_w[None, :] * targets + neg_w[None, :] * (1 - targets)
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        total = (loss * weights).sum() / max(len(labels), 1)
        self.collect_gradients(logits.detach(), targets, weights)
        return total

    @torch.no_grad()
    def collect_gradients(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> None:
        """Add this batch's weighted |sigmoid(z) - target| of positives and negatives of each foreground class."""
        grad = (torch.sigmoid(logits) - targets).abs() * weights
        pos = (grad * targets).sum(dim=0)[1:].to(self.pos_grad)
        neg = (grad * (1 - targets)).sum(dim=0)[1:].to(self.neg_grad)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(pos)
            dist.all_reduce(neg)
        self.pos_grad += pos
        self.neg_grad += neg
        self.num_updates += 1

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, gamma={self.gamma}, mu={self.mu}, alpha={self.alpha}"


__all__ = ["EQLv2Classifier"]
