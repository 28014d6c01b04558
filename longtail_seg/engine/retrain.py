"""Decoupled classifier retraining (cRT): a fresh box classifier on a frozen representation.

Stage 2 of the report: load the representation-learning detector, replace its box classifier by a freshly
initialised one (softmax or balanced group softmax), freeze everything else and train only the classifier with
another sampler (class-aware or repeat factor). The loop is ``engine.train.train`` (checkpoints, automatic
resume, metrics.csv, NaN check, DDP); only the model is prepared differently:

* ``Detector.freeze_all_but_classifiers``: every parameter outside ``roi_heads.classifiers()`` has
  ``requires_grad=False`` (the optimizer skips them), every BatchNorm keeps normalising with its stored
  statistics even under ``model.train()`` (the features equal stage 1's inference features bit for bit), the
  RPN proposes (training-size proposals) without its loss terms and the RoI heads compute the classification
  loss alone, without box regression or the mask branch;
* the frozen convolutions run in channels-last memory format (faster on CPU, same values).

A head with several stages (a cascade) gets a fresh classifier per stage, all trained together.

``combine_classifiers`` joins two retrained models of the same representation into one whose classifier is the
report's double classifier (``models/double_classifier.py``).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from longtail_seg.engine.checkpoint import input_fingerprint
from longtail_seg.engine.config import RetrainConfig
from longtail_seg.engine.train import TrainResult, train
from longtail_seg.io_utils import load_torch_file
from longtail_seg.models.classifiers import build_classifier
from longtail_seg.models.detector import REWRITE_DETECTOR, Detector, load_detector, save_checkpoint
from longtail_seg.runtime import seed_everything

LOGGER = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- model preparation


def prepare_for_classifier_retraining(model: Detector, classifier_cfg: dict[str, Any] | None) -> Detector:
    """Fresh classifiers of ``classifier_cfg`` (one per stage of the RoI heads), everything else frozen.

    ``model`` is a detector from ``build_detector``/``load_detector`` (not yet DDP-wrapped); it is changed in
    place and returned. Its ``model_cfg`` gets the new classifier config, so model_final.pth rebuilds it.
    """
    if not isinstance(model, Detector):
        raise TypeError("prepare_for_classifier_retraining needs a detector built by longtail_seg.models.detector")
    classifier_cfg = copy.deepcopy(dict(classifier_cfg or {"type": "softmax"}))
    device = next(model.parameters()).device
    heads = model.roi_heads
    heads.set_classifiers([build_classifier(classifier_cfg, in_features, model.num_classes).to(device)
                           for in_features in heads.classifier_in_features()])
    model.freeze_all_but_classifiers()
    # frozen convolutions in channels-last run faster on CPU; values unchanged
    model.backbone.to(memory_format=torch.channels_last)
    model.rpn.to(memory_format=torch.channels_last)
    model.model_cfg = dict(model.model_cfg, classifier=classifier_cfg)
    return model


def frozen_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer outside the box classifiers (what retraining must not change)."""
    bare = model.module if hasattr(model, "module") else model
    return {name: tensor.detach().clone() for name, tensor in bare.representation_state_dict().items()}


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
        model.roi_heads.sampler.batch_size_per_image = int(cfg.rois_per_image)
    return train(model, dataset, sampler, cfg, out_dir, device, model_cfg=model.model_cfg,
                 category_ids=meta["category_ids"], collate_fn=collate_fn, fingerprint=fingerprint)


def checkpoint_category_ids(checkpoint_path: str | os.PathLike) -> list[int]:
    """Dataset category ids of a detector checkpoint, in label order (label k = ids[k - 1])."""
    payload = load_torch_file(checkpoint_path, "detector checkpoint", REWRITE_DETECTOR)
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


def representation_difference(first: Detector, second: Detector) -> str | None:
    """Why two detectors do not share one representation (the first differing tensor outside the classifiers)."""
    first_state, second_state = first.representation_state_dict(), second.representation_state_dict()
    for name, tensor in first_state.items():
        if name not in second_state:
            return f"tensor {name} is missing from the second model"
        if not _bit_identical(tensor, second_state[name]):
            return f"tensor {name} differs"
    extra = sorted(set(second_state) - set(first_state))
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
    """Write a detector whose classifiers are DoubleClassifier([first's, second's]) per stage (scores averaged).

    Both inputs must be retrained from the same representation: every non-classifier tensor bit-identical,
    same categories and the same model config apart from the classifier. Raises ValueError otherwise.
    """
    from longtail_seg.models.double_classifier import DoubleClassifier

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
    difference = representation_difference(first, second)
    if difference is not None:
        raise ValueError(
            f"{where} do not share the same frozen representation: {difference}. Retrain both classifiers from "
            "the same representation checkpoint (workflow_scripts/retrain.py --checkpoint REP.pth)"
        )
    pairs = zip(first.roi_heads.classifiers(), second.roi_heads.classifiers())
    first.roi_heads.set_classifiers([DoubleClassifier([a, b]) for a, b in pairs])
    model_cfg = dict(first_cfg, classifier={"type": "double", "branches": branch_cfgs})
    extra = {**(first_meta.get("extra") or {}), "combined_from": [str(first_path), str(second_path)]}
    save_checkpoint(out_path, first, model_cfg, first_meta["category_ids"], extra=extra)
    return Path(out_path)
