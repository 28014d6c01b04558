"""Hybrid Task Cascade RoI heads (Chen et al., 2019) without the semantic branch (LVIS has no stuff labels).

On top of the cascade's box stages (``models/cascade_roi_heads.py``, same ``model.cascade`` settings), every stage
has its own mask head and mask predictor, and:

* interleaved execution: stage k's mask branch learns on the boxes stage k's box branch just regressed (re-matched
  and re-sampled at stage k's IoU threshold, the ground truth added), the boxes stage k + 1 then samples from;
* mask information flow: stage k's mask head takes the pooled features plus a 1 x 1 convolution of stage k - 1's
  mask-head features on the same RoIs, so the mask heads of stages 1..k run in a chain for stage k;
* stage k's mask loss (``loss_mask_stageK``) is weighted by the stage's loss weight, as its box losses are.

At inference the boxes and scores are the cascade's; each detection's mask probabilities are the mean of the
three stages' (each stage's mask head fed by the previous one's features), for the detection's own class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from longtail_seg.models.cascade_roi_heads import CascadeRoIHeads, box_stages, stage_settings
from longtail_seg.models.roi_heads import (
    Features,
    ImageShapes,
    StageSample,
    Targets,
    build_mask_iou_head,
    head_settings,
    mask_branch,
    predicted_class_mask_probs,
    roi_pools,
)


class HybridTaskCascadeRoIHeads(CascadeRoIHeads):
    """The cascade's box stages with one mask head per stage (``mask_head`` and ``mask_predictor`` hold one module
    per stage) and the mask information flow between them (``mask_flows``, 1 x 1 convolutions, one per stage
    after the first)."""

    def __init__(self, *args: Any, mask_flows: Sequence[nn.Module], **kwargs: Any) -> None:
        """``CascadeRoIHeads``' arguments with per-stage ``mask_head`` / ``mask_predictor`` sequences and the
        ``mask_flows`` from each stage's mask features to the next stage's mask-head input."""
        super().__init__(*args, **kwargs)
        self.mask_head = nn.ModuleList(self.mask_head)
        self.mask_predictor = nn.ModuleList(self.mask_predictor)
        self.mask_flows = nn.ModuleList(mask_flows)
        if not len(self.mask_head) == len(self.mask_predictor) == len(self.mask_flows) + 1 == self.num_stages:
            raise ValueError(f"HTC needs one mask head and predictor per stage and one flow per stage after the "
                             f"first ({self.num_stages} stages); got {len(self.mask_head)}, "
                             f"{len(self.mask_predictor)} and {len(self.mask_flows)}")

    @classmethod
    def from_config(cls, cfg: dict[str, Any], in_channels: int, num_classes: int) -> HybridTaskCascadeRoIHeads:
        """Build from a resolved ``model:`` config (``model.cascade`` gives the stages)."""
        box_roi_pool, mask_roi_pool = roi_pools(cfg)
        box_heads, box_predictors = box_stages(cfg, in_channels, num_classes)
        mask_heads, mask_predictors = zip(*(mask_branch(cfg, in_channels, num_classes) for _ in box_heads))
        flows = [nn.Conv2d(cfg["mask_head_channels"], in_channels, 1) for _ in box_heads[1:]]
        return cls(box_roi_pool, box_heads, box_predictors, mask_roi_pool, mask_heads, mask_predictors,
                   mask_flows=flows, mask_iou_head=build_mask_iou_head(cfg, in_channels, num_classes),
                   **stage_settings(cfg), **head_settings(cfg))

    def stage_mask_losses(self, stage: int, features: Features, image_shapes: ImageShapes, targets: Targets,
                          sample: StageSample, refined: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Interleaved execution: stage ``stage``'s mask loss (times its weight, ``loss_mask_stageK``) on the
        positives of a re-sample, at its IoU threshold, of the boxes it ``refined`` (and on the last stage, with
        the MaskIoU head, ``loss_mask_iou``, unweighted)."""
        with torch.no_grad():
            sampled, matched_idxs, labels, _, _ = self.samplers[stage].sample(refined, targets)
        losses = self.mask_losses(features, (sampled, matched_idxs, labels), image_shapes, targets, stage,
                                  last_stage=stage == self.num_stages - 1)
        losses[f"loss_mask_stage{stage + 1}"] = self.stage_loss_weights[stage] * losses.pop("loss_mask")
        return losses

    def stage_mask_logits(self, pooled: torch.Tensor, stage: int) -> torch.Tensor:
        """Stage ``stage``'s mask logits, its mask head fed by the chain of the earlier stages' features."""
        return self.mask_predictor[stage](self.mask_features(pooled, stage)[-1])

    def pooled_class_mask_probs(self, pooled: torch.Tensor, labels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per image, the mean over stages of the M x M mask probabilities [N, 1, M, M] of each box for its own
        label (every stage's mask head fed by the previous stage's features)."""
        stage_features = self.mask_features(pooled, self.num_stages - 1)
        per_stage = [predicted_class_mask_probs(predictor, stage_feature, labels)
                     for predictor, stage_feature in zip(self.mask_predictor, stage_features)]
        return [torch.stack(image_probs).mean(dim=0) for image_probs in zip(*per_stage)]

    def mask_features(self, pooled: torch.Tensor, last_stage: int) -> list[torch.Tensor]:
        """The mask-head features of stages 0..``last_stage`` on the same pooled RoIs, each stage's input being the
        pooled features plus the flow of the previous stage's features."""
        outputs: list[torch.Tensor] = []
        for stage in range(last_stage + 1):
            inputs = pooled if not outputs else pooled + self.mask_flows[stage - 1](outputs[-1])
            outputs.append(self.mask_head[stage](inputs))
        return outputs
