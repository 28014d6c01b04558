"""Replaceable box classifiers for the RoI heads.

The box head of Mask R-CNN ends in two parts kept apart here: a class-agnostic-interface box
*regressor* (``BoxRegressor``) and a box *classifier*. Every classifier implements the same three
calls, so later steps of the report (balanced group softmax, the double classifier) can swap the
classifier without touching the RoI heads:

    logits = classifier(features)          # features [R, D] -> logits (any structure)
    loss = classifier.loss(logits, labels)  # labels int64 [R] in 0..C (0 = background) -> scalar
    probs = classifier.scores(logits)       # -> probabilities [R, C+1], background in column 0

The RoI heads never look inside ``logits``: a classifier may return a tensor, a tuple or a dict.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from longtail_seg.config_keys import reject_unknown_keys

CLASSIFIER_REGISTRY: dict[str, type[nn.Module]] = {}


def register_classifier(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a classifier buildable by ``name`` from the ``model.classifier`` config."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in CLASSIFIER_REGISTRY and CLASSIFIER_REGISTRY[name] is not cls:
            raise ValueError(f"classifier name {name!r} is already registered to {CLASSIFIER_REGISTRY[name]}")
        CLASSIFIER_REGISTRY[name] = cls
        return cls

    return decorator


@register_classifier("softmax")
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
    def from_config(cls, cfg: dict[str, Any], in_features: int, num_classes: int) -> "SoftmaxClassifier":
        """Build from the ``model.classifier`` config section (optional ``dropout``)."""
        reject_unknown_keys("softmax classifier config", cfg, {"type", "dropout"})
        return cls(in_features, num_classes, cfg.get("dropout", 0.0))

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


class BoxRegressor(nn.Module):
    """Class-specific box deltas: torchvision's FastRCNNPredictor ``bbox_pred`` layer, 4*(C+1) outputs."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.bbox_pred = nn.Linear(in_features, 4 * (num_classes + 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Box deltas [R, 4*(C+1)] for RoI features [R, D]."""
        return self.bbox_pred(features.flatten(start_dim=1))


class BoxPredictor(nn.Module):
    """FastRCNNPredictor split in two replaceable parts: ``classifier`` and ``box_regressor``.

    ``forward`` returns ``(class_logits, box_deltas)`` like FastRCNNPredictor, so torchvision code
    that calls ``box_predictor(features)`` keeps working.
    """

    def __init__(self, classifier: nn.Module, box_regressor: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.box_regressor = box_regressor

    def forward(self, features: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Classifier logits (opaque) and box deltas for RoI features [R, D]."""
        return self.classifier(features), self.box_regressor(features)


# Modules whose classifiers register themselves on import; imported on first use of an unknown name so that a
# config or a checkpoint's model_cfg can name them (load_detector never imports them itself).
BUILTIN_CLASSIFIER_MODULES = (
    "longtail_seg.models.balanced_group_softmax",
    "longtail_seg.models.double_classifier",
)


def _import_builtin_classifiers() -> None:
    """Import the modules that register the built-in non-softmax classifiers (skipping ones not written yet)."""
    for module in BUILTIN_CLASSIFIER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


def build_classifier(cfg: dict[str, Any] | None, in_features: int, num_classes: int) -> nn.Module:
    """Build the box classifier named by ``cfg["type"]`` (default ``softmax``) from the registry."""
    cfg = dict(cfg or {})
    name = cfg.get("type", "softmax")
    if name not in CLASSIFIER_REGISTRY:
        _import_builtin_classifiers()
    if name not in CLASSIFIER_REGISTRY:
        raise ValueError(
            f"unknown model.classifier.type {name!r}; registered classifiers: {sorted(CLASSIFIER_REGISTRY)}. "
            "Register new ones with @register_classifier(name) in longtail_seg/models/classifiers.py."
        )
    return CLASSIFIER_REGISTRY[name].from_config(cfg, in_features, num_classes)


