"""Cascade R-CNN RoI heads (Cai and Vasconcelos, 2018): box stages of rising IoU threshold, each refining the last.

Stage k has its own box head (two fc layers), its own box classifier built from ``model.classifier`` (so softmax,
balanced group softmax or the double classifier, per stage) and a class-agnostic box regressor with its own
box-coder weights. ``model.cascade`` sets, per stage, the IoU threshold t_k, the loss weight w_k and those weights
(Cascade R-CNN's 0.5 / 0.6 / 0.7, 1 / 0.5 / 0.25 and (10, 10, 5, 5) / (20, 20, 10, 10) / (30, 30, 15, 15)).

Training: stage 1 matches and samples the RPN's proposals (plus the ground truth) at t_1, as the standard heads do;
stage k > 1 matches and samples, at t_k, the RoIs stage k - 1 sampled, moved by stage k - 1's regression (the
gradient stops at the boxes; the ground-truth boxes it had added are dropped and added again). Each stage's
classification and box losses are weighted by w_k (``loss_classifier_stageK``, ``loss_box_reg_stageK``). The one
mask head learns on the last stage's positive RoIs. Ignore regions, the sampler and the losses are the standard
heads' (``models/roi_heads.py``).

Inference: each stage classifies the boxes it is given and moves them for the next; the detection scores are the
mean of the stages' class probabilities, the boxes the last stage's, post-processed as the standard heads do
(``models/postprocess.py``), and masks are predicted on those final detections.

Decoupled retraining sees every stage's classifier through ``classifiers()``: all of them are replaced and trained
(the stages' classification losses with their weights; the frozen regressors still move the boxes from stage to
stage), everything else frozen; a double classifier averages its two branches within each stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

from longtail_seg.models.mask_iou_head import MaskIoUHead
from longtail_seg.models.roi_heads import (
    BoxPredictor,
    Features,
    ImageShapes,
    RoISampler,
    StageSample,
    StandardRoIHeads,
    Targets,
    box_regression_loss,
    box_stage,
    build_mask_iou_head,
    head_settings,
    mask_branch,
    roi_pools,
)

# Refined training boxes smaller than this (pixels, either side) are dropped before the next stage, as the RPN drops
# its proposals: a collapsed box has no regression target.
MIN_REFINED_BOX_SIZE = 1e-3


class CascadeRoIHeads(StandardRoIHeads):
    """Cascade R-CNN's box stages and Mask R-CNN's mask head: ``box_head`` and ``box_predictor`` hold one module
    per stage (``nn.ModuleList``), ``samplers`` and ``box_coders`` one object per stage."""

    def __init__(
        self,
        box_roi_pool: MultiScaleRoIAlign,
        box_heads: Sequence[nn.Module],
        box_predictors: Sequence[BoxPredictor],
        mask_roi_pool: MultiScaleRoIAlign | None,
        mask_head: nn.Module | None,
        mask_predictor: MaskRCNNPredictor | None,
        *,
        iou_thresholds: Sequence[float],
        stage_loss_weights: Sequence[float],
        bbox_reg_weights: Sequence[Sequence[float]],
        box_head_dim: int,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        mask_iou_head: MaskIoUHead | None = None,
    ) -> None:
        """One box head, predictor (class-agnostic regressor), IoU threshold, loss weight and box-coder weights per
        stage; the rest as ``StandardRoIHeads`` (the MaskIoU head scores the last stage's masks)."""
        stages = len(iou_thresholds)
        lengths = [len(box_heads), len(box_predictors), len(stage_loss_weights), len(bbox_reg_weights)]
        if stages < 1 or any(length != stages for length in lengths):
            raise ValueError(f"a cascade needs one box head, predictor, loss weight and box-coder weights per IoU "
                             f"threshold; got {stages} thresholds and {lengths}")
        super().__init__(
            box_roi_pool, nn.ModuleList(box_heads), nn.ModuleList(box_predictors), mask_roi_pool, mask_head,
            mask_predictor, box_head_dim=box_head_dim, batch_size_per_image=batch_size_per_image,
            positive_fraction=positive_fraction, fg_iou_thresh=iou_thresholds[0], bg_iou_thresh=iou_thresholds[0],
            bbox_reg_weights=tuple(bbox_reg_weights[0]), score_thresh=score_thresh, nms_thresh=nms_thresh,
            detections_per_img=detections_per_img, mask_iou_head=mask_iou_head,
        )
        self.stage_loss_weights = [float(weight) for weight in stage_loss_weights]
        self.box_coders = [self.box_coder] + [det_utils.BoxCoder(tuple(w)) for w in bbox_reg_weights[1:]]
        self.samplers = [self.sampler] + [
            RoISampler(threshold, threshold, batch_size_per_image, positive_fraction, coder)
            for threshold, coder in zip(iou_thresholds[1:], self.box_coders[1:])
        ]
        for sampler in self.samplers[1:]:  # one RoI count for every stage (retrain.rois_per_image sets it)
            sampler.fg_bg_sampler = self.sampler.fg_bg_sampler

    @classmethod
    def from_config(cls, cfg: dict[str, Any], in_channels: int, num_classes: int) -> CascadeRoIHeads:
        """Build from a resolved ``model:`` config (``model.cascade`` gives the stages)."""
        box_roi_pool, mask_roi_pool = roi_pools(cfg)
        box_heads, box_predictors = box_stages(cfg, in_channels, num_classes)
        mask_head, mask_predictor = mask_branch(cfg, in_channels, num_classes)
        return cls(box_roi_pool, box_heads, box_predictors, mask_roi_pool, mask_head, mask_predictor,
                   mask_iou_head=build_mask_iou_head(cfg, in_channels, num_classes), **stage_settings(cfg),
                   **head_settings(cfg))

    @property
    def num_stages(self) -> int:
        """Number of box stages."""
        return len(self.samplers)

    # ------------------------------------------------------------------------------------------ the interface

    def classifiers(self) -> list[nn.Module]:
        """The box classifiers, one per stage, first stage first."""
        return [predictor.classifier for predictor in self.box_predictor]

    def set_classifiers(self, classifiers: Sequence[nn.Module]) -> None:
        """Replace every stage's box classifier (in ``classifiers()`` order)."""
        if len(classifiers) != self.num_stages:
            raise ValueError(f"{type(self).__name__} has {self.num_stages} box classifiers (one per stage), got "
                             f"{len(classifiers)}")
        for predictor, classifier in zip(self.box_predictor, classifiers):
            predictor.classifier = classifier

    def classifier_in_features(self) -> list[int]:
        """The feature width of each stage's classifier."""
        return [self.box_head_dim] * self.num_stages

    def losses(self, features: Features, proposals: list[torch.Tensor], image_shapes: ImageShapes,
               targets: Targets | None) -> dict[str, torch.Tensor]:
        """Per stage k, loss_classifier_stageK and loss_box_reg_stageK (times the stage's weight) on the RoIs it
        samples, and the mask losses of ``stage_mask_losses``; with ``classifier_losses_only`` the weighted
        classification losses alone."""
        self.check_targets(targets)
        losses = {}
        last = self.num_stages - 1
        for stage in range(self.num_stages):
            sampled, matched_idxs, labels, regression_targets, from_gt = self.samplers[stage].sample(proposals, targets)
            classifier_features, regressor_features = self.box_stage_features(self.box_head[stage], features,
                                                                              sampled, image_shapes)
            classifier, weight = self.box_predictor[stage].classifier, self.stage_loss_weights[stage]
            all_labels = torch.cat(labels, dim=0)
            losses[f"loss_classifier_stage{stage + 1}"] = weight * classifier.loss(classifier(classifier_features),
                                                                                   all_labels)
            if self.classifier_losses_only and stage == last:
                break
            box_regression = self.box_predictor[stage].box_regressor(regressor_features)
            refined = self.refine_boxes(stage, box_regression.detach(), sampled, image_shapes)
            proposals = [nonempty(boxes[~gt]) for boxes, gt in zip(refined, from_gt)]
            if not self.classifier_losses_only:
                losses[f"loss_box_reg_stage{stage + 1}"] = weight * box_regression_loss(
                    box_regression, all_labels, torch.cat(regression_targets, dim=0))
                losses.update(self.stage_mask_losses(stage, features, image_shapes, targets,
                                                     (sampled, matched_idxs, labels), proposals))
        return losses

    def stage_mask_losses(self, stage: int, features: Features, image_shapes: ImageShapes, targets: Targets,
                          sample: StageSample, refined: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The mask losses after box stage ``stage``, given its ``sample`` (RoIs, matched ground truth, labels) and
        the boxes it ``refined`` (ground truth left out): Cascade R-CNN's one mask head learns on the last stage's
        positive RoIs (``loss_mask``, and ``loss_mask_iou`` with the MaskIoU head)."""
        if not self.has_mask() or stage < self.num_stages - 1:
            return {}
        return self.mask_losses(features, sample, image_shapes, targets)

    def detect_boxes(self, features: Features, proposals: list[torch.Tensor], image_shapes: ImageShapes) -> Targets:
        """Inference without the mask branch: every stage scores and moves the boxes; scores are the mean of the
        stages' class probabilities, boxes the last stage's; per image dict(boxes, labels, scores)."""
        total_scores = None
        for stage in range(self.num_stages):
            classifier_features, regressor_features = self.box_stage_features(self.box_head[stage], features,
                                                                              proposals, image_shapes)
            classifier = self.box_predictor[stage].classifier
            scores = classifier.scores(classifier(classifier_features))
            total_scores = scores if total_scores is None else total_scores + scores
            box_regression = self.box_predictor[stage].box_regressor(regressor_features)
            boxes = self.refine_boxes(stage, box_regression, proposals, image_shapes)
            if stage < self.num_stages - 1:
                proposals = boxes
        scores = total_scores / self.num_stages
        # class-agnostic: every class of a RoI has the last stage's box (a view, no copy)
        class_boxes = torch.cat(boxes, dim=0)[:, None, :].expand(-1, scores.shape[1], -1)
        return self.postprocess_detections(scores, class_boxes, proposals, image_shapes)

    # ------------------------------------------------------------------------------------------------ helpers

    def refine_boxes(
        self, stage: int, box_regression: torch.Tensor, boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[torch.Tensor]:
        """Per image, the boxes moved by ``stage``'s class-agnostic deltas [R, 4] and clipped to the image."""
        reference = torch.cat(boxes, dim=0)  # deltas in the boxes' dtype: bf16 coordinates (autocast) are too coarse
        decoded = self.box_coders[stage].decode_single(box_regression.to(reference.dtype), reference)
        per_image = decoded.split([len(b) for b in boxes], dim=0)
        return [box_ops.clip_boxes_to_image(b, shape) for b, shape in zip(per_image, image_shapes)]


def box_stages(cfg: dict[str, Any], in_channels: int, num_classes: int) -> tuple[list[nn.Module], list[BoxPredictor]]:
    """Per stage of ``model.cascade``: a box head (``model.box_head``), and a predictor of a ``model.classifier``
    classifier and a class-agnostic box regressor (``roi_heads.box_stage``)."""
    stages = [box_stage(cfg, in_channels, num_classes, 0) for _ in cfg["cascade"]["iou_thresholds"]]
    return [head for head, _ in stages], [predictor for _, predictor in stages]


def stage_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The per-stage keyword settings of a resolved model config's ``model.cascade``."""
    return {key: cfg["cascade"][key] for key in ("iou_thresholds", "stage_loss_weights", "bbox_reg_weights")}


def nonempty(boxes: torch.Tensor) -> torch.Tensor:
    """The boxes with both sides at least ``MIN_REFINED_BOX_SIZE``."""
    return boxes[box_ops.remove_small_boxes(boxes, MIN_REFINED_BOX_SIZE)]
