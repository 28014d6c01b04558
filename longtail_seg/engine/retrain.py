"""Decoupled classifier retraining (cRT): a fresh box classifier on a frozen representation.

Stage 2 of the report: load the representation-learning detector, replace its box classifier by a freshly
initialised one (softmax or balanced group softmax), freeze everything else and train only the classifier with
another sampler (class-aware or repeat factor). The loop is ``engine.train.train`` (checkpoints, automatic
resume, metrics.csv, NaN check, DDP); only the model is prepared differently:

* every parameter outside the classifier has ``requires_grad=False`` (the optimizer skips them);
* every BatchNorm2d keeps normalising with its stored statistics even under ``model.train()``
  (``FrozenStatsBatchNorm2d``: the state-dict layout stays that of BatchNorm2d, so model_final.pth loads with
  ``load_detector`` and the features equal stage 1's inference features bit for bit);
* the forward pass computes only what the classification loss needs: the RPN proposes (training-size
  proposals) without its loss terms, the RoI heads skip box regression and the mask branch; the frozen
  convolutions run in channels-last memory format. Measured on the demo model and data (2 CPU cores):
  ~85 img/s against ~18 img/s for a stage-1 step.

``combine_classifiers`` joins two retrained models of the same representation into one whose classifier is the
report's double classifier (``models/double_classifier.py``).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers

from longtail_seg.engine.checkpoint import input_fingerprint
from longtail_seg.engine.train import TrainConfig, TrainResult, seed_everything, train
from longtail_seg.models.classifiers import build_classifier
from longtail_seg.models.detector import (
    build_detector,
    get_classifier,
    load_detector,
    save_checkpoint,
    set_classifier,
)

LOGGER = logging.getLogger(__name__)
CLASSIFIER_PREFIX = "roi_heads.box_predictor.classifier."
RETRAIN_SAMPLERS = ("class_aware", "repeat_factor", "uniform")


@dataclass
class RetrainConfig(TrainConfig):
    """The retraining section of the config: ``train:`` keys (same meaning) plus the class-aware sampler's k.

    Defaults differ from stage 1 only in ``sampler`` (class-aware, the cRT of the report).
    """

    SECTION: ClassVar[str] = "retrain"

    sampler: str = "class_aware"  # class_aware | repeat_factor | uniform
    images_per_category: int = 5  # class_aware only: images drawn per category each epoch (k)
    rois_per_image: int | None = None  # RoIs sampled per image for the classifier loss (null: the model's own)

    def validate(self) -> None:
        """Stage-1 checks plus the retraining sampler and ``images_per_category``."""
        super().validate()
        if self.sampler not in RETRAIN_SAMPLERS:
            raise ValueError(f"retrain.sampler must be one of {list(RETRAIN_SAMPLERS)}, got {self.sampler!r}")
        if self.images_per_category < 1:
            raise ValueError(f"retrain.images_per_category must be >= 1, got {self.images_per_category}")
        if self.rois_per_image is not None and self.rois_per_image < 1:
            raise ValueError(f"retrain.rois_per_image must be >= 1 or null, got {self.rois_per_image}")


# ------------------------------------------------------------------------------------------- model preparation


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its stored statistics: ``train()`` leaves it in eval mode.

    Unlike torchvision's FrozenBatchNorm2d it keeps BatchNorm2d's state-dict keys (``num_batches_tracked``
    included), so a retrained model loads into a freshly built detector, and computes exactly what the
    stage-1 model computes at inference.
    """

    def train(self, mode: bool = True) -> "FrozenStatsBatchNorm2d":  # noqa: ARG002 - mode ignored on purpose
        return super().train(False)


class ProposalsOnlyRPN(RegionProposalNetwork):
    """torchvision's RPN returning the same (training-size) proposals but no loss terms.

    A frozen RPN needs no anchor matching or loss during classifier retraining; this skips both.
    """

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Proposals per image (as torchvision's forward) and an empty loss dict."""
        feature_maps = list(features.values())
        objectness, deltas = self.head(feature_maps)
        anchors = self.anchor_generator(images, feature_maps)
        anchors_per_level = [level[0].numel() for level in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, anchors_per_level)
        return boxes, {}


def freeze_batch_norm(model: nn.Module) -> int:
    """Make every BatchNorm2d of ``model`` a FrozenStatsBatchNorm2d (in place); returns how many were changed."""
    changed = 0
    for name, module in model.named_modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = FrozenStatsBatchNorm2d
            module.eval()
            changed += 1
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, FrozenStatsBatchNorm2d):
            raise TypeError(
                f"{name}: {type(module).__name__} cannot be frozen for classifier retraining; "
                "only BatchNorm2d and FrozenBatchNorm2d are supported"
            )
    return changed


def prepare_for_classifier_retraining(model: nn.Module, classifier_cfg: dict[str, Any] | None) -> nn.Module:
    """Swap in a fresh classifier of ``classifier_cfg``, freeze the rest, freeze BN, classifier-only losses.

    ``model`` is a detector from ``build_detector``/``load_detector`` (not yet DDP-wrapped); it is changed in
    place and returned. Its ``model_cfg`` gets the new classifier config, so model_final.pth rebuilds it.
    """
    model_cfg = getattr(model, "model_cfg", None)
    if model_cfg is None or not hasattr(model, "num_classes"):
        raise TypeError("prepare_for_classifier_retraining needs a detector built by longtail_seg.models.detector")
    classifier_cfg = copy.deepcopy(dict(classifier_cfg or {"type": "softmax"}))
    device = next(model.parameters()).device
    classifier = build_classifier(classifier_cfg, model_cfg["box_head_dim"], model.num_classes).to(device)
    set_classifier(model, classifier)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in classifier.parameters():
        parameter.requires_grad_(True)
    freeze_batch_norm(model)
    model.roi_heads.classifier_only = True
    if type(model.rpn) is RegionProposalNetwork:
        model.rpn.__class__ = ProposalsOnlyRPN
    # frozen convolutions in channels-last run ~1.3x faster on CPU (measured on the demo model); values unchanged
    model.backbone.to(memory_format=torch.channels_last)
    model.rpn.to(memory_format=torch.channels_last)
    model.model_cfg = dict(model_cfg, classifier=classifier_cfg)
    return model


def frozen_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer outside the box classifier (what retraining must not change)."""
    bare = model.module if hasattr(model, "module") else model
    return {
        name: tensor.detach().clone()
        for name, tensor in bare.state_dict().items()
        if not name.startswith(CLASSIFIER_PREFIX)
    }


# ------------------------------------------------------------------------------------------------ retraining


def retrain_classifier(
    checkpoint_path: str | os.PathLike,
    dataset: Dataset,
    sampler: Any,
    classifier_cfg: dict[str, Any] | None,
    train_cfg: dict[str, Any] | RetrainConfig | None,
    out_dir: str | os.PathLike,
    device: str | torch.device = "auto",
    collate_fn: Callable | None = None,
    fingerprint: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Retrain a fresh classifier on the frozen representation of ``checkpoint_path`` -> out_dir/model_final.pth.

    ``dataset`` must use the checkpoint's category ids (labels 1..C in that order); targets need no masks.
    Returns train()'s result (``final_model`` is the path of model_final.pth). Resumes automatically when the
    checkpoint matches (``fingerprint``: see ``train``); the classifier config and ``checkpoint_path`` are always
    part of that check.
    """
    fingerprint = {**input_fingerprint({"classifier": classifier_cfg}, {"representation": checkpoint_path}),
                   **(fingerprint or {})}
    cfg = RetrainConfig.from_dict(train_cfg)
    model, meta = load_detector(checkpoint_path, map_location="cpu")
    dataset_ids = getattr(dataset, "category_ids", None)
    if dataset_ids is not None and list(dataset_ids) != list(meta["category_ids"]):
        raise ValueError(
            f"the retraining dataset's categories differ from those of {checkpoint_path} "
            f"({len(dataset_ids)} vs {len(meta['category_ids'])} ids); build the dataset with "
            "category_ids=checkpoint_category_ids(checkpoint)"
        )
    seed_everything(cfg.seed)  # the fresh classifier's initial weights follow the seed
    prepare_for_classifier_retraining(model, classifier_cfg)
    if cfg.rois_per_image is not None:  # a training-time choice: model_final.pth keeps the model's own setting
        model.roi_heads.fg_bg_sampler.batch_size_per_image = int(cfg.rois_per_image)
    return train(model, dataset, sampler, cfg, out_dir, device, model_cfg=model.model_cfg,
                 category_ids=meta["category_ids"], collate_fn=collate_fn, fingerprint=fingerprint)


def checkpoint_category_ids(checkpoint_path: str | os.PathLike) -> list[int]:
    """Dataset category ids of a detector checkpoint, in label order (label k = ids[k - 1])."""
    payload = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or "category_ids" not in payload:
        raise ValueError(f"{checkpoint_path} is not a detector checkpoint (no category_ids); use a model_final.pth")
    return [int(c) for c in payload["category_ids"]]


def build_retrain_sampler(
    cfg: RetrainConfig,
    dataset: Any,
    repeat_factor_csv: str | os.PathLike | None = None,
    num_replicas: int | None = None,
    rank: int | None = None,
    repeat_factors: Sequence[float] | None = None,
) -> Any:
    """The sampler ``cfg.sampler`` names over ``dataset`` (an LVISDetectionDataset or ConcatDetectionDataset),
    seeded by ``cfg.seed``. repeat_factor takes ``repeat_factors`` (dataset order) or reads ``repeat_factor_csv``."""
    from longtail_seg.sampling import build_sampler

    common = dict(seed=cfg.seed, num_replicas=num_replicas, rank=rank)
    if cfg.sampler == "class_aware":
        image_category_ids = [dataset.image_category_ids(index) for index in range(len(dataset))]
        return build_sampler("class_aware", len(dataset), image_category_ids=image_category_ids,
                             images_per_category=cfg.images_per_category, **common)
    if cfg.sampler == "repeat_factor":
        if repeat_factors is None and repeat_factor_csv is None:
            raise ValueError("retrain sampler repeat_factor needs image_repeat_factors.csv (the stats step's output)")
        return build_sampler("repeat_factor", len(dataset), repeat_factors=repeat_factors,
                             repeat_factor_csv=repeat_factor_csv, image_ids=dataset.image_ids, **common)
    return build_sampler(cfg.sampler, len(dataset), **common)


def fill_bgs_groups(
    classifier_cfg: dict[str, Any], category_stats_csv: str | os.PathLike | None, category_ids: Sequence[int]
) -> dict[str, Any]:
    """A copy of ``classifier_cfg`` where every bgs classifier (also inside a double) without ``class_groups`` gets
    them from category_stats.csv (one group per label 1..C, in ``category_ids`` order)."""
    cfg = copy.deepcopy(dict(classifier_cfg))
    if cfg.get("type") == "double":
        cfg["branches"] = [fill_bgs_groups(b, category_stats_csv, category_ids) for b in cfg.get("branches", [])]
    elif cfg.get("type") == "bgs" and "class_groups" not in cfg:
        if category_stats_csv is None or not Path(category_stats_csv).exists():
            raise ValueError(
                f"a bgs classifier without class_groups needs category_stats.csv ({category_stats_csv} not found); "
                "pass --stats-dir with the dataset_stats step's output, or give class_groups in the config"
            )
        from longtail_seg.models.balanced_group_softmax import class_groups_from_stats

        groups = class_groups_from_stats(category_stats_csv, list(category_ids))
        cfg["class_groups"] = [int(g) for g in groups]
    return cfg


# ----------------------------------------------------------------------------------------- double classifier


def representation_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> str | None:
    """Why two detector state dicts do not share one representation (first differing non-classifier tensor)."""
    first_keys = [k for k in first if not k.startswith(CLASSIFIER_PREFIX)]
    second_keys = {k for k in second if not k.startswith(CLASSIFIER_PREFIX)}
    for name in first_keys:
        if name not in second_keys:
            return f"tensor {name} is missing from the second model"
        if not _bit_identical(first[name], second[name]):
            return f"tensor {name} differs"
    extra = sorted(second_keys - set(first_keys))
    return f"tensor {extra[0]} is missing from the first model" if extra else None


def _bit_identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (NaNs included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    as_bytes = lambda t: t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # noqa: E731
    return torch.equal(as_bytes(a), as_bytes(b))


def combine_classifiers(
    first_path: str | os.PathLike, second_path: str | os.PathLike, out_path: str | os.PathLike
) -> Path:
    """Write a detector whose classifier is DoubleClassifier([first's, second's]) (scores averaged).

    Both inputs must be retrained from the same representation: every non-classifier tensor bit-identical,
    same categories and the same model config apart from the classifier. Raises ValueError otherwise.
    """
    first, first_meta = load_detector(first_path)
    second, second_meta = load_detector(second_path)
    where = f"{first_path} and {second_path}"
    if first_meta["category_ids"] != second_meta["category_ids"]:
        raise ValueError(f"{where} predict different categories; combine classifiers of one dataset only")
    first_cfg, second_cfg = dict(first_meta["model_cfg"]), dict(second_meta["model_cfg"])
    branch_cfgs = [first_cfg.pop("classifier"), second_cfg.pop("classifier")]
    if first_cfg != second_cfg:
        keys = sorted(k for k in set(first_cfg) | set(second_cfg) if first_cfg.get(k) != second_cfg.get(k))
        raise ValueError(f"{where} have different model configs (keys {keys}); they are not one representation")
    difference = representation_difference(first.state_dict(), second.state_dict())
    if difference is not None:
        raise ValueError(
            f"{where} do not share the same frozen representation: {difference}. Retrain both classifiers from "
            "the same representation checkpoint (workflow_scripts/retrain.py --checkpoint REP.pth)"
        )
    model_cfg = dict(first_cfg, classifier={"type": "double", "branches": branch_cfgs})
    combined = build_detector(model_cfg, first_meta["num_classes"])
    state = {k: v for k, v in first.state_dict().items() if not k.startswith(CLASSIFIER_PREFIX)}
    for index, source in enumerate((first, second)):
        for name, tensor in get_classifier(source).state_dict().items():
            state[f"{CLASSIFIER_PREFIX}branches.{index}.{name}"] = tensor
    combined.load_state_dict(state)
    extra = {"combined_from": [str(first_path), str(second_path)]}
    save_checkpoint(out_path, combined, model_cfg, first_meta["category_ids"], extra=extra)
    return Path(out_path)
