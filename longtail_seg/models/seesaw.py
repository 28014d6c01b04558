"""Seesaw loss (Wang et al., "Seesaw Loss for Long-Tailed Instance Segmentation", CVPR 2021) as a replaceable box
classifier of the RoI heads, in the form of the authors' mmdetection code (``SeesawLoss`` with ``NormedLinear``).

One normalised linear layer (cosine similarity of the L2-normalised features and weights, times a temperature,
plus a bias) outputs C + 2 logits per RoI, laid out here as

    columns 0, 1:   objectness [background, foreground]    (a separate 2-way softmax)
    columns 2..C+1: the C foreground classes, label j in column j + 1

Training, over R sampled RoIs: objectness cross-entropy over every RoI, plus the seesaw cross-entropy of the class
logits over the foreground RoIs only, each summed and divided by R (mmdetection's ``avg_factor``, the number of
sampled RoIs). The seesaw cross-entropy of a RoI of class i adds log S_ij to every other logit j, with
S_ij = M_ij * C_ij:

    mitigation   M_ij = (N_j / N_i) ** p  if N_j < N_i else 1   N = instances seen so far (``cum_samples``)
    compensation C_ij = (s_j / s_i) ** q  if s_j > s_i else 1   s = softmax of the class logits (no gradient),
                                                               s_i clamped below at ``eps``

Counts are accumulated from the sampled RoI labels at each loss call, before the loss (as the authors do), into a
buffer saved with the checkpoint, and summed over processes under torch.distributed.
Inference: P(label j) = softmax(class logits)_j * P(foreground); column 0 = P(background) of the objectness.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from longtail_seg.models.classifiers import feature_dropout


class NormalizedLinear(nn.Linear):
    """Cosine classifier: ``temperature * <x/|x|, w/|w|> + b`` (mmdetection's ``NormedLinear``, power 1), weights
    initialised N(0, 0.01), bias 0."""

    def __init__(self, in_features: int, out_features: int, temperature: float = 20.0, eps: float = 1e-6) -> None:
        super().__init__(in_features, out_features)
        if not temperature > 0:
            raise ValueError(f"seesaw temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.eps = float(eps)
        nn.init.normal_(self.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [R, out] for features [R, in]."""
        weight = self.weight / (self.weight.norm(dim=1, keepdim=True) + self.eps)
        unit = features / (features.norm(dim=1, keepdim=True) + self.eps)
        return F.linear(unit * self.temperature, weight, self.bias)


class SeesawClassifier(nn.Module):
    """Objectness (bg/fg) plus C-way class softmax on a normalised linear layer, trained with the seesaw loss."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        p: float = 0.8,
        q: float = 2.0,
        temperature: float = 20.0,
        eps: float = 1e-2,
        dropout: float = 0.0,
    ) -> None:
        """``p``: mitigation exponent, ``q``: compensation exponent (0 turns either off); ``temperature``: scale of
        the cosine logits; ``eps``: floor of the true class's score in the compensation ratio; ``dropout``: on the
        input features while training (0 = off)."""
        super().__init__()
        if not (p >= 0 and q >= 0 and eps > 0):
            raise ValueError(f"seesaw needs p >= 0, q >= 0 and eps > 0; got p={p}, q={q}, eps={eps}")
        self.num_classes = num_classes
        self.p, self.q, self.eps = float(p), float(q), float(eps)
        self.dropout = feature_dropout(dropout)
        self.cls_score = NormalizedLinear(in_features, num_classes + 2, temperature)
        # instances seen per label 0..C (0 = background, counted but unused), saved in the checkpoint
        self.register_buffer("cum_samples", torch.zeros(num_classes + 1, dtype=torch.float64))

    @classmethod
    def from_config(cls, cfg: dict[str, Any], in_features: int, num_classes: int) -> SeesawClassifier:
        """Build from a checked ``{"type": "seesaw", ...}`` config with its defaults filled in
        (``models/registry.py``)."""
        return cls(in_features, num_classes, cfg["p"], cfg["q"], cfg["temperature"], cfg["eps"], cfg["dropout"])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [R, C+2]: objectness [bg, fg] then the C classes, for RoI features [R, D]."""
        return self.cls_score(self.dropout(features.flatten(start_dim=1)))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Objectness cross-entropy + seesaw cross-entropy of the foreground RoIs, each summed / number of RoIs.

        Accumulates the labels into ``cum_samples`` first (training state, like an optimizer's)."""
        self.accumulate(labels)
        logits = logits.float()
        num_rois = max(len(labels), 1)
        objectness = F.cross_entropy(logits[:, :2], (labels > 0).long(), reduction="sum") / num_rois
        foreground = labels > 0
        class_logits, class_targets = logits[foreground, 2:], labels[foreground] - 1
        adjusted = class_logits + self.seesaw_log_weights(class_logits, class_targets)
        classes = F.cross_entropy(adjusted, class_targets, reduction="sum") / num_rois
        return objectness + classes

    def seesaw_log_weights(self, class_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log S_ij [P, C] added to the class logits of P foreground RoIs (0 at each RoI's own class)."""
        weights = class_logits.new_ones(class_logits.shape)
        if self.p > 0:
            counts = self.cum_samples[1:].clamp(min=1).to(class_logits.dtype)
            ratio = counts[None, :] / counts[targets][:, None]  # N_j / N_i
            weights = weights * torch.where(ratio < 1, ratio.pow(self.p), torch.ones_like(ratio))
        if self.q > 0:
            scores = F.softmax(class_logits.detach(), dim=1)
            own = scores.gather(1, targets[:, None]).clamp(min=self.eps)
            ratio = scores / own  # s_j / s_i
            weights = weights * torch.where(ratio > 1, ratio.pow(self.q), torch.ones_like(ratio))
        log_weights = weights.log()
        return log_weights.scatter(1, targets[:, None], 0.0)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities [R, C+1]: column 0 = P(background) of the objectness, label j = P(j | fg) x P(fg)."""
        logits = logits.float()
        objectness = F.softmax(logits[:, :2], dim=-1)
        classes = F.softmax(logits[:, 2:], dim=-1) * objectness[:, 1:2]
        return torch.cat([objectness[:, :1], classes], dim=1)

    @torch.no_grad()
    def accumulate(self, labels: torch.Tensor) -> None:
        """Add the labels (0..C) to ``cum_samples``, summed over processes under torch.distributed."""
        counts = torch.bincount(labels.long(), minlength=self.num_classes + 1).to(self.cum_samples)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(counts)
        self.cum_samples += counts

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, p={self.p}, q={self.q}, eps={self.eps}"


__all__ = ["NormalizedLinear", "SeesawClassifier"]
