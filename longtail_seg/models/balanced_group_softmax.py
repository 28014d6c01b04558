"""Balanced group softmax (BAGS; Li et al., "Overcoming Classifier Imbalance for Long-tail Object Detection with
Balanced Group Softmax", CVPR 2020), as a replaceable box classifier of the RoI heads.

Categories are split into groups by training instance count (``stats.bgs_groups``: <10, [10,100), [100,1000),
>=1000 by default); groups without categories are dropped. One linear layer outputs every group's logits
concatenated, in this layout (as in the paper's Fig. 2 and the official code):

    group 0:        [background, others]            others = "some foreground class"
    group g >= 1:   [others, class_1, ..., class_n]  others = background or a class outside group g

Training: a softmax cross-entropy per group, each averaged over the RoIs it uses, summed over groups. Group 0 uses
every RoI. Group g uses its in-group RoIs plus ``others_sample_ratio`` x that many randomly chosen "others" RoIs
(all of them if fewer, none if the group has no in-group RoI in the batch; ``None`` turns subsampling off and
every group trains on every RoI).
Inference: softmax inside each group, drop the "others" entries, put the probabilities back in label order and
multiply them by group 0's foreground probability; column 0 holds group 0's background probability.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from longtail_seg.data.lvis_io import DatasetError
from longtail_seg.models.classifiers import feature_dropout

STATS_COLUMNS = ("category_id", "bgs_group")


class BalancedGroupSoftmaxClassifier(nn.Module):
    """Group-wise softmax classifier over C foreground classes grouped by training frequency, plus group 0 (bg/fg)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        class_groups: Sequence[int],
        others_sample_ratio: float | None = 8.0,
        dropout: float = 0.0,
    ) -> None:
        """``class_groups[j - 1]`` is the group id (>= 1) of label j; ids need not be contiguous (empty groups are
        dropped). ``others_sample_ratio``: "others" RoIs kept per in-group RoI in each group g >= 1 (None = all).
        ``dropout``: drop probability on the input features while training (0 = off)."""
        super().__init__()
        self.dropout = feature_dropout(dropout)
        groups = _validated_groups(class_groups, num_classes)
        if others_sample_ratio is not None and not others_sample_ratio >= 0:
            raise ValueError(f"others_sample_ratio must be >= 0 or None, got {others_sample_ratio}")
        self.num_classes = num_classes
        self.class_groups = groups
        self.others_sample_ratio = None if others_sample_ratio is None else float(others_sample_ratio)
        self.group_ids = sorted(set(groups))  # original ids of the non-empty groups, in order 1..G
        self.group_members = [[j + 1 for j, g in enumerate(groups) if g == gid] for gid in self.group_ids]
        self.group_sizes = [2] + [1 + len(members) for members in self.group_members]
        self.cls_score = nn.Linear(in_features, sum(self.group_sizes))
        self.register_buffer("group_labels", self._group_label_table(), persistent=False)

    @classmethod
    def from_config(cls, cfg: dict[str, Any], in_features: int, num_classes: int) -> BalancedGroupSoftmaxClassifier:
        """Build from a checked ``{"type": "bgs", "class_groups": [...], ...}`` config with its defaults filled in
        (``models/registry.py``)."""
        if cfg.get("class_groups") is None:
            raise ValueError(
                "the bgs classifier config needs class_groups (group id per label 1..C); build it with "
                "class_groups_from_stats(results/{dataset}/stats/category_stats.csv, category_ids)"
            )
        return cls(in_features, num_classes, cfg["class_groups"], cfg["others_sample_ratio"], cfg["dropout"])

    @property
    def num_groups(self) -> int:
        """Number of foreground groups G (group 0, background vs foreground, not counted)."""
        return len(self.group_members)

    def group_slices(self) -> list[tuple[int, int]]:
        """(start, length) of each group's logits (group 0 first) in the concatenated logits."""
        starts = [sum(self.group_sizes[:g]) for g in range(len(self.group_sizes))]
        return list(zip(starts, self.group_sizes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """All groups' logits concatenated, [R, sum of group sizes], for RoI features [R, D]."""
        return self.cls_score(self.dropout(features.flatten(start_dim=1)))

    def group_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """Cross-entropy of each group (group 0 first), averaged over the RoIs that group uses."""
        losses = []
        for group, (start, length) in enumerate(self.group_slices()):
            targets = self.group_labels[group][labels]
            used = torch.ones_like(targets, dtype=torch.bool) if group == 0 else self._used_rois(targets)
            cross_entropy = F.cross_entropy(logits[:, start : start + length].float(), targets, reduction="none")
            losses.append((cross_entropy * used).sum() / used.sum().clamp(min=1))
        return losses

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sum over groups of the per-group cross-entropy (labels in 0..C, 0 = background)."""
        return torch.stack(self.group_losses(logits, labels)).sum()

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities [R, C+1]: column 0 = group-0 background prob, label j = P(fg) x P(j | its group)."""
        slices = self.group_slices()
        start, length = slices[0]
        bg_fg = F.softmax(logits[:, start : start + length].float(), dim=-1)
        probs = bg_fg.new_zeros(len(logits), self.num_classes + 1)
        probs[:, 0] = bg_fg[:, 0]
        for members, (start, length) in zip(self.group_members, slices[1:]):
            in_group = F.softmax(logits[:, start : start + length].float(), dim=-1)[:, 1:]  # drop "others"
            probs[:, members] = in_group * bg_fg[:, 1:2]
        return probs

    def extra_repr(self) -> str:
        sizes = [len(members) for members in self.group_members]
        return f"num_classes={self.num_classes}, group_ids={self.group_ids}, group_sizes={sizes}, " \
            f"others_sample_ratio={self.others_sample_ratio}"

    def _group_label_table(self) -> torch.Tensor:
        """[G+1, C+1] table: label (0..C) -> target inside each group (group 0: 0 bg / 1 fg; group g: 0 = others)."""
        table = torch.zeros(self.num_groups + 1, self.num_classes + 1, dtype=torch.int64)
        table[0, 1:] = 1
        for group, members in enumerate(self.group_members, start=1):
            table[group, members] = torch.arange(1, len(members) + 1)
        return table

    def _used_rois(self, targets: torch.Tensor) -> torch.Tensor:
        """Mask of RoIs a group g >= 1 trains on: its in-group RoIs and a random subset of "others" RoIs.

        Subsampling uses torch's default (CPU) generator, so it is reproducible after ``torch.manual_seed``.
        """
        in_group = targets > 0
        if self.others_sample_ratio is None:
            return torch.ones_like(in_group)
        num_in_group = int(in_group.sum())
        if num_in_group == 0:
            return torch.zeros_like(in_group)
        others = torch.nonzero(~in_group).flatten()
        num_kept = int(num_in_group * self.others_sample_ratio)
        if num_kept < len(others):
            others = others[torch.randperm(len(others))[:num_kept].to(others.device)]
        used = in_group.clone()
        used[others] = True
        return used


def class_groups_from_stats(category_stats_csv: str | os.PathLike, category_ids: Sequence[int]) -> list[int]:
    """BGS group id per label 1..C (``bgs_group`` of category_stats.csv, in the order of ``category_ids``)."""
    if not os.path.isfile(category_stats_csv):
        raise DatasetError(f"{category_stats_csv}: category statistics not found; run the dataset statistics step")
    table = pd.read_csv(category_stats_csv)
    missing_columns = [c for c in STATS_COLUMNS if c not in table.columns]
    if missing_columns:
        raise DatasetError(
            f"{category_stats_csv}: missing column(s) {missing_columns}; regenerate it with the dataset statistics step"
        )
    group_of = dict(zip(table["category_id"].astype(int), table["bgs_group"].astype(int)))
    for category_id in category_ids:
        if int(category_id) not in group_of:
            raise DatasetError(
                f"{category_stats_csv}: category id {category_id} of the model has no bgs_group; the statistics were "
                "computed on another annotation file, rerun the dataset statistics step on the training annotations"
            )
    return [group_of[int(c)] for c in category_ids]


def _validated_groups(class_groups: Sequence[int], num_classes: int) -> list[int]:
    """Group ids as ints, one per class, each >= 1 (0 is reserved for background vs foreground)."""
    groups = [int(g) for g in class_groups]
    if len(groups) != num_classes:
        raise ValueError(
            f"class_groups has {len(groups)} entries but the model has {num_classes} classes; give one group id per "
            "label 1..C in category order (class_groups_from_stats builds it)"
        )
    bad = [(label, g) for label, g in enumerate(groups, start=1) if g < 1]
    if bad:
        label, group = bad[0]
        raise ValueError(f"BGS group ids must be >= 1 (0 is background vs foreground); label {label} has {group}")
    return groups


__all__ = ["BalancedGroupSoftmaxClassifier", "class_groups_from_stats"]
