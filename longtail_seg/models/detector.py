"""Mask R-CNN with FPN from torchvision parts and our RoI heads, configured by the plain ``model:`` config dict.

``build_detector`` assembles the backbone (``models/backbones.py``), torchvision's RPN and the RoI heads that
``model.roi_heads`` names (``models/roi_heads.py``), whose box classifiers (``models/classifiers.py``) are
separate modules, so the report's later steps (balanced group softmax, the double classifier) replace one
module. ``Detector.freeze_all_but_classifiers`` prepares decoupled retraining. ``load_detector`` rebuilds a model
from a checkpoint file alone (weights + model config + dataset category ids).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from longtail_seg.io_utils import CorruptFileError, atomic_path, load_torch_file
from longtail_seg.models.backbones import build_backbone_from_cfg, rebuild_cfg
from longtail_seg.models.config import resolve_model_cfg
from longtail_seg.models.roi_heads import build_roi_heads


class NoResizeTransform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform that normalises and batches but never resizes.

    Our data transforms already resize (multi-scale in training, fixed at test); a second resize
    inside the model would waste time and change the scale the config asks for. Outputs are in the
    coordinates of the image given to the model.
    """

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None):  # noqa: D102
        return image, target


class ProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN; with ``losses_enabled = False`` (a frozen RPN during classifier retraining) it returns the
    same training-size proposals without anchor matching or loss terms."""

    losses_enabled: bool = True

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Proposals per image and the RPN losses (none in eval mode or with ``losses_enabled = False``)."""
        if self.losses_enabled or not self.training:
            return super().forward(images, features, targets)
        feature_maps = list(features.values())
        objectness, deltas = self.head(feature_maps)
        anchors = self.anchor_generator(images, feature_maps)
        anchors_per_level = [level[0].numel() for level in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, anchors_per_level)
        return boxes, {}


class Detector(GeneralizedRCNN):
    """Mask R-CNN: ``transform`` -> ``backbone`` (+ FPN) -> ``rpn`` -> ``roi_heads``, plus what the pipeline needs
    around it: the number of classes, the resolved model config, frozen-representation retraining and boxes
    with their features for test-time augmentation."""

    def __init__(
        self,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        roi_heads: nn.Module,
        transform: GeneralizedRCNNTransform,
        num_classes: int,
        model_cfg: dict[str, Any],
    ) -> None:
        super().__init__(backbone, rpn, roi_heads, transform)
        self.num_classes = num_classes
        self.model_cfg = model_cfg
        self.representation_frozen = False

    def freeze_all_but_classifiers(self) -> None:
        """Decoupled retraining: only ``roi_heads.classifiers()`` learn. Every other parameter stops requiring
        gradients, every normalisation layer keeps its stored statistics even under ``train()`` (so the features
        equal stage 1's inference features), the RPN proposes without losses and the heads compute the
        classification loss alone."""
        classifier_params = {id(p) for c in self.roi_heads.classifiers() for p in c.parameters()}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) in classifier_params)
        self.representation_frozen = True
        self.roi_heads.classifier_losses_only = True
        if isinstance(self.rpn, ProposalNetwork):
            self.rpn.losses_enabled = False
        self.train(self.training)

    def train(self, mode: bool = True) -> Detector:
        """``nn.Module.train``; with a frozen representation, normalisation layers outside the classifiers stay in
        eval mode."""
        super().train(mode)
        if self.representation_frozen:
            inside_classifiers = {id(m) for c in self.roi_heads.classifiers() for m in c.modules()}
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and id(module) not in inside_classifiers:
                    module.train(False)
        return self

    def representation_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict without the box classifiers' entries: what retraining must leave unchanged and what two
        classifiers must share to be combined."""
        classifier_keys = set()
        classifiers = {id(c) for c in self.roi_heads.classifiers()}
        for name, module in self.named_modules():
            if id(module) in classifiers:
                classifier_keys.update(f"{name}.{key}" for key in module.state_dict())
        return {key: value for key, value in self.state_dict().items() if key not in classifier_keys}

    def detect(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Inference without pasting: per image dict(boxes, labels, scores, masks) as ``forward`` gives in eval mode
        (boxes in the pixels of the given image), except that masks stay the heads' [N, 1, M, M] box-relative
        probabilities instead of being pasted into a full image each (``inference/mask_rle.py`` encodes them)."""
        if self.training:
            raise RuntimeError("Detector.detect is inference only: call model.eval() first")
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        image_list, _ = self.transform(images)
        features = self.backbone(image_list.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals, _ = self.rpn(image_list, features)
        detections, _ = self.roi_heads(features, proposals, image_list.image_sizes)
        masks = [detection.pop("masks", None) for detection in detections]
        detections = self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
        for detection, mask in zip(detections, masks):
            if mask is not None:
                detection["masks"] = mask
        return detections

    def boxes_and_features(
        self, images: list[torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[tuple[int, int]], list[dict[str, torch.Tensor]]]:
        """Inference without masks, keeping what a mask step needs: (backbone features, the batched input sizes,
        per-image detections dict(boxes, labels, scores) in the pixels of the given images)."""
        image_list, _ = self.transform(images)
        features = self.backbone(image_list.tensors)
        proposals, _ = self.rpn(image_list, features)
        detections = self.roi_heads.detect_boxes(features, proposals, image_list.image_sizes)
        return features, list(image_list.image_sizes), detections


def build_detector(model_cfg: dict[str, Any] | None, num_classes: int) -> Detector:
    """Mask R-CNN + FPN for ``num_classes`` foreground classes (C; the heads add background)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (foreground classes), got {num_classes}")
    cfg = resolve_model_cfg(model_cfg)
    backbone = build_backbone_from_cfg(cfg)
    # the heads before the RPN: torchvision's MaskRCNN builds them in this order, so a seed gives its weights
    roi_heads = build_roi_heads(cfg, backbone.out_channels, num_classes)
    rpn = build_rpn(cfg, backbone.out_channels)
    transform_class = GeneralizedRCNNTransform if cfg["internal_resize"] else NoResizeTransform
    transform = transform_class(cfg["min_size"], cfg["max_size"], cfg["image_mean"], cfg["image_std"])
    return Detector(backbone, rpn, roi_heads, transform, num_classes, cfg)


def build_rpn(cfg: dict[str, Any], in_channels: int) -> ProposalNetwork:
    """torchvision's RPN (with MaskRCNN's default IoU thresholds and sampling) for a resolved model config."""
    levels = len(cfg["anchor_sizes"])
    anchor_generator = AnchorGenerator(
        sizes=tuple((int(s),) for s in cfg["anchor_sizes"]),
        aspect_ratios=(tuple(float(r) for r in cfg["anchor_aspect_ratios"]),) * levels,
    )
    head = RPNHead(in_channels, anchor_generator.num_anchors_per_location()[0])
    return ProposalNetwork(
        anchor_generator,
        head,
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=cfg["rpn_batch_size_per_image"],
        positive_fraction=0.5,
        pre_nms_top_n={"training": cfg["rpn_pre_nms_top_n_train"], "testing": cfg["rpn_pre_nms_top_n_test"]},
        post_nms_top_n={"training": cfg["rpn_post_nms_top_n_train"], "testing": cfg["rpn_post_nms_top_n_test"]},
        nms_thresh=cfg["rpn_nms_thresh"],
        score_thresh=0.0,
    )


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


# What to do about an unreadable model_final.pth (the error names the file).
REWRITE_DETECTOR = ("delete it and rerun the job that writes it: `snakemake --cores all` rebuilds a missing "
                    "model_final.pth (rule train_representation, retrain_classifier or combine_classifiers), or rerun "
                    "workflow_scripts/train.py / retrain.py / combine_classifiers.py by hand")


def load_detector(checkpoint_path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild a detector from a ``save_checkpoint`` file -> (model in eval mode, meta dict).

    ``meta`` holds model_cfg, num_classes, category_ids, epoch, iteration and extra.
    """
    if not os.path.exists(checkpoint_path):
        raise FileNotFoundError(f"detector checkpoint {checkpoint_path} does not exist; train the model first")
    payload = load_torch_file(checkpoint_path, "detector checkpoint", REWRITE_DETECTOR, map_location=map_location)
    if not isinstance(payload, dict):
        raise CorruptFileError(f"{checkpoint_path} is not a detector checkpoint (it holds a "
                               f"{type(payload).__name__}, not a dict); use a model_final.pth written by training")
    missing = {"model", "model_cfg", "category_ids"} - set(payload)
    if missing:
        raise ValueError(
            f"{checkpoint_path} is not a detector checkpoint (missing {sorted(missing)}); "
            "training-state files (checkpoints/last.pth) are not loadable here, use model_final.pth"
        )
    num_classes = payload.get("num_classes", len(payload["category_ids"]))
    # weights come from the file: never download or read ImageNet weights again for a trained model, but keep the
    # frozen BatchNorm and frozen stages they gave it
    model = build_detector(rebuild_cfg(payload["model_cfg"]), num_classes)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise CorruptFileError(f"{checkpoint_path}: its weights do not fit the model its own model_cfg builds "
                               f"({' '.join(str(error).split())[:300]}); the file is corrupt or from another "
                               f"version of this code; {REWRITE_DETECTOR}") from error
    model.to(map_location).eval()
    meta = {key: value for key, value in payload.items() if key != "model"}
    meta["num_classes"] = num_classes
    return model, meta
