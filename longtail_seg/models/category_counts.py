"""Per-class training counts from the dataset statistics (category_stats.csv), in model label order: the image
counts the federated loss samples classes by and the instance counts NorCal calibrates with."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COUNT_COLUMNS = ("image_count", "instance_count")


def counts_from_stats(category_stats_csv: str | os.PathLike, category_ids: Sequence[int], column: str) -> list[int]:
    """``column`` (image_count or instance_count) of category_stats.csv per label 1..C, in ``category_ids`` order."""
    import pandas as pd  # here, so that the workflow's DAG build imports this module without pandas

    from longtail_seg.data.lvis_io import DatasetError

    if column not in COUNT_COLUMNS:
        raise ValueError(f"unknown count column {column!r}; choose one of {list(COUNT_COLUMNS)}")
    if not os.path.isfile(category_stats_csv):
        raise DatasetError(f"{category_stats_csv}: category statistics not found; run the dataset statistics step")
    table = pd.read_csv(category_stats_csv)
    missing = [c for c in ("category_id", column) if c not in table.columns]
    if missing:
        raise DatasetError(f"{category_stats_csv}: missing column(s) {missing}; regenerate it with the dataset "
                           "statistics step")
    count_of = dict(zip(table["category_id"].astype(int), table[column].astype(int)))
    absent = [int(c) for c in category_ids if int(c) not in count_of]
    if absent:
        raise DatasetError(f"{category_stats_csv}: category id {absent[0]} of the model has no {column}; the "
                           "statistics were computed on another annotation file, rerun the dataset statistics step "
                           "on the training annotations")
    return [count_of[int(c)] for c in category_ids]


def needs_image_counts(classifier_cfg: Any) -> bool:
    """Whether a classifier config (a double's branches included) has a federated classifier without counts."""
    if not isinstance(classifier_cfg, dict):
        return False
    if classifier_cfg.get("type") == "double":
        return any(needs_image_counts(branch) for branch in classifier_cfg.get("branches", []))
    return classifier_cfg.get("type") == "federated" and classifier_cfg.get("image_counts") is None


def fill_image_counts(
    classifier_cfg: dict[str, Any], category_stats_csv: str | os.PathLike | None, category_ids: Sequence[int]
) -> dict[str, Any]:
    """A copy of ``classifier_cfg`` where every federated classifier (also inside a double) without
    ``image_counts`` gets them from category_stats.csv (one training image count per label 1..C)."""
    cfg = copy.deepcopy(dict(classifier_cfg))
    if cfg.get("type") == "double":
        cfg["branches"] = [fill_image_counts(b, category_stats_csv, category_ids) for b in cfg.get("branches", [])]
    elif needs_image_counts(cfg):
        if category_stats_csv is None or not Path(category_stats_csv).exists():
            raise ValueError(
                f"a federated classifier without image_counts needs category_stats.csv ({category_stats_csv} not "
                "found); pass the dataset_stats step's output (--stats-dir / --category-stats), or give image_counts "
                "in the config"
            )
        cfg["image_counts"] = counts_from_stats(category_stats_csv, category_ids, "image_count")
    return cfg


__all__ = ["counts_from_stats", "fill_image_counts", "needs_image_counts"]
