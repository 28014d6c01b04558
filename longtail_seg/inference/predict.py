"""Single-scale inference: run a detector over a dataset and return LVIS results (boxes + RLE masks).

A model with a ``detect`` method (``models/detector.py``) gives box-relative masks, encoded at the original image
size from their box crops; any other model (e.g. torchvision's Mask R-CNN) is called as usual and its full-image
masks are encoded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from longtail_seg.inference.config import LVIS_MAX_DETS_PER_IMAGE
from longtail_seg.inference.dataset_loop import dataset_category_lookup, run_over_dataset
from longtail_seg.inference.results import detections_to_lvis_results, image_id_of


def _back_to_original(image: torch.Tensor, target: Any) -> tuple[tuple[float, float] | None, tuple[int, int] | None]:
    """Scale (sx, sy) and size that map detections on a resized test image back to the original image.

    (None, None) when the dataset gave the image at its original size or does not say what that was.
    """
    original = target.get("orig_size") if isinstance(target, Mapping) else None
    if original is None:
        return None, None
    height, width = (int(v) for v in original)
    resized_height, resized_width = image.shape[-2:]
    if (height, width) == (resized_height, resized_width):
        return None, None
    return (width / resized_width, height / resized_height), (height, width)


def predict_dataset(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    num_workers: int = 0,
    max_dets: int = LVIS_MAX_DETS_PER_IMAGE,
    mask_threshold: float = 0.5,
    with_masks: bool = True,
    category_of: Callable[[int], int] | None = None,
    dets_per_category: int | None = None,
) -> list[dict]:
    """Run ``model`` (already on ``device``) over every image of ``dataset``; return LVIS result dicts for all
    (with ``dets_per_category``, AP-fixed's: each category's that many best over the dataset).

    The model returns boxes and masks in the pixels of the image it was given; when the dataset's test transforms
    resized the image, the target's ``orig_size`` maps detections back to the original image.
    ``category_of`` maps a model label to a dataset category id (default: ``dataset.category_of``).
    """
    category_of = dataset_category_lookup(dataset, category_of, "predict_dataset")
    detect = getattr(model, "detect", None)

    def predict_batch(images: list[torch.Tensor], targets: Sequence[Any]) -> list[dict]:
        results: list[dict] = []
        outputs = detect(images) if detect is not None else model(images)
        for image, target, output in zip(images, targets, outputs):
            if not with_masks:
                output = {key: value for key, value in output.items() if key != "masks"}
            scale, original_size = _back_to_original(image, target)
            if detect is not None and original_size is None:
                original_size = tuple(image.shape[-2:])
            results.extend(detections_to_lvis_results(image_id_of(target), output, category_of, mask_threshold,
                                                      max_dets, scale, original_size, box_relative=detect is not None))
        return results

    return run_over_dataset(model, dataset, predict_batch, device, batch_size, num_workers,
                            dets_per_category=dets_per_category)
