"""The swappable parts of the detector by name: box classifiers and RoI heads.

Each entry says where the implementation lives (``module:Class``, imported on first use) and which config keys it
takes, with their defaults. The registry is torch-free, so building the workflow's DAG checks every
``classifier`` and ``model.roi_heads`` in the config before any job runs, and the same table builds the modules:
adding a classifier is one new file with its class (``from_config(cfg, in_features, num_classes)`` plus the
``forward`` / ``loss`` / ``scores`` calls of ``models/classifiers.py``) and one entry in ``CLASSIFIERS`` below.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

REQUIRED = object()  # a key without a default


@dataclass(frozen=True)
class Component:
    """One registered implementation: its ``module:Class`` path, its config keys (key -> default or REQUIRED), the
    keys whose value is a list of nested classifier configs (the double classifier's branches) and, for RoI heads,
    the ``model`` key that holds their settings (``section``)."""

    target: str
    keys: Mapping[str, Any] = field(default_factory=dict)
    nested_classifiers: tuple[str, ...] = ()
    section: str | None = None

    def load(self) -> type:
        """Import and return the implementing class."""
        module_name, _, class_name = self.target.partition(":")
        return getattr(importlib.import_module(module_name), class_name)


CLASSIFIERS: dict[str, Component] = {
    "softmax": Component("longtail_seg.models.classifiers:SoftmaxClassifier", {"dropout": 0.0}),
    "bgs": Component(
        "longtail_seg.models.balanced_group_softmax:BalancedGroupSoftmaxClassifier",
        # class_groups: the group of each label 1..C; the workflow fills it from the dataset statistics
        {"class_groups": None, "others_sample_ratio": 8.0, "dropout": 0.0},
    ),
    "double": Component("longtail_seg.models.double_classifier:DoubleClassifier", {"branches": REQUIRED},
                        nested_classifiers=("branches",)),
    # long-tail losses (issue 15): seesaw (Wang et al. 2021), sigmoid / focal, eqlv2 (Tan et al. 2021), federated
    # (Zhou et al. 2021); federated's image_counts, like bgs's class_groups, come from the dataset statistics
    "seesaw": Component("longtail_seg.models.seesaw:SeesawClassifier",
                        {"p": 0.8, "q": 2.0, "temperature": 20.0, "eps": 0.01, "dropout": 0.0}),
    "sigmoid": Component("longtail_seg.models.sigmoid:SigmoidClassifier", {"focal_gamma": 0.0, "dropout": 0.0}),
    "eqlv2": Component("longtail_seg.models.eqlv2:EQLv2Classifier",
                       {"gamma": 12.0, "mu": 0.8, "alpha": 4.0, "dropout": 0.0}),
    "federated": Component("longtail_seg.models.federated:FederatedClassifier",
                           {"image_counts": None, "num_sampled_classes": 50, "frequency_power": 0.5, "dropout": 0.0}),
}

CASCADE_KEYS = {"iou_thresholds": [0.5, 0.6, 0.7], "stage_loss_weights": [1.0, 0.5, 0.25],
                "bbox_reg_weights": [[10.0, 10.0, 5.0, 5.0], [20.0, 20.0, 10.0, 10.0], [30.0, 30.0, 15.0, 15.0]]}

ROI_HEADS: dict[str, Component] = {
    "standard": Component("longtail_seg.models.roi_heads:StandardRoIHeads"),
    # Cascade R-CNN: one box stage per IoU threshold; its keys live under model.cascade (models/config.py checks them)
    "cascade": Component("longtail_seg.models.cascade_roi_heads:CascadeRoIHeads", CASCADE_KEYS, section="cascade"),
    # Hybrid Task Cascade: the cascade's stages (model.cascade) with a mask head per stage and mask information flow
    "htc": Component("longtail_seg.models.htc_roi_heads:HybridTaskCascadeRoIHeads", CASCADE_KEYS, section="cascade"),
}


def check_classifier_config(cfg: Any, path: str = "model.classifier") -> None:
    """Raise ``ValueError`` naming ``path`` when a classifier config has an unknown type, an unknown or missing key,
    or a malformed nested classifier (the double classifier's branches are checked the same way)."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{path}: expected a mapping such as {{type: softmax}}, got {cfg!r}")
    name = cfg.get("type", "softmax")
    if name not in CLASSIFIERS:
        raise ValueError(f"{path}.type: unknown classifier {name!r}; registered: {sorted(CLASSIFIERS)} "
                         "(longtail_seg/models/registry.py)")
    component = CLASSIFIERS[name]
    allowed = sorted({"type", *component.keys})
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:  # each named by its full path, e.g. models.bgs.classifier.dropuot
        raise ValueError(f"{', '.join(f'{path}.{key}' for key in unknown)}: unknown key(s) of the {name} classifier; "
                         f"allowed: {allowed} (longtail_seg/models/registry.py)")
    missing = sorted(k for k, default in component.keys.items() if default is REQUIRED and k not in cfg)
    if missing:
        raise ValueError(f"{path} ({name} classifier): missing key(s) {missing}")
    for key in component.nested_classifiers:
        branches = cfg[key]
        if not isinstance(branches, (list, tuple)) or len(branches) < 2:
            raise ValueError(f"{path}.{key}: a list of >= 2 classifier configs, e.g. [{{type: softmax}}, "
                             f"{{type: bgs}}]; got {branches!r}")
        for index, branch in enumerate(branches):
            check_classifier_config(branch, f"{path}.{key}[{index}]")


def classifier_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A checked classifier config with every default filled in (``type`` included)."""
    check_classifier_config(cfg)
    name = cfg.get("type", "softmax")
    component = CLASSIFIERS[name]
    settings = {"type": name, **{k: v for k, v in component.keys.items() if v is not REQUIRED}, **cfg}
    return settings


def classifier_class(name: str) -> type:
    """The class registered as classifier ``name``."""
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; registered: {sorted(CLASSIFIERS)}")
    return CLASSIFIERS[name].load()


def roi_heads_class(name: str) -> type:
    """The class registered as RoI heads ``name`` (``model.roi_heads``)."""
    if name not in ROI_HEADS:
        raise ValueError(f"model.roi_heads: unknown RoI heads {name!r}; registered: {sorted(ROI_HEADS)} "
                         "(longtail_seg/models/registry.py)")
    return ROI_HEADS[name].load()
