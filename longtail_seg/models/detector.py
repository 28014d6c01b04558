"""Mask R-CNN with FPN from torchvision parts, configured by the plain ``model:`` config dict.

The box classifier is a separate module (``models/classifiers.py``) that the RoI heads call for the
classification loss and the detection scores, so the report's later steps (balanced group softmax,
the double classifier) replace one module. ``load_detector`` rebuilds a model from a checkpoint file
alone (weights + model config + dataset category ids).
"""

from __future__ import annotations

import copy
import os
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

from longtail_seg.config_keys import reject_unknown_keys
from longtail_seg.io_utils import atomic_path
from longtail_seg.models.backbones import build_backbone, num_feature_levels
from longtail_seg.models.classifiers import BoxPredictor, BoxRegressor, build_classifier

# Defaults = the embedded demo model (measured ~20 img/s on 2 CPU cores, see shared/demo_targets.md).
# A real-LVIS config overrides backbone, fpn_channels, RPN/RoI sizes and the internal resize.
DEFAULT_MODEL_CFG: dict[str, Any] = {
    "backbone": "tiny",  # tiny | resnet18 | resnet50 | resnet101 | resnext101_32x8d
    "pretrained_backbone": False,  # true: ImageNet weights via torchvision's weights API (downloads once)
    "trainable_backbone_layers": None,  # ResNets: 0-5; null = 3 if pretrained else 5
    "norm": None,  # bn | frozen_bn; null = frozen_bn if pretrained else bn (trainable)
    "tiny_stem_channels": 24,
    "tiny_stage_channels": [48, 96, 192],
    "fpn_channels": 64,
    "anchor_sizes": None,  # one per FPN level; null = [16,32,64,128] (tiny) / [32,...,512] (ResNets)
    "anchor_aspect_ratios": [0.5, 1.0, 2.0],
    "rpn_pre_nms_top_n_train": 600,  # per FPN level, as in torchvision
    "rpn_post_nms_top_n_train": 300,  # per image
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 150,
    "rpn_nms_thresh": 0.7,
    "rpn_batch_size_per_image": 256,
    "box_batch_size_per_image": 32,  # sampled RoIs per image for the box/mask losses
    "box_positive_fraction": 0.25,
    "box_head_dim": 256,  # TwoMLPHead representation size
    "roi_feature_levels": ["0"],  # FPN maps RoIAlign pools from; ["0","1","2","3"] = torchvision default
    "roi_sampling_ratio": 1,  # RoIAlign samples per bin (torchvision default 2)
    "mask_head_channels": 64,
    "mask_head_layers": 2,  # torchvision default: 4 x 256
    "classifier": {"type": "softmax"},  # see models/classifiers.py registry
    "internal_resize": False,  # false: the model never resizes (our data transforms do)
    "min_size": 800,  # used only with internal_resize: true
    "max_size": 1333,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "box_detections_per_img": 300,  # LVIS evaluates up to 300 detections per image
    "box_score_thresh": 0.0001,  # LVIS-style eval keeps low-score detections
    "box_nms_thresh": 0.5,
}


def resolve_model_cfg(model_cfg: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults merged with ``model_cfg``; unknown keys raise (so a typo fails loudly)."""
    model_cfg = dict(model_cfg or {})
    reject_unknown_keys("model config", model_cfg, DEFAULT_MODEL_CFG)
    cfg = copy.deepcopy(DEFAULT_MODEL_CFG)
    cfg.update(copy.deepcopy(model_cfg))
    if cfg["anchor_sizes"] is None:
        levels = num_feature_levels(cfg["backbone"], tuple(cfg["tiny_stage_channels"]))
        base = 16 if cfg["backbone"] == "tiny" else 32
        cfg["anchor_sizes"] = [base * 2**level for level in range(levels)]
    return cfg


class NoResizeTransform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform that normalises and batches but never resizes.

    Our data transforms already resize (multi-scale in training, fixed at test); a second resize
    inside the model would waste time and change the scale the config asks for. Outputs are in the
    coordinates of the image given to the model.
    """

    def resize(self, image: torch.Tensor, target: Optional[dict[str, torch.Tensor]] = None):  # noqa: D102
        return image, target


class ClassifierRoIHeads(RoIHeads):
    """torchvision RoIHeads whose box classification goes through ``box_predictor.classifier``.

    Differences from torchvision: the classification loss is ``classifier.loss(logits, labels)`` and
    detection scores are ``classifier.scores(logits)`` (instead of cross-entropy / softmax on a
    tensor). Keypoints are not supported. Everything else (sampling, box coding, mask head and loss)
    is torchvision's.
    """

    # Classifier retraining (engine/retrain.py) sets this: training computes only the classification loss
    # (no box regression or mask branch), and targets need no masks.
    classifier_only: bool = False

    @property
    def classifier(self) -> nn.Module:
        """The replaceable box classifier."""
        return self.box_predictor.classifier

    def check_targets(self, targets: Optional[list[dict[str, torch.Tensor]]]) -> None:
        """torchvision's target check; masks are not required in ``classifier_only`` mode."""
        if not self.classifier_only:
            super().check_targets(targets)
            return
        if targets is None or not all("boxes" in t and "labels" in t for t in targets):
            raise ValueError("classifier retraining needs targets with 'boxes' and 'labels' for every image")

    def select_training_samples(self, proposals, targets):  # noqa: D102 - torchvision's, plus ignore regions
        """torchvision's sampling after removing ignore regions: a target's ``iscrowd`` instances are dropped from
        the ground truth, and so are the proposals that would have matched them (box IoU >= the foreground
        threshold) without matching a real instance, so they are sampled as neither object nor background."""
        if targets is not None and any("iscrowd" in t for t in targets):
            pairs = [drop_ignored(p, t, self.proposal_matcher.high_threshold) for p, t in zip(proposals, targets)]
            proposals, targets = [p for p, _ in pairs], [t for _, t in pairs]
        return super().select_training_samples(proposals, targets)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: Optional[list[dict[str, torch.Tensor]]] = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Box (+ mask) losses in training; per-image detections dict(boxes, labels, scores, masks) in eval."""
        if not self.training:
            result = self.detect_boxes(features, proposals, image_shapes)
            if self.has_mask():
                boxes, labels = [r["boxes"] for r in result], [r["labels"] for r in result]
                for mask_prob, r in zip(self.class_mask_probs(features, boxes, labels, image_shapes), result):
                    r["masks"] = mask_prob
            return result, {}
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        all_labels = torch.cat(labels, dim=0)
        if self.classifier_only:
            return [], {"loss_classifier": self.classifier.loss(self.classifier(box_features), all_labels)}
        class_logits, box_regression = self.box_predictor(box_features)
        losses = {
            "loss_classifier": self.classifier.loss(class_logits, all_labels),
            "loss_box_reg": box_regression_loss(box_regression, all_labels, torch.cat(regression_targets, 0)),
        }
        if self.has_mask():
            losses["loss_mask"] = self._mask_loss(features, proposals, image_shapes, targets, labels, matched_idxs)
        return [], losses

    def detect_boxes(
        self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        """Inference without the mask branch: per image, the detections dict(boxes, labels, scores)."""
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        scores = self.classifier.scores(class_logits)
        boxes, det_scores, det_labels = self.postprocess_scores(scores, box_regression, proposals, image_shapes)
        return [{"boxes": b, "labels": l, "scores": s} for b, l, s in zip(boxes, det_labels, det_scores)]

    def class_mask_probs(
        self,
        features: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        labels: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[torch.Tensor]:
        """Per image, the M x M mask probabilities [N, 1, M, M] of each box for its own label (box-relative, not
        yet pasted into the image): what multi-scale mask voting averages."""
        pooled = self.mask_roi_pool(features, boxes, image_shapes)
        mask_features = self.mask_head(pooled.contiguous(memory_format=torch.channels_last))
        return predicted_class_mask_probs(self.mask_predictor, mask_features, labels)

    def _mask_loss(self, features, proposals, image_shapes, targets, labels, matched_idxs) -> torch.Tensor:
        """torchvision's mask loss on the positive sampled RoIs."""
        positive = [torch.where(image_labels > 0)[0] for image_labels in labels]
        mask_proposals = [p[pos] for p, pos in zip(proposals, positive)]
        pos_matched_idxs = [m[pos] for m, pos in zip(matched_idxs, positive)]
        mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes)))
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        return maskrcnn_loss(mask_logits, mask_proposals, gt_masks, gt_labels, pos_matched_idxs)

    def postprocess_scores(
        self,
        scores: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """torchvision's postprocess_detections, starting from probabilities instead of logits."""
        num_classes = scores.shape[-1]
        boxes_per_image = [len(p) for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals)
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, image_scores, image_shape in zip(
            pred_boxes.split(boxes_per_image, 0), scores.split(boxes_per_image, 0), image_shapes
        ):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(image_scores)
            # drop the background column, then one candidate per (RoI, class)
            boxes = boxes[:, 1:].reshape(-1, 4)
            image_scores = image_scores[:, 1:].reshape(-1)
            labels = labels[:, 1:].reshape(-1)
            keep = torch.where(image_scores > self.score_thresh)[0]
            boxes, image_scores, labels = boxes[keep], image_scores[keep], labels[keep]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, image_scores, labels = boxes[keep], image_scores[keep], labels[keep]
            keep = box_ops.batched_nms(boxes, image_scores, labels, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(image_scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels


# Target entries with one row per instance (the rest, e.g. image_id or mosaic_tiles, describe the image).
PER_INSTANCE_TARGET_KEYS = ("boxes", "labels", "masks", "area", "scores")


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
    sigmoid to the logits of all C + 1 classes and then keeps one: with 193 classes and 300 detections per
    image that was over half of the demo's inference time.
    """
    # channels-last (as the caller passes it): CPU convolutions, ConvTranspose2d most of all, and the per-RoI
    # contraction below run 1.3-4x faster in that layout.
    upsampled = predictor.relu(predictor.conv5_mask(mask_features.contiguous(memory_format=torch.channels_last)))
    all_labels = torch.cat(labels)
    weight = predictor.mask_fcn_logits.weight[all_labels, :, 0, 0]  # [R, channels]
    bias = predictor.mask_fcn_logits.bias[all_labels]
    logits = torch.einsum("rchw,rc->rhw", upsampled, weight) + bias[:, None, None]
    return logits.sigmoid()[:, None].split([len(image_labels) for image_labels in labels], dim=0)


def box_regression_loss(box_regression: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """torchvision's Fast R-CNN box loss: smooth-L1 on the positive RoIs' own class, / number of RoIs."""
    positive = torch.where(labels > 0)[0]
    deltas = box_regression.reshape(box_regression.shape[0], -1, 4)
    loss = F.smooth_l1_loss(deltas[positive, labels[positive]], targets[positive], beta=1 / 9, reduction="sum")
    return loss / labels.numel()


def build_detector(model_cfg: dict[str, Any] | None, num_classes: int) -> MaskRCNN:
    """Mask R-CNN + FPN for ``num_classes`` foreground classes (C; the heads add background)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (foreground classes), got {num_classes}")
    cfg = resolve_model_cfg(model_cfg)
    backbone = build_backbone(
        cfg["backbone"],
        fpn_channels=cfg["fpn_channels"],
        pretrained=cfg["pretrained_backbone"],
        trainable_layers=cfg["trainable_backbone_layers"],
        norm=cfg["norm"],
        tiny_stem_channels=cfg["tiny_stem_channels"],
        tiny_stage_channels=tuple(cfg["tiny_stage_channels"]),
    )
    levels = num_feature_levels(cfg["backbone"], tuple(cfg["tiny_stage_channels"]))
    if len(cfg["anchor_sizes"]) != levels:
        raise ValueError(
            f"model.anchor_sizes has {len(cfg['anchor_sizes'])} entries but backbone {cfg['backbone']!r} "
            f"has {levels} FPN levels; give one size per level (fine to coarse) or null"
        )
    anchor_generator = AnchorGenerator(
        sizes=tuple((int(s),) for s in cfg["anchor_sizes"]),
        aspect_ratios=(tuple(float(r) for r in cfg["anchor_aspect_ratios"]),) * levels,
    )
    box_roi_pool = MultiScaleRoIAlign(list(cfg["roi_feature_levels"]), 7, cfg["roi_sampling_ratio"])
    mask_roi_pool = MultiScaleRoIAlign(list(cfg["roi_feature_levels"]), 14, cfg["roi_sampling_ratio"])
    channels = backbone.out_channels
    box_head = TwoMLPHead(channels * 7 * 7, cfg["box_head_dim"])
    box_predictor = BoxPredictor(
        build_classifier(cfg["classifier"], cfg["box_head_dim"], num_classes),
        BoxRegressor(cfg["box_head_dim"], num_classes),
    )
    mask_layers = [cfg["mask_head_channels"]] * cfg["mask_head_layers"]
    mask_head = MaskRCNNHeads(channels, mask_layers, 1)
    mask_predictor = MaskRCNNPredictor(mask_layers[-1], cfg["mask_head_channels"], num_classes + 1)
    model = MaskRCNN(
        backbone,
        num_classes=None,
        min_size=cfg["min_size"],
        max_size=cfg["max_size"],
        image_mean=cfg["image_mean"],
        image_std=cfg["image_std"],
        rpn_anchor_generator=anchor_generator,
        rpn_pre_nms_top_n_train=cfg["rpn_pre_nms_top_n_train"],
        rpn_pre_nms_top_n_test=cfg["rpn_pre_nms_top_n_test"],
        rpn_post_nms_top_n_train=cfg["rpn_post_nms_top_n_train"],
        rpn_post_nms_top_n_test=cfg["rpn_post_nms_top_n_test"],
        rpn_nms_thresh=cfg["rpn_nms_thresh"],
        rpn_batch_size_per_image=cfg["rpn_batch_size_per_image"],
        box_roi_pool=box_roi_pool,
        box_head=box_head,
        box_predictor=box_predictor,
        box_score_thresh=cfg["box_score_thresh"],
        box_nms_thresh=cfg["box_nms_thresh"],
        box_detections_per_img=cfg["box_detections_per_img"],
        box_batch_size_per_image=cfg["box_batch_size_per_image"],
        box_positive_fraction=cfg["box_positive_fraction"],
        mask_roi_pool=mask_roi_pool,
        mask_head=mask_head,
        mask_predictor=mask_predictor,
    )
    model.roi_heads = _with_classifier_roi_heads(model.roi_heads)
    if not cfg["internal_resize"]:
        model.transform = NoResizeTransform(cfg["min_size"], cfg["max_size"], cfg["image_mean"], cfg["image_std"])
    model.num_classes = num_classes
    model.model_cfg = cfg
    return model


def _with_classifier_roi_heads(roi_heads: RoIHeads) -> ClassifierRoIHeads:
    """Re-class torchvision's RoIHeads as ClassifierRoIHeads, keeping every submodule and setting."""
    new_heads = ClassifierRoIHeads.__new__(ClassifierRoIHeads)
    new_heads.__dict__.update(roi_heads.__dict__)
    return new_heads


def get_classifier(model: nn.Module) -> nn.Module:
    """The replaceable box classifier of a detector built here (unwraps DDP)."""
    return _unwrap(model).roi_heads.box_predictor.classifier


def set_classifier(model: nn.Module, classifier: nn.Module) -> None:
    """Swap the box classifier (e.g. for BGS or the double classifier); the loss/score path uses it."""
    _unwrap(model).roi_heads.box_predictor.classifier = classifier


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    model_cfg: dict[str, Any],
    category_ids: list[int],
    epoch: int | None = None,
    iteration: int | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a self-contained detector file atomically: weights, model config, category ids, progress.

    ``category_ids[label - 1]`` is the dataset category id predicted as ``label`` (1..C).
    """
    model = _unwrap(model)
    num_classes = getattr(model, "num_classes", len(category_ids))
    if len(category_ids) != num_classes:
        raise ValueError(f"{len(category_ids)} category ids for a model with {num_classes} classes")
    payload = {
        "model": model.state_dict(),
        "model_cfg": resolve_model_cfg(model_cfg),
        "num_classes": num_classes,
        "category_ids": [int(c) for c in category_ids],
        "epoch": epoch,
        "iteration": iteration,
        "extra": dict(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_detector(checkpoint_path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild a detector from a ``save_checkpoint`` file -> (model in eval mode, meta dict).

    ``meta`` holds model_cfg, num_classes, category_ids, epoch, iteration and extra.
    """
    if not os.path.exists(checkpoint_path):
        raise FileNotFoundError(f"detector checkpoint {checkpoint_path} does not exist; train the model first")
    payload = torch.load(checkpoint_path, map_location=map_location, weights_only=False)
    missing = {"model", "model_cfg", "category_ids"} - set(payload)
    if missing:
        raise ValueError(
            f"{checkpoint_path} is not a detector checkpoint (missing {sorted(missing)}); "
            "training-state files (checkpoints/last.pth) are not loadable here, use model_final.pth"
        )
    num_classes = payload.get("num_classes", len(payload["category_ids"]))
    # weights come from the file: never download ImageNet weights again for a trained model
    model = build_detector(dict(payload["model_cfg"], pretrained_backbone=False), num_classes)
    model.load_state_dict(payload["model"])
    model.to(map_location).eval()
    meta = {key: value for key, value in payload.items() if key != "model"}
    meta["num_classes"] = num_classes
    return model, meta
