"""The report's double classifier: several box classifiers on the same box-head features, scores averaged.

The report retrains one classifier with repeat factor sampling (A) and one with class-aware sampling (B) on the
same frozen representation, and at test time uses S = (S_A + S_B) / 2: one backbone pass, two cheap linear
layers. Here the branches are ordinary registered classifiers (softmax, bgs, ...), so the double classifier is
itself just a classifier module (``model.classifier: {"type": "double", "branches": [cfg_A, cfg_B]}``) and works
wherever a classifier does, e.g. per stage of a cascade head.

The workflow trains the branches separately (``workflow_scripts/retrain.py`` twice, then
``workflow_scripts/combine_classifiers.py``); ``loss`` is the sum of the branch losses, so training a double
classifier directly also works but trains both branches with one sampler.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from longtail_seg.models.classifiers import build_classifier


class DoubleClassifier(nn.Module):
    """Average of the class probabilities of two (or more) classifiers on shared RoI features."""

    def __init__(self, branches: Sequence[nn.Module]) -> None:
        """``branches``: classifiers with the module/loss/scores interface of models/classifiers.py (>= 2)."""
        super().__init__()
        if len(branches) < 2:
            raise ValueError(f"a double classifier needs at least 2 branches, got {len(branches)}")
        self.branches = nn.ModuleList(branches)

    @classmethod
    def from_config(cls, cfg: dict[str, Any], in_features: int, num_classes: int) -> DoubleClassifier:
        """Build from ``{"type": "double", "branches": [cfg_A, cfg_B]}``; each branch cfg is any classifier cfg."""
        return cls([build_classifier(branch, in_features, num_classes) for branch in cfg["branches"]])

    def forward(self, features: torch.Tensor) -> tuple[Any, ...]:
        """One logits object per branch (each in its own classifier's format)."""
        return tuple(branch(features) for branch in self.branches)

    def loss(self, logits: tuple[Any, ...], labels: torch.Tensor) -> torch.Tensor:
        """Sum of the branch losses (each branch trained on the same RoIs; the workflow trains them apart)."""
        self._check_logits(logits)
        losses = [branch.loss(branch_logits, labels) for branch, branch_logits in zip(self.branches, logits)]
        return torch.stack(losses).sum()

    def scores(self, logits: tuple[Any, ...]) -> torch.Tensor:
        """Mean of the branch probabilities [R, C+1]: (S_A + S_B) / 2 for two branches."""
        self._check_logits(logits)
        total = None
        for branch, branch_logits in zip(self.branches, logits):
            branch_scores = branch.scores(branch_logits)
            total = branch_scores if total is None else total + branch_scores
        return total / len(self.branches)

    def _check_logits(self, logits: tuple[Any, ...]) -> None:
        if not isinstance(logits, (tuple, list)) or len(logits) != len(self.branches):
            raise ValueError(f"expected a tuple of {len(self.branches)} branch logits (the output of forward)")
