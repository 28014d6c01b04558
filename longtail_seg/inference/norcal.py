"""NorCal post-hoc calibration (Pan et al., "On Model Calibration for Long-Tailed Object Detection and Instance
Segmentation", NeurIPS 2021): foreground class scores divided by (training instance count) ** gamma, then
renormalised together with the background score, at test time only (``tests.<name>.norcal_gamma``).

For class probabilities p [R, C+1] (background in column 0) and training instance counts N_j of labels 1..C:

    a_j = max(N_j, 1) ** gamma          (a class never seen counts as 1: no division by zero)
    p'_j = (p_j / a_j) / (p_0 + sum_k p_k / a_k),   p'_0 = p_0 / (same denominator)

For a softmax classifier this is the paper's rule (logits shifted by -gamma log N_j, background unchanged). For
the other classifiers it is the same rule on their [R, C+1] probabilities (column 0 as each defines it).
``apply_norcal`` wraps every box classifier of a loaded detector, so any trained model is calibrated without
retraining and every inference path (single-scale, multi-scale) sees the calibrated scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def norcal_scores(probs: torch.Tensor, instance_counts: torch.Tensor, gamma: float) -> torch.Tensor:
    """Calibrated probabilities [R, C+1] from probabilities [R, C+1] (background column 0) and counts [C]."""
    if probs.shape[1] != len(instance_counts) + 1:
        raise ValueError(f"NorCal: scores have {probs.shape[1] - 1} foreground classes but {len(instance_counts)} "
                         "instance counts were given")
    divisor = instance_counts.to(probs.device, torch.float64).clamp(min=1).pow(float(gamma))
    scaled = probs.double()
    scaled = torch.cat([scaled[:, :1], scaled[:, 1:] / divisor[None, :]], dim=1)
    total = scaled.sum(dim=1, keepdim=True)
    return (scaled / total.clamp(min=torch.finfo(torch.float64).tiny)).to(probs.dtype)


class NorCalClassifier(nn.Module):
    """A trained box classifier whose ``scores`` are NorCal-calibrated; ``forward`` and ``loss`` are its own."""

    def __init__(self, classifier: nn.Module, instance_counts: Sequence[int], gamma: float) -> None:
        super().__init__()
        if not float(gamma) >= 0:
            raise ValueError(f"norcal_gamma must be >= 0, got {gamma}")
        self.classifier = classifier
        self.gamma = float(gamma)
        self.register_buffer("instance_counts", torch.tensor([float(c) for c in instance_counts]), persistent=False)

    def forward(self, features: torch.Tensor) -> Any:
        """The wrapped classifier's logits."""
        return self.classifier(features)

    def loss(self, logits: Any, labels: torch.Tensor) -> torch.Tensor:
        """The wrapped classifier's loss (calibration is for inference only)."""
        return self.classifier.loss(logits, labels)

    def scores(self, logits: Any) -> torch.Tensor:
        """The wrapped classifier's probabilities, calibrated by ``norcal_scores``."""
        return norcal_scores(self.classifier.scores(logits), self.instance_counts, self.gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


def apply_norcal(model: nn.Module, instance_counts: Sequence[int], gamma: float) -> nn.Module:
    """Wrap every box classifier of ``model.roi_heads`` in ``NorCalClassifier`` (in place; returns ``model``)."""
    heads = model.roi_heads
    if len(instance_counts) != model.num_classes:
        raise ValueError(f"NorCal: {len(instance_counts)} instance counts for a model with {model.num_classes} "
                         "classes; the statistics belong to another annotation file")
    device = next(model.parameters()).device
    heads.set_classifiers([NorCalClassifier(c, instance_counts, gamma).to(device) for c in heads.classifiers()])
    return model


__all__ = ["NorCalClassifier", "apply_norcal", "norcal_scores"]
