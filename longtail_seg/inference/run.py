"""The inference entry point of the workflow scripts: a checkpoint over an LVIS-format split, single-scale
(``inference/predict.py``) or multi-scale (``inference/tta.py``) as the test settings say."""

from __future__ import annotations

import os
import time

import torch

from longtail_seg.data.dataset import LVISDetectionDataset
from longtail_seg.data.transforms import build_test_transforms
from longtail_seg.inference.config import TestConfig
from longtail_seg.inference.norcal import apply_norcal
from longtail_seg.inference.predict import predict_dataset
from longtail_seg.inference.results import check_mask_sizes
from longtail_seg.inference.tta import predict_dataset_multiscale
from longtail_seg.models.category_counts import counts_from_stats
from longtail_seg.models.detector import load_detector


def predict_annotation_file(
    checkpoint: str | os.PathLike,
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    cfg: TestConfig,
    device: str | torch.device = "cpu",
    score_threshold: float | None = None,
    category_stats: str | os.PathLike | None = None,
) -> tuple[list[dict], int, float]:
    """Run a model_final.pth over the images of an LVIS-format file (annotations optional).

    Returns (LVIS results, number of images, seconds). ``score_threshold`` raises the model's own detection score
    threshold (e.g. a pseudo-label teacher keeps only confident detections, which skips most mask work).
    ``category_stats``: the training split's category_stats.csv, whose instance counts ``cfg.norcal_gamma`` needs.
    A test with an AP-fixed protocol keeps each category's ``dets_per_category`` best results over the split.
    """
    device = torch.device(device)
    model, meta = load_detector(checkpoint, map_location=device)
    return predict_with_detector(model, meta, annotation_file, image_root, cfg, device, score_threshold,
                                 category_stats)


def predict_with_detector(
    model: torch.nn.Module,
    meta: dict,
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    cfg: TestConfig,
    device: str | torch.device = "cpu",
    score_threshold: float | None = None,
    category_stats: str | os.PathLike | None = None,
) -> tuple[list[dict], int, float]:
    """``predict_annotation_file`` with a detector already loaded by ``load_detector`` (model, meta)."""
    device = torch.device(device)
    model.to(device)
    if cfg.norcal_gamma is not None:
        if category_stats is None:
            raise ValueError("norcal_gamma needs the training instance counts: pass the dataset statistics' "
                             "category_stats.csv (infer.py --category-stats), or set norcal_gamma: null")
        counts = counts_from_stats(category_stats, meta["category_ids"], "instance_count")
        apply_norcal(model, counts, cfg.norcal_gamma)
    model.roi_heads.detections_per_img = cfg.max_dets  # a test-time choice: no retraining to change it
    if score_threshold is not None:
        model.roi_heads.score_thresh = max(float(score_threshold), model.roi_heads.score_thresh)
    transforms = None if cfg.multi_scale else build_test_transforms(cfg.min_size, cfg.max_size)
    dataset = LVISDetectionDataset(annotation_file, image_root, transforms=transforms,
                                   category_ids=meta["category_ids"], with_masks=False)
    start = time.perf_counter()
    if cfg.multi_scale:
        results = predict_dataset_multiscale(model, dataset, cfg, device)
    else:
        results = predict_dataset(model, dataset, device, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                  max_dets=cfg.max_dets, mask_threshold=cfg.mask_threshold,
                                  dets_per_category=cfg.per_category_top_k)
    elapsed = time.perf_counter() - start
    image_sizes = {image["id"]: (image["height"], image["width"]) for image in dataset.images}
    check_mask_sizes(results, image_sizes, f"predictions for {annotation_file}")
    return results, len(dataset), elapsed
