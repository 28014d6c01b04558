"""Dataset statistics for long-tail training: LVIS frequency groups, repeat factors, sampling probabilities, BGS bins.

Pure numpy over the columns of an annotation file (see ``lvis_io.annotation_arrays``): no per-annotation Python loop,
so LVIS v1 (100k images, 1.27M instances) takes well under a second once the JSON is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from longtail_seg.data.lvis_io import AnnotationArrays
from longtail_seg.io_utils import atomic_path, atomic_write_json

# LVIS frequency groups by number of training images: rare 1-10, common 11-100, frequent > 100.
RARE_MAX_IMAGES = 10
COMMON_MAX_IMAGES = 100
DEFAULT_BGS_BINS = (10, 100, 1000)


def frequency_groups(image_counts: np.ndarray) -> np.ndarray:
    """LVIS group per category from its training image count: 'r' (<= 10), 'c' (11-100), 'f' (> 100).

    A category with no training image is counted as rare, as it is at least as under-represented.
    """
    counts = np.asarray(image_counts)
    return np.where(counts <= RARE_MAX_IMAGES, "r", np.where(counts <= COMMON_MAX_IMAGES, "c", "f"))


def category_repeat_factors(image_counts: np.ndarray, num_images: int, threshold: float) -> np.ndarray:
    """Category repeat factors r_c = max(1, sqrt(t / f_c)), f_c = fraction of training images containing c.

    The LVIS paper's definition (Gupta et al. 2019). A category present in no image gets 1 (it never drives r_i).
    """
    if num_images <= 0:
        raise ValueError("repeat factors need at least one training image")
    if threshold <= 0:
        raise ValueError(f"RFS threshold must be positive, got {threshold}")
    counts = np.asarray(image_counts, dtype=np.float64)
    fraction = counts / num_images
    with np.errstate(divide="ignore"):
        factors = np.sqrt(threshold / fraction)
    factors[counts == 0] = 1.0
    return np.maximum(1.0, factors)


def image_repeat_factors(
    num_images: int, ann_image_index: np.ndarray, ann_category_index: np.ndarray, category_factors: np.ndarray
) -> np.ndarray:
    """Image repeat factors r_i = max over categories present in image i of r_c; 1 for images without annotations."""
    factors = np.ones(num_images, dtype=np.float64)
    np.maximum.at(factors, ann_image_index, category_factors[ann_category_index])
    return factors


def sampling_probabilities(image_factors: np.ndarray) -> np.ndarray:
    """Balanced-mosaic partner probabilities p_i = r_i / sum_j r_j."""
    factors = np.asarray(image_factors, dtype=np.float64)
    return factors / factors.sum()


def bgs_groups(instance_counts: np.ndarray, bins: Sequence[int] = DEFAULT_BGS_BINS) -> np.ndarray:
    """Balanced-group-softmax group (1..len(bins)+1) per category from its training instance count.

    With bins (10, 100, 1000): <10 -> 1, [10, 100) -> 2, [100, 1000) -> 3, >= 1000 -> 4. Group 0 is reserved for
    background-vs-foreground, as in Li et al. (CVPR 2020).
    """
    edges = np.asarray(bins)
    if np.any(np.diff(edges) <= 0):
        raise ValueError(f"BGS bins must be strictly increasing, got {list(bins)}")
    return 1 + np.searchsorted(edges, np.asarray(instance_counts), side="right")


@dataclass(frozen=True)
class DatasetStats:
    """Per-category and per-image statistics of a training annotation file."""

    categories: pd.DataFrame  # category_id,name,frequency,image_count,instance_count,repeat_factor,bgs_group
    images: pd.DataFrame  # image_id,repeat_factor,sampling_prob
    summary: dict


def compute_dataset_stats(
    arrays: AnnotationArrays, rfs_threshold: float = 0.001, bgs_bins: Sequence[int] = DEFAULT_BGS_BINS
) -> DatasetStats:
    """Recompute counts, groups, repeat factors and sampling probabilities from annotations (never from the file's
    own ``image_count``/``frequency`` fields, which may be stale or belong to another split)."""
    num_images = len(arrays.image_ids)
    num_categories = len(arrays.category_ids)
    image_index = _positions(arrays.image_ids, arrays.ann_image_ids)
    category_index = _positions(arrays.category_ids, arrays.ann_category_ids)

    instance_counts = np.bincount(category_index, minlength=num_categories)
    unique_pairs = np.unique(image_index * num_categories + category_index)
    image_counts = np.bincount(unique_pairs % num_categories, minlength=num_categories)

    groups = frequency_groups(image_counts)
    cat_factors = category_repeat_factors(image_counts, num_images, rfs_threshold)
    img_factors = image_repeat_factors(num_images, image_index, category_index, cat_factors)
    categories = pd.DataFrame(
        {
            "category_id": arrays.category_ids,
            "name": arrays.category_names,
            "frequency": groups,
            "image_count": image_counts,
            "instance_count": instance_counts,
            "repeat_factor": cat_factors,
            "bgs_group": bgs_groups(instance_counts, bgs_bins),
        }
    )
    images = pd.DataFrame(
        {"image_id": arrays.image_ids, "repeat_factor": img_factors,
         "sampling_prob": sampling_probabilities(img_factors)}
    )
    summary = _summary(categories, num_images, image_index, category_index, groups, rfs_threshold, img_factors)
    return DatasetStats(categories=categories, images=images, summary=summary)


def _positions(ids: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of each query id in ``ids`` (ids are unique), vectorised with a sort."""
    order = np.argsort(ids, kind="stable")
    found = np.searchsorted(ids, query, sorter=order)
    found = np.clip(found, 0, len(order) - 1)
    index = order[found] if len(order) else found
    if len(query) and not np.all(ids[index] == query):
        missing = query[ids[index] != query][0]
        raise ValueError(f"id {missing} is referenced by an annotation but not defined")
    return index


def _summary(
    categories: pd.DataFrame,
    num_images: int,
    image_index: np.ndarray,
    category_index: np.ndarray,
    groups: np.ndarray,
    rfs_threshold: float,
    img_factors: np.ndarray,
) -> dict:
    per_group = {}
    ann_groups = groups[category_index]
    for group, label in (("r", "rare"), ("c", "common"), ("f", "frequent")):
        in_group = ann_groups == group
        per_group[label] = {
            "categories": int((groups == group).sum()),
            "images": int(np.unique(image_index[in_group]).size),
            "instances": int(in_group.sum()),
        }
    return {
        "images": num_images,
        "instances": int(len(category_index)),
        "categories": int(len(categories)),
        "categories_with_instances": int((categories["instance_count"] > 0).sum()),
        "rfs_threshold": rfs_threshold,
        "epoch_length_with_rfs": float(img_factors.sum()),
        "groups": per_group,
    }


STATS_PARTS = ("categories", "repeat_factors")


def write_dataset_stats(stats: DatasetStats, out_dir: str | Path, parts: Sequence[str] = STATS_PARTS) -> None:
    """Write the chosen parts atomically into ``out_dir``: "categories" (category_stats.csv, summary.json) and
    "repeat_factors" (image_repeat_factors.csv). The workflow writes them in two jobs, so that a setting of one
    (e.g. the BGS bins) does not rewrite the other and rerun what reads only that."""
    out = Path(out_dir)
    if "categories" in parts:
        with atomic_path(out / "category_stats.csv") as tmp:
            stats.categories.to_csv(tmp, index=False)
        atomic_write_json(out / "summary.json", stats.summary, indent=2)
    if "repeat_factors" in parts:
        with atomic_path(out / "image_repeat_factors.csv") as tmp:
            stats.images.to_csv(tmp, index=False)


def repeat_factors_of_images(image_category_ids: Sequence[Sequence[int]], threshold: float) -> np.ndarray:
    """Image repeat factors r_i straight from each image's category ids (same definition as the stats step).

    For training sets assembled in memory (train + pseudo-labelled images), where no statistics file exists.
    """
    present = [np.unique(np.asarray(list(ids), dtype=np.int64)) for ids in image_category_ids]
    ann_image_index = np.repeat(np.arange(len(present)), [len(ids) for ids in present])
    ann_category_ids = np.concatenate(present) if present else np.zeros(0, dtype=np.int64)
    category_ids, ann_category_index = np.unique(ann_category_ids, return_inverse=True)
    image_counts = np.bincount(ann_category_index, minlength=len(category_ids))
    factors = category_repeat_factors(image_counts, len(present), threshold)
    return image_repeat_factors(len(present), ann_image_index, ann_category_index, factors)
