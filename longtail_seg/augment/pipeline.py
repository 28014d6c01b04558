"""The training image pipeline shared by representation learning and classifier retraining.

One place decides what the model sees, from config:

* plain: multi-scale resize + horizontal flip (``data/transforms.py``);
* ``mosaic: true``: the balanced mosaic (``augment/mosaic.py``) over the un-resized images, partners drawn with
  p_i = r_i / sum r from the same repeat factors the RFS sampler uses;
* with pseudo labels: the training set plus the pseudo-labelled unlabeled images, strong augmentation
  (``augment/strong.py``) on the pseudo-labelled images only, and repeat factors recomputed over the union; their
  ignore regions (``iscrowd`` annotations) reach the RoI heads as ``target["iscrowd"]``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from longtail_seg.augment.mosaic import BalancedMosaic
from longtail_seg.augment.strong import StrongAugment
from longtail_seg.config_keys import reject_unknown_keys
from longtail_seg.data.dataset import ConcatDetectionDataset, LVISDetectionDataset
from longtail_seg.data.transforms import Compose, build_train_transforms
from longtail_seg.sampling.repeat_factor import read_repeat_factors
from longtail_seg.stats import repeat_factors_of_images

# BalancedMosaic's keyword arguments that the `augment.mosaic` config section may set.
MOSAIC_KEYS = tuple(
    name for name, p in inspect.signature(BalancedMosaic.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "seed"
)


@dataclass
class TrainingData:
    """What a training run iterates: the dataset (maybe a mosaic), the base dataset its indices refer to, the image
    repeat factors in index order (None when not needed) and how many of the images are pseudo-labelled."""

    dataset: torch.utils.data.Dataset
    base: LVISDetectionDataset | ConcatDetectionDataset
    repeat_factors: np.ndarray | None
    num_pseudo_images: int = 0


def build_training_data(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    cfg: Any,
    *,
    category_ids: list[int] | None = None,
    with_masks: bool = True,
    repeat_factor_csv: str | os.PathLike | None = None,
    mosaic_cfg: Mapping[str, Any] | None = None,
    pseudo_annotations: str | os.PathLike | None = None,
    strong_cfg: Mapping[str, Any] | None = None,
    rfs_threshold: float | None = None,
) -> TrainingData:
    """Datasets, repeat factors and augmentation for a ``TrainConfig``-like ``cfg`` (``min_size_range``,
    ``max_size``, ``flip_prob``, ``seed``, ``mosaic``, ``sampler``).

    With ``pseudo_annotations`` (an LVIS file of pseudo-labelled images, file names relative to ``image_root``)
    the repeat factors are recomputed over train + pseudo with ``rfs_threshold``; otherwise they are read from
    ``repeat_factor_csv`` when the sampler or the mosaic needs them.
    """
    use_mosaic = bool(getattr(cfg, "mosaic", False))
    plain = build_train_transforms(cfg.min_size_range, cfg.max_size, cfg.flip_prob)
    train = LVISDetectionDataset(annotation_file, image_root, transforms=None if use_mosaic else plain,
                                 category_ids=category_ids, with_masks=with_masks)
    base: LVISDetectionDataset | ConcatDetectionDataset = train
    num_pseudo = 0
    if pseudo_annotations is not None:
        strong = StrongAugment(strong_cfg)
        pseudo = LVISDetectionDataset(pseudo_annotations, image_root,
                                      transforms=strong if use_mosaic else Compose([strong, plain]),
                                      category_ids=train.category_ids, with_masks=with_masks, crowd_as_ignore=True)
        base, num_pseudo = ConcatDetectionDataset([train, pseudo]), len(pseudo)
    repeat_factors = _repeat_factors(base, cfg, use_mosaic, repeat_factor_csv, pseudo_annotations, rfs_threshold)
    dataset: torch.utils.data.Dataset = base
    if use_mosaic:
        dataset = build_mosaic(base, repeat_factors, mosaic_cfg, seed=cfg.seed)
    return TrainingData(dataset, base, repeat_factors, num_pseudo)


def _repeat_factors(
    base: Any, cfg: Any, use_mosaic: bool, csv: str | os.PathLike | None, pseudo: Any, threshold: float | None
) -> np.ndarray | None:
    if not (use_mosaic or cfg.sampler == "repeat_factor"):
        return None
    if pseudo is not None:
        if threshold is None:
            raise ValueError("training with pseudo labels recomputes repeat factors over train + pseudo: "
                             "pass the RFS threshold (stats.rfs_threshold, --rfs-threshold)")
        return repeat_factors_of_images([base.image_category_ids(i) for i in range(len(base))], threshold)
    if csv is None:
        need = "mosaic: true" if use_mosaic else "sampler repeat_factor"
        raise ValueError(f"{need} needs image_repeat_factors.csv (the dataset statistics step's output)")
    return np.asarray(read_repeat_factors(csv, base.image_ids), dtype=np.float64)


def build_mosaic(
    dataset: torch.utils.data.Dataset, repeat_factors: np.ndarray, mosaic_cfg: Mapping[str, Any] | None, seed: int
) -> BalancedMosaic:
    """BalancedMosaic over ``dataset`` with partner probabilities p_i = r_i / sum r, from the ``augment.mosaic``
    config section (unknown keys raise with the allowed ones)."""
    cfg = dict(mosaic_cfg or {})
    reject_unknown_keys("augment.mosaic", cfg, MOSAIC_KEYS)
    return BalancedMosaic(dataset, repeat_factors, seed=seed, **cfg)
