"""Replaceable box classifiers for the RoI heads: the interface, the plain softmax classifier and the builder.

The box head of Mask R-CNN ends in a box *regressor* and a box *classifier* kept apart
(``models/roi_heads.py``). Every classifier implements the same three calls, so later steps of the report
(balanced group softmax, the double classifier) swap the classifier without touching the RoI heads:

    logits = classifier(features)          # features [R, D] -> logits (any structure)
    loss = classifier.loss(logits, labels)  # labels int64 [R] in 0..C (0 = background) -> scalar
    probs = classifier.scores(logits)       # -> probabilities [R, C+1], background in column 0

The RoI heads never look inside ``logits``: a classifier may return a tensor, a tuple or a dict. A classifier is
built by ``from_config(cfg, in_features, num_classes)`` from its registry entry (``models/registry.py``), which
names its config keys and defaults.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from longtail_seg.models.registry import classifier_class, classifier_settings


class SoftmaxClassifier(nn.Module):
    """Plain (C+1)-way softmax classifier: torchvision's FastRCNNPredictor ``cls_score`` layer."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        """``num_classes`` counts foreground classes only (C); the layer outputs C+1 logits. ``dropout``: drop
        probability on the input features while training (the report's pseudo-label retraining), 0 = off."""
        super().__init__()
        self.num_classes = num_classes
        self.dropout = feature_dropout(dropout)
        self.cls_score = nn.Linear(in_features, num_classes + 1)

    @classmethod
    def from_config(cls, cfg: dict[str, Any], in_features: int, num_classes: int) -> SoftmaxClassifier:
        """Build from a checked ``model.classifier`` config with its defaults filled in (``models/registry.py``)."""
        return cls(in_features, num_classes, cfg["dropout"])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [R, C+1] for RoI features [R, D] (flattened if needed)."""
        return self.cls_score(self.dropout(features.flatten(start_dim=1)))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over sampled RoIs (labels in 0..C, 0 = background)."""
        return F.cross_entropy(logits, labels)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities [R, C+1], background in column 0."""
        return F.softmax(logits, dim=-1)


def feature_dropout(probability: float) -> nn.Module:
    """Dropout on a classifier's input features (active in training only), or an identity for probability 0.

    Dropout has no weights, so a classifier trained with it loads into one built without it and vice versa.
    """
    if not 0.0 <= float(probability) < 1.0:
        raise ValueError(f"classifier dropout must be in [0, 1), got {probability}")
    return nn.Dropout(float(probability)) if probability > 0 else nn.Identity()


def build_classifier(cfg: dict[str, Any] | None, in_features: int, num_classes: int) -> nn.Module:
    """Build the box classifier ``cfg["type"]`` names (default ``softmax``) from ``models/registry.py``, for
    ``in_features``-wide RoI features and ``num_classes`` foreground classes; unknown types and keys raise."""
    settings = classifier_settings(dict(cfg or {}))
    return classifier_class(settings["type"]).from_config(settings, in_features, num_classes)
