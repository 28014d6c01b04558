"""The ``model:`` config section: every key with its default (the one home of the defaults; config.yaml states the
same values) and the checks that run before a detector is built, torch-free so the workflow checks them too."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from longtail_seg.config_keys import (
    check_bool,
    check_int,
    check_number,
    is_int,
    is_number,
    reject_unknown_keys,
)
from longtail_seg.models.registry import ROI_HEADS, check_classifier_config

BACKBONES = ("tiny", "resnet18", "resnet50", "resnet101", "resnext50_32x4d", "resnext101_32x8d")
TIMM_BACKBONE = re.compile(r"^timm:[A-Za-z0-9_.]+$")  # any timm model with maps at strides 4-32 (checked at build)
NORMS = ("bn", "frozen_bn", None)
BOX_HEADS = ("fc", "double")  # Mask R-CNN's two fc layers | Double-Head R-CNN (models/double_head.py)

# Defaults = the embedded demo model (see shared/demo_targets.md). A real-LVIS config overrides backbone,
# fpn_channels, RPN/RoI sizes and the internal resize.
DEFAULT_MODEL_CFG: dict[str, Any] = {
    "backbone": "tiny",  # tiny | resnet18 | resnet50 | resnet101 | resnext50_32x4d | resnext101_32x8d | timm:<name>
    "pretrained_backbone": False,  # true: ImageNet weights via torchvision's / timm's loading path (downloads once)
    "backbone_weights": None,  # path of a local state dict of the backbone's ImageNet model (instead of a download)
    "dcn": {"stages": [], "modulated": False},  # deformable 3x3 convs in these stages (2-5); DCNv2 masks
    "rfp": {"steps": 1, "aspp_channels": 64, "aspp_dilations": [1, 3, 6]},  # recursive FPN (DetectoRS); 1 = off
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
    "roi_heads": "standard",  # RoI heads by name (models/registry.py ROI_HEADS)
    # roi_heads: cascade: one box stage per IoU threshold, its loss weight and box-coder weights (registry defaults)
    "cascade": copy.deepcopy(dict(ROI_HEADS["cascade"].keys)),
    "box_batch_size_per_image": 32,  # sampled RoIs per image for the box/mask losses
    "box_positive_fraction": 0.25,
    "box_head_dim": 256,  # TwoMLPHead representation size
    "box_head": "fc",  # fc | double: Double-Head R-CNN's fc head (classifier) + conv head (box regressor)
    "double_head": {"conv_blocks": 4, "conv_channels": 256},  # box_head: double: bottlenecks after the first block
    "mask_iou_head": False,  # Mask Scoring R-CNN's MaskIoU head: segm score = class score x predicted mask IoU
    "roi_feature_levels": ["0"],  # FPN maps RoIAlign pools from; ["0","1","2","3"] = torchvision default
    "roi_sampling_ratio": 1,  # RoIAlign samples per bin (torchvision default 2)
    "mask_head_channels": 64,
    "mask_head_layers": 2,  # torchvision default: 4 x 256
    "classifier": {"type": "softmax"},  # the box classifier by name (models/registry.py CLASSIFIERS)
    "internal_resize": False,  # false: the model never resizes (our data transforms do)
    "min_size": 800,  # used only with internal_resize: true
    "max_size": 1333,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "box_detections_per_img": 300,  # LVIS evaluates up to 300 detections per image
    "box_score_thresh": 0.0001,  # LVIS-style eval keeps low-score detections
    "box_nms_thresh": 0.5,
}


# The type and range of every scalar key: (check, bounds). Messages read "SECTION.KEY must be ..., got VALUE".
_POSITIVE_INT = (check_int, {"minimum": 1})
_FRACTION = (check_number, {"minimum": 0, "maximum": 1})
MODEL_VALUE_CHECKS: dict[str, tuple[Any, dict[str, Any]]] = {
    "pretrained_backbone": (check_bool, {}),
    "trainable_backbone_layers": (check_int, {"minimum": 0, "maximum": 5, "allow_none": True}),
    "tiny_stem_channels": _POSITIVE_INT,
    "fpn_channels": _POSITIVE_INT,
    "rpn_pre_nms_top_n_train": _POSITIVE_INT,
    "rpn_post_nms_top_n_train": _POSITIVE_INT,
    "rpn_pre_nms_top_n_test": _POSITIVE_INT,
    "rpn_post_nms_top_n_test": _POSITIVE_INT,
    "rpn_nms_thresh": _FRACTION,
    "rpn_batch_size_per_image": _POSITIVE_INT,
    "box_batch_size_per_image": _POSITIVE_INT,
    "box_positive_fraction": _FRACTION,
    "box_head_dim": _POSITIVE_INT,
    "roi_sampling_ratio": (check_int, {"minimum": 0}),
    "mask_head_channels": _POSITIVE_INT,
    "mask_head_layers": _POSITIVE_INT,
    "mask_iou_head": (check_bool, {}),
    "internal_resize": (check_bool, {}),
    "min_size": _POSITIVE_INT,
    "max_size": _POSITIVE_INT,
    "box_detections_per_img": _POSITIVE_INT,
    "box_score_thresh": _FRACTION,
    "box_nms_thresh": _FRACTION,
}
# The list keys: (what each item must be, its test, the list's length or None for any non-empty length).
MODEL_LIST_CHECKS: dict[str, tuple[str, Any, int | None]] = {
    "tiny_stage_channels": ("integers >= 1", lambda v: is_int(v) and v >= 1, None),
    "anchor_sizes": ("numbers > 0", lambda v: is_number(v) and v > 0, None),  # or null (by backbone)
    "anchor_aspect_ratios": ("numbers > 0", lambda v: is_number(v) and v > 0, None),
    "roi_feature_levels": ("FPN level names (strings such as \"0\")", lambda v: isinstance(v, str), None),
    "image_mean": ("numbers", is_number, 3),
    "image_std": ("numbers > 0", lambda v: is_number(v) and v > 0, 3),
}


# The nested keys: their own defaults in DEFAULT_MODEL_CFG, merged key by key with what a config gives.
NESTED_KEYS = ("dcn", "rfp", "double_head")


def num_feature_levels(backbone: str, tiny_stage_channels: tuple[int, ...] = (48, 96, 192)) -> int:
    """Number of FPN maps (including "pool") the backbone returns: one anchor size per level."""
    return (len(tiny_stage_channels) if backbone == "tiny" else 4) + 1


def resolve_model_cfg(model_cfg: Mapping[str, Any] | None, section: str = "model") -> dict[str, Any]:
    """Defaults merged with ``model_cfg``, checked; unknown keys and impossible values raise naming ``section``."""
    model_cfg = dict(model_cfg or {})
    reject_unknown_keys(section, model_cfg, DEFAULT_MODEL_CFG)
    cfg = copy.deepcopy(DEFAULT_MODEL_CFG)
    cfg.update(copy.deepcopy(model_cfg))
    for key in NESTED_KEYS:
        if not isinstance(cfg[key], Mapping):
            raise ValueError(f"{section}.{key} must be a mapping with keys {sorted(DEFAULT_MODEL_CFG[key])}, "
                             f"got {cfg[key]!r}")
        reject_unknown_keys(f"{section}.{key}", cfg[key], DEFAULT_MODEL_CFG[key])
        cfg[key] = {**copy.deepcopy(DEFAULT_MODEL_CFG[key]), **cfg[key]}
    cfg["cascade"] = merged_cascade_cfg(model_cfg.get("cascade", {}), section)
    check_model_cfg(cfg, section)
    if cfg["anchor_sizes"] is None:
        levels = num_feature_levels(cfg["backbone"], tuple(cfg["tiny_stage_channels"]))
        base = 16 if cfg["backbone"] == "tiny" else 32
        cfg["anchor_sizes"] = [base * 2**level for level in range(levels)]
    return cfg


def check_model_cfg(cfg: Mapping[str, Any], section: str = "model") -> None:
    """Cross-key checks of a complete model config: known backbone, norm and RoI heads, a valid classifier, and one
    anchor size per FPN level; every value of the right type and in range."""
    for key, (check, bounds) in MODEL_VALUE_CHECKS.items():
        check(f"{section}.{key}", cfg[key], **bounds)
    for key, (items, test, length) in MODEL_LIST_CHECKS.items():
        value = cfg[key]
        if key == "anchor_sizes" and value is None:
            continue
        if not isinstance(value, (list, tuple)) or not value or not all(test(v) for v in value) \
                or (length is not None and len(value) != length):
            size = f"{length}" if length is not None else "a non-empty list of"
            null = " or null" if key == "anchor_sizes" else ""
            raise ValueError(f"{section}.{key} must be {size} {items}{null}, got {value!r}")
    if cfg["backbone"] not in BACKBONES and not (isinstance(cfg["backbone"], str) and
                                                 TIMM_BACKBONE.match(cfg["backbone"])):
        raise ValueError(f"{section}.backbone: unknown backbone {cfg['backbone']!r}; choose one of {list(BACKBONES)} "
                         "or timm:<name> (a timm model, e.g. timm:legacy_senet154, timm:seresnext50_32x4d)")
    check_backbone_options(cfg, section)
    if cfg["norm"] not in NORMS:
        raise ValueError(f"{section}.norm must be one of {list(NORMS)}, got {cfg['norm']!r}")
    if cfg["box_head"] not in BOX_HEADS:
        raise ValueError(f"{section}.box_head must be one of {list(BOX_HEADS)}, got {cfg['box_head']!r}")
    check_int(f"{section}.double_head.conv_blocks", cfg["double_head"]["conv_blocks"], minimum=0)
    check_int(f"{section}.double_head.conv_channels", cfg["double_head"]["conv_channels"], minimum=4)
    if cfg["double_head"]["conv_channels"] % 4:
        raise ValueError(f"{section}.double_head.conv_channels must be a multiple of 4 (its bottlenecks are a "
                         f"quarter as wide), got {cfg['double_head']['conv_channels']}")
    if cfg["roi_heads"] not in ROI_HEADS:
        raise ValueError(f"{section}.roi_heads: unknown RoI heads {cfg['roi_heads']!r}; registered: "
                         f"{sorted(ROI_HEADS)} (longtail_seg/models/registry.py)")
    check_classifier_config(cfg["classifier"], f"{section}.classifier")
    check_cascade_cfg(cfg["cascade"], section)
    levels = num_feature_levels(cfg["backbone"], tuple(cfg["tiny_stage_channels"]))
    if cfg["anchor_sizes"] is not None and len(cfg["anchor_sizes"]) != levels:
        raise ValueError(
            f"{section}.anchor_sizes has {len(cfg['anchor_sizes'])} entries but backbone {cfg['backbone']!r} "
            f"has {levels} FPN levels; give one size per level (fine to coarse) or null"
        )
    check_roi_feature_levels(cfg["roi_feature_levels"], levels, section)


def check_backbone_options(cfg: Mapping[str, Any], section: str = "model") -> None:
    """``backbone_weights``, ``dcn`` and ``rfp``: types and ranges, stages the backbone has, one source of ImageNet
    weights."""
    weights = cfg["backbone_weights"]
    if weights is not None and (not isinstance(weights, str) or not weights):
        raise ValueError(f"{section}.backbone_weights must be a file path or null, got {weights!r}")
    if weights is not None and cfg["pretrained_backbone"]:
        raise ValueError(f"{section}.backbone_weights and {section}.pretrained_backbone: true both load ImageNet "
                         "weights; set pretrained_backbone: false to use the local file")
    last_stage = 1 + (len(cfg["tiny_stage_channels"]) if cfg["backbone"] == "tiny" else 4)
    stages = cfg["dcn"]["stages"]
    if not isinstance(stages, (list, tuple)) or not all(is_int(s) and 2 <= s <= last_stage for s in stages) \
            or len(set(stages)) != len(stages):
        raise ValueError(f"{section}.dcn.stages must be a list of distinct stages in [2, {last_stage}] (2 = stride 4; "
                         f"backbone {cfg['backbone']!r} has {last_stage - 1} stages), got {stages!r}")
    check_bool(f"{section}.dcn.modulated", cfg["dcn"]["modulated"])
    check_int(f"{section}.rfp.steps", cfg["rfp"]["steps"], minimum=1)
    check_int(f"{section}.rfp.aspp_channels", cfg["rfp"]["aspp_channels"], minimum=1)
    dilations = cfg["rfp"]["aspp_dilations"]
    if not isinstance(dilations, (list, tuple)) or not dilations or not all(is_int(d) and d >= 1 for d in dilations):
        raise ValueError(f"{section}.rfp.aspp_dilations must be a non-empty list of integers >= 1, got {dilations!r}")


def check_roi_feature_levels(roi_levels: Any, num_levels: int, section: str = "model") -> None:
    """RoIAlign pools from consecutive FPN maps, fine to coarse, named "0".."k-2" and "pool" (the last)."""
    names = [str(level) for level in range(num_levels - 1)] + ["pool"]
    positions = [names.index(name) if name in names else None for name in roi_levels or []]
    if not positions or None in positions or positions != list(range(positions[0], positions[0] + len(positions))):
        raise ValueError(f"{section}.roi_feature_levels must be consecutive FPN maps, fine to coarse, from "
                         f"{names}; got {roi_levels!r}")


def merged_cascade_cfg(given: Any, section: str = "model") -> dict[str, Any]:
    """``model.cascade`` with every default filled in (a config may give some of its keys); unknown keys raise
    naming their path."""
    if not isinstance(given, Mapping):
        raise ValueError(f"{section}.cascade must be a mapping such as {{iou_thresholds: [0.5, 0.6, 0.7]}}, "
                         f"got {given!r}")
    defaults = DEFAULT_MODEL_CFG["cascade"]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{', '.join(f'{section}.cascade.{key}' for key in unknown)}: unknown key(s) of the cascade "
                         f"RoI heads; allowed: {sorted(defaults)} (longtail_seg/models/registry.py ROI_HEADS)")
    return {**copy.deepcopy(defaults), **copy.deepcopy(dict(given))}


def check_cascade_cfg(cascade: Mapping[str, Any], section: str = "model") -> None:
    """One IoU threshold in (0, 1], one loss weight >= 0 and four box-coder weights > 0 per cascade stage."""
    stage_checks = {
        "iou_thresholds": ("numbers in (0, 1]", lambda v: is_number(v) and 0 < v <= 1),
        "stage_loss_weights": ("numbers >= 0", lambda v: is_number(v) and v >= 0),
        "bbox_reg_weights": ("lists of 4 numbers > 0 (x, y, w, h)", lambda v: isinstance(v, (list, tuple))
                             and len(v) == 4 and all(is_number(w) and w > 0 for w in v)),
    }
    for key, (items, test) in stage_checks.items():
        value = cascade[key]
        if not isinstance(value, (list, tuple)) or not value or not all(test(v) for v in value):
            raise ValueError(f"{section}.cascade.{key} must be a non-empty list of {items}, one per stage; "
                             f"got {value!r}")
    stages = len(cascade["iou_thresholds"])
    for key in ("stage_loss_weights", "bbox_reg_weights"):
        if len(cascade[key]) != stages:
            raise ValueError(f"{section}.cascade.{key} has {len(cascade[key])} entries but iou_thresholds has "
                             f"{stages} stages; give one per stage")
