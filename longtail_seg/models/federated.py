"""Federated loss (Zhou et al., "Probabilistic two-stage detection", arXiv 2103.07461, 2021; CenterNet2's LVIS
classifier) as a replaceable box classifier of the RoI heads.

C independent sigmoids, one per foreground class (logits [R, C]; no background logit: a background RoI is a row of
zeros). Per batch the binary cross-entropy runs only over a set of classes: the foreground classes present in the
batch's sampled RoIs plus classes drawn without replacement with probability proportional to
``image_count ** frequency_power`` (LVIS training image counts; 0.5 in the paper) until the set holds
``num_sampled_classes`` classes (more when more are present; classes with a zero count are never drawn). Loss: the
sum over RoIs and the chosen classes / number of RoIs. CenterNet2 counts the background label among its 50; here
the number counts foreground classes only. Draws use torch's default (CPU) generator, reproducible after
``torch.manual_seed``.
Inference: label j = sigmoid(z_j); column 0 = prod_j (1 - sigmoid(z_j)), the probability that no class fires (the
pipeline reads only the foreground columns; NorCal's renormalisation reads column 0 too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from longtail_seg.models.classifiers import feature_dropout
from longtail_seg.models.sigmoid import one_hot_targets


class FederatedClassifier(nn.Module):
    """Per-class sigmoids trained with the federated loss (present classes + frequency-sampled negatives)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        image_counts: Sequence[int],
        num_sampled_classes: int = 50,
        frequency_power: float = 0.5,
        dropout: float = 0.0,
    ) -> None:
        """``image_counts[j - 1]``: training images with label j; ``num_sampled_classes``: classes in each batch's
        loss; ``frequency_power``: exponent of the image counts in the draw; ``dropout``: on the input features."""
        super().__init__()
        counts = [float(c) for c in image_counts]
        if len(counts) != num_classes:
            raise ValueError(f"image_counts has {len(counts)} entries but the model has {num_classes} classes; give "
                             "one training image count per label 1..C in category order")
        if any(c < 0 for c in counts) or not int(num_sampled_classes) >= 1 or not frequency_power >= 0:
            raise ValueError("federated loss needs image_counts >= 0, num_sampled_classes >= 1 and "
                             f"frequency_power >= 0; got {num_sampled_classes=}, {frequency_power=}")
        self.num_classes = num_classes
        self.num_sampled_classes = int(num_sampled_classes)
        self.frequency_power = float(frequency_power)
        self.dropout = feature_dropout(dropout)
        self.cls_score = nn.Linear(in_features, num_classes)
        weights = torch.tensor(counts, dtype=torch.float64).pow(self.frequency_power)
        weights[torch.tensor(counts) == 0] = 0.0  # 0 ** 0 = 1, but a class never seen is never drawn
        self.register_buffer("sample_weights", weights, persistent=False)

    @classmethod
    def from_config(cls, cfg: dict[str, Any], in_features: int, num_classes: int) -> FederatedClassifier:
        """Build from a checked ``{"type": "federated", "image_counts": [...], ...}`` config with its defaults."""
        if cfg.get("image_counts") is None:
            raise ValueError("the federated classifier config needs image_counts (training images per label 1..C); "
                             "the workflow fills them from results/{dataset}/stats/category_stats.csv "
                             "(longtail_seg/models/category_counts.fill_image_counts)")
        return cls(in_features, num_classes, cfg["image_counts"], cfg["num_sampled_classes"],
                   cfg["frequency_power"], cfg["dropout"])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [R, C] (label j in column j - 1) for RoI features [R, D]."""
        return self.cls_score(self.dropout(features.flatten(start_dim=1)))

    def loss_classes(self, labels: torch.Tensor) -> torch.Tensor:
        """Bool [C] mask of the classes in this batch's loss: the present ones plus frequency-sampled others."""
        chosen = torch.zeros(self.num_classes, dtype=torch.bool)
        present = labels[labels > 0].long().cpu() - 1
        chosen[present] = True
        weights = self.sample_weights.cpu().clone()
        weights[chosen] = 0.0
        wanted = min(self.num_sampled_classes - int(chosen.sum()), int((weights > 0).sum()))
        if wanted > 0:
            chosen[torch.multinomial(weights, wanted, replacement=False)] = True
        return chosen.to(labels.device)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy over the chosen classes (``loss_classes``), summed / number of RoIs."""
        logits = logits.float()
        targets = one_hot_targets(labels, self.num_classes + 1)[:, 1:]
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return (loss * self.loss_classes(labels)[None, :]).sum() / max(len(labels), 1)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities [R, C+1]: label j = sigmoid(z_j), column 0 = prod_j (1 - sigmoid(z_j))."""
        logits = logits.float()
        no_class = torch.exp(-F.softplus(logits).sum(dim=1, keepdim=True))  # log(1 - sigmoid(z)) = -softplus(z)
        return torch.cat([no_class, torch.sigmoid(logits)], dim=1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, num_sampled_classes={self.num_sampled_classes}, " \
            f"frequency_power={self.frequency_power}"


__all__ = ["FederatedClassifier"]
