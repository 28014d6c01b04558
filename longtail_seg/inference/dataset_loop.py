"""The inference loop shared by single- and multi-scale testing: batches of a dataset through a predict function."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from longtail_seg.evaluation.protocols import top_per_category


def collate_images_and_targets(batch: list[tuple[Any, Any]]) -> tuple[tuple, tuple]:
    """Keep a batch as (images, targets) tuples: detection images may differ in size."""
    images, targets = zip(*batch)
    return images, targets


def dataset_category_lookup(
    dataset: torch.utils.data.Dataset, category_of: Callable[[int], int] | None, caller: str
) -> Callable[[int], int]:
    """``category_of`` or the dataset's own ``category_of`` (label -> category id); a clear error without both."""
    category_of = category_of or getattr(dataset, "category_of", None)
    if category_of is None:
        raise ValueError(f"{caller} needs category_of(label) -> category id: the dataset has no "
                         "category_of method, so pass category_of explicitly")
    return category_of


def run_over_dataset(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    predict_batch: Callable[[list[torch.Tensor], Sequence[Any]], list[dict]],
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    num_workers: int = 0,
    desc: str = "inference",
    dets_per_category: int | None = None,
) -> list[dict]:
    """The inference loop shared by single- and multi-scale testing: batches of ``dataset`` moved to ``device``,
    ``predict_batch(images, targets)`` under ``torch.inference_mode`` with the model in eval mode (its mode is
    restored afterwards); returns all batches' results in dataset order. With ``dets_per_category`` (AP-fixed) only
    each category's that many best results over the dataset are kept, pruned as they come (memory stays near
    categories x k however many detections an image has)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_images_and_targets)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    results: list[dict] = []
    prune_at = 2 * dets_per_category if dets_per_category is not None else None
    try:
        with torch.inference_mode():
            for images, targets in tqdm(loader, desc=desc, unit="batch"):
                results.extend(predict_batch([image.to(device, non_blocking=True) for image in images], targets))
                if prune_at is not None and len(results) >= prune_at:  # the top k of the top k's: exact
                    results = top_per_category(results, dets_per_category)
                    prune_at = 2 * max(len(results), dets_per_category)
    finally:
        model.train(was_training)
    return results if dets_per_category is None else top_per_category(results, dets_per_category)
