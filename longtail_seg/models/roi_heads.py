"""RoI heads: what the detector does with the RPN's proposals (box classification and regression, masks).

The interface every RoI head implements, and the only one the engine, the double classifier, pseudo labels and
test-time augmentation use:

    heads.classifiers()                     # the box classifiers it holds, one per stage (one here)
    heads.set_classifiers([...])            # swap them (decoupled retraining, the double classifier)
    heads.classifier_in_features()          # the feature width each stage's classifier takes
    heads.detect_boxes(features, proposals, image_shapes)          # detections without masks
    heads.class_mask_probs(features, boxes, labels, image_shapes)  # per-class M x M mask probabilities
    heads.losses(features, proposals, image_shapes, targets)       # training losses
    heads.classifier_losses_only = True     # retraining: the classification loss alone, no masks in targets
    heads.score_thresh, heads.nms_thresh, heads.detections_per_img # test-time limits

``StandardRoIHeads`` is Mask R-CNN's (torchvision's ``RoIHeads`` behaviour, minus keypoints) with the box
classifier a separate module (``models/classifiers.py``). Heads are chosen by ``model.roi_heads`` from
``models/registry.py``; ``CascadeRoIHeads`` (``models/cascade_roi_heads.py``) subclasses this one with one
classifier per stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_loss, project_masks_on_boxes
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops
from torchvision.ops.poolers import initLevelMapper

from longtail_seg.models.backbones import feature_strides
from longtail_seg.models.classifiers import build_classifier
from longtail_seg.models.double_head import DoubleHead, split_box_features
from longtail_seg.models.mask_iou_head import MaskIoUHead, mask_iou_loss, mask_iou_targets, mask_scores
from longtail_seg.models.postprocess import image_candidates, regression_candidates, top_detections

Targets = list[dict[str, torch.Tensor]]
Features = dict[str, torch.Tensor]  # FPN maps by level name
ImageShapes = list[tuple[int, int]]
# One box stage's sample: per image the sampled RoIs, the ground truth each matched, their labels (0 background).
StageSample = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]
# Target entries with one row per instance (the rest, e.g. image_id or mosaic_tiles, describe the image).
PER_INSTANCE_TARGET_KEYS = ("boxes", "labels", "masks", "area", "scores")


def roi_align_with_fixed_scales(
    levels: Sequence[str], output_size: int, sampling_ratio: int, strides: Sequence[int]
) -> MultiScaleRoIAlign:
    """torchvision's MultiScaleRoIAlign with its feature scales set from the backbone's ``strides``.

    Left unset, torchvision infers the scales from the first batch a process sees and keeps them: a small first
    batch (after a resume, in retraining, a TTA view) whose padding is large against its size rounds 1/4 to 1/2
    and every later RoI is pooled from the wrong place. FPN level "k" has stride ``strides[k]``, "pool" the last.
    """
    pool = MultiScaleRoIAlign(list(levels), output_size, sampling_ratio)
    level_strides = [strides[-1] if name == "pool" else strides[int(name)] for name in levels]
    pool.scales = [1.0 / stride for stride in level_strides]
    k_min, k_max = (int(math.log2(stride)) for stride in (level_strides[0], level_strides[-1]))
    pool.map_levels = initLevelMapper(k_min, k_max, pool.canonical_scale, pool.canonical_level)
    return pool


def roi_pools(cfg: dict[str, Any]) -> tuple[MultiScaleRoIAlign, MultiScaleRoIAlign]:
    """The box (7 x 7) and mask (14 x 14) RoIAlign of a resolved model config, scales fixed by its backbone."""
    levels = list(cfg["roi_feature_levels"])
    strides = feature_strides(cfg["backbone"], tuple(cfg["tiny_stage_channels"]))
    return (roi_align_with_fixed_scales(levels, 7, cfg["roi_sampling_ratio"], strides),
            roi_align_with_fixed_scales(levels, 14, cfg["roi_sampling_ratio"], strides))


def mask_branch(cfg: dict[str, Any], in_channels: int, num_classes: int) -> tuple[MaskRCNNHeads, MaskRCNNPredictor]:
    """Mask R-CNN's mask head and per-class mask predictor for a resolved model config."""
    mask_layers = [cfg["mask_head_channels"]] * cfg["mask_head_layers"]
    mask_head = MaskRCNNHeads(in_channels, mask_layers, 1)
    return mask_head, MaskRCNNPredictor(mask_layers[-1], cfg["mask_head_channels"], num_classes + 1)


def box_stage(cfg: dict[str, Any], in_channels: int, num_classes: int,
              regressor_classes: int) -> tuple[nn.Module, BoxPredictor]:
    """One box stage of a resolved model config: its box head (``model.box_head``: Mask R-CNN's two fc layers, or
    Double-Head R-CNN's fc + conv heads) and a predictor of a ``model.classifier`` classifier on the fc features and
    a box regressor (``regressor_classes`` classes, 0 = class-agnostic) on the regression features."""
    dim = cfg["box_head_dim"]
    if cfg["box_head"] == "double":
        double = cfg["double_head"]
        head: nn.Module = DoubleHead(in_channels, 7, dim, double["conv_channels"], double["conv_blocks"])
        regression_dim = double["conv_channels"]
    else:
        head, regression_dim = TwoMLPHead(in_channels * 7 * 7, dim), dim
    predictor = BoxPredictor(build_classifier(cfg["classifier"], dim, num_classes),
                             BoxRegressor(regression_dim, regressor_classes))
    return head, predictor


def build_mask_iou_head(cfg: dict[str, Any], in_channels: int, num_classes: int) -> MaskIoUHead | None:
    """The MaskIoU head (``model.mask_iou_head``) on the 14 x 14 mask RoIs, or None when off."""
    if not cfg["mask_iou_head"]:
        return None
    return MaskIoUHead(in_channels, 14, cfg["mask_head_channels"], cfg["box_head_dim"], num_classes)


def head_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The RoI heads' keyword settings (sampling, test-time limits) from a resolved model config."""
    return {"box_head_dim": cfg["box_head_dim"], "batch_size_per_image": cfg["box_batch_size_per_image"],
            "positive_fraction": cfg["box_positive_fraction"], "score_thresh": cfg["box_score_thresh"],
            "nms_thresh": cfg["box_nms_thresh"], "detections_per_img": cfg["box_detections_per_img"]}


class BoxRegressor(nn.Module):
    """Class-specific box deltas: torchvision's FastRCNNPredictor ``bbox_pred`` layer, 4*(C+1) outputs
    (``num_classes=0``: one class-agnostic box, 4 outputs, as each cascade stage has)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.bbox_pred = nn.Linear(in_features, 4 * (num_classes + 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Box deltas [R, 4*(C+1)] for RoI features [R, D]."""
        return self.bbox_pred(features.flatten(start_dim=1))


class BoxPredictor(nn.Module):
    """FastRCNNPredictor split in two replaceable parts: ``classifier`` and ``box_regressor``."""

    def __init__(self, classifier: nn.Module, box_regressor: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.box_regressor = box_regressor

    def forward(self, features: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """Classifier logits (opaque) and box deltas for RoI features [R, D] (or a double head's pair)."""
        classifier_features, regressor_features = split_box_features(features)
        return self.classifier(classifier_features), self.box_regressor(regressor_features)


class RoISampler:
    """Which proposals a loss sees, and what they should predict: torchvision's ``RoIHeads.select_training_samples``
    (ground truth added to the proposals, IoU matching, a positive/negative subsample, regression targets), after
    removing ignore regions (a target's ``iscrowd`` instances)."""

    def __init__(self, fg_iou_thresh: float, bg_iou_thresh: float, batch_size_per_image: int,
                 positive_fraction: float, box_coder: det_utils.BoxCoder) -> None:
        self.matcher = det_utils.Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.fg_bg_sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_coder = box_coder

    @property
    def batch_size_per_image(self) -> int:
        """RoIs sampled per image."""
        return self.fg_bg_sampler.batch_size_per_image

    @batch_size_per_image.setter
    def batch_size_per_image(self, value: int) -> None:
        self.fg_bg_sampler.batch_size_per_image = int(value)

    def __call__(
        self, proposals: list[torch.Tensor], targets: Targets
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per image: the sampled proposals, the index of the ground truth each matched, their labels (0 =
        background) and box regression targets."""
        return self.sample(proposals, targets)[:4]

    def sample(
        self, proposals: list[torch.Tensor], targets: Targets
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """What ``__call__`` returns plus, per image, which sampled proposals are ground-truth boxes added here (a
        cascade refines the others for its next stage, which adds the ground truth again)."""
        if any("iscrowd" in t for t in targets):
            pairs = [drop_ignored(p, t, self.matcher.high_threshold) for p, t in zip(proposals, targets)]
            proposals, targets = [p for p, _ in pairs], [t for _, t in pairs]
        dtype, device = proposals[0].dtype, proposals[0].device
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        num_proposals = [len(p) for p in proposals]
        proposals = [torch.cat((p, gt)) for p, gt in zip(proposals, gt_boxes)]
        matched_idxs, labels = zip(*(self._match(p, gt, lab) for p, gt, lab in zip(proposals, gt_boxes, gt_labels)))
        positives, negatives = self.fg_bg_sampler(list(labels))
        sampled_proposals, sampled_matches, sampled_labels, matched_gt_boxes, from_gt = [], [], [], [], []
        for image, (pos, neg) in enumerate(zip(positives, negatives)):
            keep = torch.where(pos | neg)[0]
            from_gt.append(keep >= num_proposals[image])
            sampled_proposals.append(proposals[image][keep])
            sampled_labels.append(labels[image][keep])
            sampled_matches.append(matched_idxs[image][keep])
            boxes = gt_boxes[image] if gt_boxes[image].numel() else torch.zeros((1, 4), dtype=dtype, device=device)
            matched_gt_boxes.append(boxes[sampled_matches[-1]])
        regression_targets = self.box_coder.encode(matched_gt_boxes, sampled_proposals)
        return sampled_proposals, sampled_matches, sampled_labels, list(regression_targets), from_gt

    def _match(
        self, proposals: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image: matched ground-truth index (clamped to >= 0) and label per proposal (0 background, -1 ignored
        between the IoU thresholds)."""
        if gt_boxes.numel() == 0:  # an image without objects: every proposal is background
            zeros = torch.zeros((proposals.shape[0],), dtype=torch.int64, device=proposals.device)
            return zeros, zeros.clone()
        matched = self.matcher(box_ops.box_iou(gt_boxes, proposals))
        clamped = matched.clamp(min=0)
        labels = gt_labels[clamped].to(dtype=torch.int64)
        labels[matched == self.matcher.BELOW_LOW_THRESHOLD] = 0
        labels[matched == self.matcher.BETWEEN_THRESHOLDS] = -1
        return clamped, labels


class StandardRoIHeads(nn.Module):
    """Mask R-CNN's RoI heads: a box head, one box classifier + class-specific box regressor, a mask head.

    Same computation as torchvision's ``RoIHeads`` except that the classification loss is ``classifier.loss`` and
    detection scores are ``classifier.scores`` (so a classifier may be a balanced group softmax or a double
    classifier), mask probabilities are computed for each detection's own class only, and ignore regions are
    sampled as neither object nor background.
    """

    def __init__(
        self,
        box_roi_pool: MultiScaleRoIAlign,
        box_head: nn.Module,
        box_predictor: BoxPredictor,
        mask_roi_pool: MultiScaleRoIAlign | None,
        mask_head: nn.Module | None,
        mask_predictor: MaskRCNNPredictor | None,
        *,
        box_head_dim: int,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        mask_iou_head: MaskIoUHead | None = None,
    ) -> None:
        """The modules and settings of torchvision's ``RoIHeads`` (keypoints excepted); ``box_head_dim`` is the
        width of ``box_head``'s (classifier) output; ``mask_iou_head`` scores the masks (Mask Scoring R-CNN)."""
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.mask_iou_head = mask_iou_head
        self.box_head_dim = int(box_head_dim)
        self.box_coder = det_utils.BoxCoder(bbox_reg_weights)
        self.sampler = RoISampler(fg_iou_thresh, bg_iou_thresh, batch_size_per_image, positive_fraction,
                                  self.box_coder)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.classifier_losses_only = False

    @classmethod
    def from_config(cls, cfg: dict[str, Any], in_channels: int, num_classes: int) -> StandardRoIHeads:
        """Build from a resolved ``model:`` config for ``num_classes`` foreground classes on ``in_channels``-wide
        FPN maps (modules built in torchvision's order, so a seed gives torchvision's initial weights)."""
        box_roi_pool, mask_roi_pool = roi_pools(cfg)
        box_head, box_predictor = box_stage(cfg, in_channels, num_classes, num_classes)
        mask_head, mask_predictor = mask_branch(cfg, in_channels, num_classes)
        return cls(box_roi_pool, box_head, box_predictor, mask_roi_pool, mask_head, mask_predictor,
                   mask_iou_head=build_mask_iou_head(cfg, in_channels, num_classes), **head_settings(cfg))

    # ------------------------------------------------------------------------------------------ the interface

    def classifiers(self) -> list[nn.Module]:
        """The box classifiers, one per stage."""
        return [self.box_predictor.classifier]

    def set_classifiers(self, classifiers: Sequence[nn.Module]) -> None:
        """Replace the box classifiers (one per stage, in ``classifiers()`` order)."""
        if len(classifiers) != 1:
            raise ValueError(f"{type(self).__name__} has one box classifier, got {len(classifiers)}")
        self.box_predictor.classifier = classifiers[0]

    def classifier_in_features(self) -> list[int]:
        """The feature width each stage's classifier takes (what a fresh classifier is built for)."""
        return [self.box_head_dim]

    def has_mask(self) -> bool:
        """Whether the heads predict masks."""
        return self.mask_roi_pool is not None and self.mask_head is not None and self.mask_predictor is not None

    def forward(
        self, features: Features, proposals: list[torch.Tensor], image_shapes: ImageShapes,
        targets: Targets | None = None,
    ) -> tuple[Targets, dict[str, torch.Tensor]]:
        """Training: ([], losses). Inference: per-image detections dict(boxes, labels, scores, masks) with masks
        [N, 1, M, M] box-relative probabilities of each detection's class, plus ``mask_scores`` (class score x
        predicted mask IoU) with the MaskIoU head, and no losses."""
        if self.training:
            return [], self.losses(features, proposals, image_shapes, targets)
        result = self.detect_boxes(features, proposals, image_shapes)
        if self.has_mask():
            boxes, labels = [r["boxes"] for r in result], [r["labels"] for r in result]
            pooled = self.mask_roi_pool(features, boxes, image_shapes)
            mask_probs = self.pooled_class_mask_probs(pooled, labels)
            for mask_prob, r in zip(mask_probs, result):
                r["masks"] = mask_prob
            if self.mask_iou_head is not None:
                ious = self.mask_iou_head(pooled, torch.cat(mask_probs), torch.cat(labels))
                for iou, r in zip(ious.split([len(b) for b in boxes]), result):
                    r["mask_scores"] = mask_scores(r["scores"], iou)
        return result, {}

    def losses(self, features: Features, proposals: list[torch.Tensor], image_shapes: ImageShapes,
               targets: Targets | None) -> dict[str, torch.Tensor]:
        """loss_classifier, loss_box_reg and loss_mask (and loss_mask_iou) on sampled RoIs (only loss_classifier
        with ``classifier_losses_only``: decoupled retraining needs no box regression, masks or mask targets)."""
        self.check_targets(targets)
        proposals, matched_idxs, labels, regression_targets = self.sampler(proposals, targets)
        classifier_features, regressor_features = self.box_stage_features(self.box_head, features, proposals,
                                                                          image_shapes)
        all_labels = torch.cat(labels, dim=0)
        classifier = self.box_predictor.classifier
        class_logits = classifier(classifier_features)
        if self.classifier_losses_only:
            return {"loss_classifier": classifier.loss(class_logits, all_labels)}
        box_regression = self.box_predictor.box_regressor(regressor_features)
        losses = {
            "loss_classifier": classifier.loss(class_logits, all_labels),
            "loss_box_reg": box_regression_loss(box_regression, all_labels, torch.cat(regression_targets, 0)),
        }
        if self.has_mask():
            losses.update(self.mask_losses(features, (proposals, matched_idxs, labels), image_shapes, targets))
        return losses

    def detect_boxes(self, features: Features, proposals: list[torch.Tensor], image_shapes: ImageShapes) -> Targets:
        """Inference without the mask branch: per image, the detections dict(boxes, labels, scores)."""
        classifier_features, regressor_features = self.box_stage_features(self.box_head, features, proposals,
                                                                          image_shapes)
        classifier = self.box_predictor.classifier
        scores = classifier.scores(classifier(classifier_features))
        box_regression = self.box_predictor.box_regressor(regressor_features)
        return self.postprocess_regression(scores, box_regression, proposals, image_shapes)

    def class_mask_probs(self, features: Features, boxes: list[torch.Tensor], labels: list[torch.Tensor],
                         image_shapes: ImageShapes) -> list[torch.Tensor]:
        """Per image, the M x M mask probabilities [N, 1, M, M] of each box for its own label (box-relative, not
        yet pasted into the image): what multi-scale mask voting averages."""
        return self.pooled_class_mask_probs(self.mask_roi_pool(features, boxes, image_shapes), labels)

    def pooled_class_mask_probs(self, pooled: torch.Tensor, labels: list[torch.Tensor]) -> list[torch.Tensor]:
        """``class_mask_probs`` from the RoIs' pooled mask features [N, C, S, S] (all images, in order)."""
        mask_features = self.mask_head(pooled.contiguous(memory_format=torch.channels_last))
        return predicted_class_mask_probs(self.mask_predictor, mask_features, labels)

    # ------------------------------------------------------------------------------------------------ helpers

    def box_stage_features(self, box_head: nn.Module, features: Features, boxes: list[torch.Tensor],
                           image_shapes: ImageShapes) -> tuple[torch.Tensor, torch.Tensor]:
        """One box stage's head on ``boxes``: (classifier features, regressor features), the same tensor for the
        fc head, the fc and conv heads' for the double head."""
        return split_box_features(box_head(self.box_roi_pool(features, boxes, image_shapes)))

    def check_targets(self, targets: Targets | None) -> None:
        """Every image needs boxes and labels, and masks unless only the classifier trains."""
        needed = ("boxes", "labels") if self.classifier_losses_only or not self.has_mask() else (
            "boxes", "labels", "masks")
        if targets is None or not all(all(key in t for key in needed) for t in targets):
            raise ValueError(f"training the RoI heads needs targets with {list(needed)} for every image")
        for target in targets:
            if not target["boxes"].is_floating_point():
                raise TypeError(f"target boxes must be floating point, got {target['boxes'].dtype}")
            if target["labels"].dtype != torch.int64:
                raise TypeError(f"target labels must be int64, got {target['labels'].dtype}")

    def postprocess_detections(self, scores: torch.Tensor, pred_boxes: torch.Tensor, proposals: list[torch.Tensor],
                                      image_shapes: ImageShapes) -> Targets:
        """torchvision's postprocess_detections from class probabilities [R, C+1] and decoded per-class boxes
        [R, C+1, 4]: per image, one candidate per (RoI, foreground class) above ``score_thresh``, small boxes
        removed, per-class NMS, the ``detections_per_img`` best.

        The NMS is exact in float64 and runs on the best candidates first (``models/postprocess.py``): the same
        detections as NMS over every candidate, ties broken by candidate order, at any class count.
        """
        per_image = zip(scores.split([len(p) for p in proposals], 0),
                        pred_boxes.split([len(p) for p in proposals], 0), image_shapes)
        return [self.top_image_detections(*image_candidates(class_scores, class_boxes, image_shape,
                                                            self.score_thresh))
                for class_scores, class_boxes, image_shape in per_image]

    def postprocess_regression(self, scores: torch.Tensor, box_regression: torch.Tensor, proposals: list[torch.Tensor],
                                      image_shapes: ImageShapes) -> Targets:
        """``postprocess_detections`` from the box regression [R, (C+1) * 4] instead of decoded boxes: only the
        (RoI, class) pairs above the score threshold are decoded; the same detections."""
        per_image = zip(scores.split([len(p) for p in proposals], 0),
                        box_regression.split([len(p) for p in proposals], 0), proposals, image_shapes)
        return [self.top_image_detections(*regression_candidates(class_scores, image_regression, image_proposals,
                                                                 self.box_coder, image_shape, self.score_thresh))
                for class_scores, image_regression, image_proposals, image_shape in per_image]

    def top_image_detections(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> dict:
        """One image's detections dict(boxes, labels, scores) from its candidates: per-class NMS, the
        ``detections_per_img`` best."""
        keep = top_detections(boxes, scores, labels, self.nms_thresh, self.detections_per_img)
        return {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]}

    def mask_losses(self, features: Features, sample: StageSample, image_shapes: ImageShapes, targets: Targets,
                    stage: int = 0, last_stage: bool = True) -> dict[str, torch.Tensor]:
        """torchvision's mask loss (``loss_mask``) on the positives of a box stage's ``sample``, the mask branch of
        ``stage`` predicting; on the last stage, with the MaskIoU head, its loss (``loss_mask_iou``)."""
        sampled, matched_idxs, labels = sample
        positive = [torch.where(image_labels > 0)[0] for image_labels in labels]
        mask_proposals = [p[pos] for p, pos in zip(sampled, positive)]
        pos_matched_idxs = [m[pos] for m, pos in zip(matched_idxs, positive)]
        pooled = self.mask_roi_pool(features, mask_proposals, image_shapes)
        mask_logits = self.stage_mask_logits(pooled, stage)
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        losses = {"loss_mask": maskrcnn_loss(mask_logits, mask_proposals, gt_masks, gt_labels, pos_matched_idxs)}
        if self.mask_iou_head is not None and last_stage:
            losses["loss_mask_iou"] = self.mask_iou_loss(pooled, mask_logits, mask_proposals, gt_masks, gt_labels,
                                                         pos_matched_idxs)
        return losses

    def stage_mask_logits(self, pooled: torch.Tensor, stage: int) -> torch.Tensor:
        """Mask logits [R, C+1, M, M] of stage ``stage``'s mask branch (the one mask head here) on pooled RoIs."""
        return self.mask_predictor(self.mask_head(pooled))

    def mask_iou_loss(self, pooled: torch.Tensor, mask_logits: torch.Tensor, mask_proposals: list[torch.Tensor],
                      gt_masks: list[torch.Tensor], gt_labels: list[torch.Tensor],
                      matched_idxs: list[torch.Tensor]) -> torch.Tensor:
        """The MaskIoU head's L2 loss on positive RoIs: target = IoU of the binarised predicted mask of the RoI's
        class with its ground-truth mask cropped to the RoI, both at mask resolution."""
        labels = torch.cat([image_labels[idxs] for image_labels, idxs in zip(gt_labels, matched_idxs)])
        size = mask_logits.shape[-1]
        with torch.no_grad():
            gt_in_rois = [project_masks_on_boxes(masks, boxes, idxs, size)
                          for masks, boxes, idxs in zip(gt_masks, mask_proposals, matched_idxs)]
            gt_in_rois = torch.cat(gt_in_rois) if gt_in_rois else mask_logits.new_zeros((0, size, size))
        mask_probs = mask_logits[torch.arange(len(labels), device=labels.device), labels].sigmoid()
        with torch.no_grad():
            targets = mask_iou_targets(mask_probs, gt_in_rois)
        predicted = self.mask_iou_head(pooled, mask_probs[:, None], labels)
        return mask_iou_loss(predicted, targets, labels)


def drop_ignored(
    proposals: torch.Tensor, target: dict[str, torch.Tensor], iou_threshold: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Proposals and target of one image without its ignore regions (``target["iscrowd"]``, bool [N]).

    A proposal goes when its IoU with an ignore region is >= ``iou_threshold`` and its IoU with every real instance
    is below it (it would have been a foreground of the region, had the region been labelled). The target keeps
    only its real instances (boxes, labels, masks and any other per-instance tensor).
    """
    crowd = target.get("iscrowd")
    if crowd is None:
        return proposals, target
    crowd = crowd.to(torch.bool)
    real = {key: value[~crowd] if key in PER_INSTANCE_TARGET_KEYS else value
            for key, value in target.items() if key != "iscrowd"}
    if not bool(crowd.any()) or len(proposals) == 0:
        return proposals, real
    near_region = box_ops.box_iou(proposals, target["boxes"][crowd]).amax(dim=1) >= iou_threshold
    if len(real["boxes"]):
        near_region &= box_ops.box_iou(proposals, real["boxes"]).amax(dim=1) < iou_threshold
    return proposals[~near_region], real


def predicted_class_mask_probs(
    predictor: MaskRCNNPredictor, mask_features: torch.Tensor, labels: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Mask probabilities [R, 1, M, M] per image for each detection's own class only.

    Same values as torchvision's ``maskrcnn_inference(predictor(x), labels)``, which computes and applies a
    sigmoid to the logits of all C + 1 classes and then keeps one.
    """
    # channels-last (as the caller passes it): CPU convolutions, ConvTranspose2d most of all, and the per-RoI
    # contraction below run faster in that layout.
    upsampled = predictor.relu(predictor.conv5_mask(mask_features.contiguous(memory_format=torch.channels_last)))
    all_labels = torch.cat(labels)
    weight = predictor.mask_fcn_logits.weight[all_labels, :, 0, 0]  # [R, channels]
    bias = predictor.mask_fcn_logits.bias[all_labels]
    logits = torch.einsum("rchw,rc->rhw", upsampled, weight) + bias[:, None, None]
    return logits.sigmoid()[:, None].split([len(image_labels) for image_labels in labels], dim=0)


def box_regression_loss(box_regression: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """torchvision's Fast R-CNN box loss: smooth-L1 on the positive RoIs' own class, / number of RoIs. Class-agnostic
    deltas ([R, 4], a cascade's) regress every positive RoI with their one box."""
    positive = torch.where(labels > 0)[0]
    deltas = box_regression.reshape(box_regression.shape[0], -1, 4)
    columns = labels[positive] if deltas.shape[1] > 1 else torch.zeros_like(positive)
    loss = F.smooth_l1_loss(deltas[positive, columns], targets[positive], beta=1 / 9, reduction="sum")
    return loss / labels.numel()


def build_roi_heads(cfg: dict[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    """The RoI heads ``cfg["roi_heads"]`` names (``models/registry.py``), built from the resolved model config."""
    from longtail_seg.models.registry import roi_heads_class

    return roi_heads_class(cfg["roi_heads"]).from_config(cfg, in_channels, num_classes)
