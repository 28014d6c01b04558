"""Single-scale inference: run a Mask R-CNN over a dataset and write LVIS results JSON (boxes + RLE masks).

Mask encoding is the expensive part on CPU, so each detection's mask is thresholded only inside its
(slightly enlarged) box, straight into one Fortran-ordered uint8 [H, W, N] stack, which a single
``pycocotools.mask.encode`` call turns into RLEs (~7 ms/image for 300 detections at 128x128).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader
from tqdm import tqdm

from longtail_seg.config_keys import reject_unknown_keys
from longtail_seg.io_utils import atomic_write_json

LVIS_MAX_DETS_PER_IMAGE = 300
# Mask R-CNN pastes its M x M mask into the box enlarged by (M + 2) / M (7% for M = 28) plus one pixel;
# thresholding inside the box enlarged by 10% + 2 px therefore sees every foreground pixel.
BOX_MARGIN_FRACTION = 0.1
BOX_MARGIN_PIXELS = 2.0

CategoryMap = Union[Sequence[int], Mapping[int, int], Callable[[int], int]]


def _category_lookup(category_ids_of_labels: CategoryMap) -> Callable[[int], int]:
    """Turn a callable, a mapping (label -> id) or a sequence (label l -> seq[l - 1]) into a function."""
    if callable(category_ids_of_labels) and not isinstance(category_ids_of_labels, (Mapping, Sequence)):
        return category_ids_of_labels
    if isinstance(category_ids_of_labels, Mapping):
        return lambda label: category_ids_of_labels[label]
    if isinstance(category_ids_of_labels, Sequence):
        ids = list(category_ids_of_labels)

        def from_sequence(label: int) -> int:
            if not 1 <= label <= len(ids):
                raise ValueError(f"label {label} outside 1..{len(ids)}: the model predicts more classes than the "
                                 "category id list has; pass the dataset's category_of instead")
            return ids[label - 1]

        return from_sequence
    raise TypeError("category_ids_of_labels must be a sequence, a mapping or a callable, "
                    f"got {type(category_ids_of_labels).__name__}")


def _mask_regions(boxes: torch.Tensor, height: int, width: int) -> list[list[int]]:
    """Integer [x0, y0, x1, y1) regions: each box enlarged by a margin and clipped to the image."""
    pad = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0) * BOX_MARGIN_FRACTION + BOX_MARGIN_PIXELS
    low = (boxes[:, :2] - pad).floor()
    high = (boxes[:, 2:] + pad).ceil()
    x0 = low[:, 0].clamp(0, width)
    y0 = low[:, 1].clamp(0, height)
    x1 = high[:, 0].clamp(0, width)
    y1 = high[:, 1].clamp(0, height)
    return torch.stack([x0, y0, x1, y1], dim=1).long().tolist()


def encode_masks(
    masks: torch.Tensor,
    threshold: float = 0.5,
    boxes: torch.Tensor | None = None,
    indices: Sequence[int] | torch.Tensor | None = None,
) -> list[dict]:
    """Threshold [N, 1, H, W] (or [N, H, W]) mask probabilities and encode them as RLE with str counts.

    With ``boxes`` (xyxy, same pixels as the masks) only each box's enlarged region is thresholded, which
    is exact for Mask R-CNN's pasted masks and avoids reading N full images; without it the whole mask is used.
    ``indices`` picks (and orders) the masks to encode without copying the others; ``boxes`` then holds one
    box per picked mask.
    """
    if masks.dim() == 4:
        masks = masks[:, 0]
    masks = masks.detach().cpu()
    if masks.dtype not in (torch.float32, torch.float64):
        masks = masks.float()
    probabilities = masks.numpy()
    picked = list(range(masks.shape[0])) if indices is None else [int(i) for i in indices]
    height, width = probabilities.shape[1:]
    # One Fortran-ordered [H, W, N] stack, written through a bool view by numpy (no temporaries).
    stack = np.zeros((height, width, len(picked)), dtype=np.uint8, order="F")
    foreground = stack.view(bool)
    if boxes is None:
        np.greater_equal(probabilities[picked].transpose(1, 2, 0), threshold, out=foreground)
    else:
        regions = _mask_regions(boxes.detach().cpu().float().reshape(-1, 4), height, width)
        for slot, (index, (x0, y0, x1, y1)) in enumerate(zip(picked, regions)):
            if x1 > x0 and y1 > y0:
                np.greater_equal(probabilities[index, y0:y1, x0:x1], threshold, out=foreground[y0:y1, x0:x1, slot])
    rles = mask_utils.encode(stack) if picked else []
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def _rescale(output: dict, scale: tuple[float, float], image_size: tuple[int, int] | None) -> dict:
    """Map a detection dict from the model's (resized) input pixels back to the original image."""
    sx, sy = float(scale[0]), float(scale[1])
    rescaled = dict(output)
    rescaled["boxes"] = output["boxes"] * torch.tensor([sx, sy, sx, sy], dtype=output["boxes"].dtype)
    masks = output.get("masks")
    if masks is not None:
        in_h, in_w = masks.shape[-2:]
        height, width = image_size if image_size is not None else (round(in_h * sy), round(in_w * sx))
        masks = masks.reshape(-1, 1, in_h, in_w).float()
        if (height, width) != (in_h, in_w):
            masks = (F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
                     if masks.shape[0] else masks.new_zeros((0, 1, height, width)))
        rescaled["masks"] = masks
    return rescaled


def detections_to_lvis_results(
    image_id: int,
    output: dict[str, torch.Tensor],
    category_ids_of_labels: CategoryMap,
    mask_threshold: float = 0.5,
    max_dets: int = LVIS_MAX_DETS_PER_IMAGE,
    scale: tuple[float, float] | None = None,
    image_size: tuple[int, int] | None = None,
) -> list[dict]:
    """Convert one image's detector output to LVIS result dicts, keeping the ``max_dets`` highest scores.

    ``output`` holds boxes [N, 4] xyxy, labels [N] (1..C), scores [N] and optionally masks [N, 1, H, W]
    probabilities. ``scale = (sx, sy)`` maps model-input pixels to original pixels (original = input * s);
    masks are then resized to ``image_size = (height, width)``, by default the input size times the scale.
    """
    to_category = _category_lookup(category_ids_of_labels)
    masks = output.get("masks")  # large: never copied whole on CPU, only the kept ones are read
    output = {key: value.detach().cpu() for key, value in output.items() if torch.is_tensor(value) and key != "masks"}
    order = torch.argsort(output["scores"].float(), descending=True, stable=True)[: max(int(max_dets), 0)]
    output = {key: value[order] for key, value in output.items()}
    if masks is not None and (masks.device.type != "cpu" or scale is not None):
        masks, order = masks.detach()[order.to(masks.device)].cpu(), torch.arange(len(order))
    if scale is not None:
        output = _rescale({**output, "masks": masks} if masks is not None else output, scale, image_size)
        masks = output.pop("masks", None)
    boxes = output["boxes"].float()
    segmentations = None
    if masks is not None:
        segmentations = encode_masks(masks, mask_threshold, boxes, indices=order)
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    results = []
    for index, (label, score) in enumerate(zip(output["labels"].tolist(), output["scores"].tolist())):
        result = {
            "image_id": int(image_id),
            "category_id": int(to_category(int(label))),
            "bbox": [round(value, 2) for value in xywh[index]],
            "score": float(score),
        }
        if segmentations is not None:
            result["segmentation"] = segmentations[index]
        results.append(result)
    return results


def collate_images_and_targets(batch: list[tuple[Any, Any]]) -> tuple[tuple, tuple]:
    """Keep a batch as (images, targets) tuples: detection images may differ in size."""
    images, targets = zip(*batch)
    return images, targets


def _image_id(target: Any) -> int:
    """The image id from a dataset target dict (int or 0-d / 1-element tensor)."""
    if not isinstance(target, Mapping) or "image_id" not in target:
        raise KeyError("dataset targets must be dicts with an 'image_id' entry for LVIS results")
    value = target["image_id"]
    return int(value.item() if torch.is_tensor(value) else value)


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
) -> list[dict]:
    """Run ``model`` (already on ``device``) over every image of ``dataset``; return LVIS result dicts for all.

    The model returns boxes and masks in the pixels of the image it was given; when the dataset's test transforms
    resized the image, the target's ``orig_size`` maps detections back to the original image.
    ``category_of`` maps a model label to a dataset category id (default: ``dataset.category_of``).
    """
    category_of = dataset_category_lookup(dataset, category_of, "predict_dataset")

    def predict_batch(images: list[torch.Tensor], targets: Sequence[Any]) -> list[dict]:
        results: list[dict] = []
        for image, target, output in zip(images, targets, model(images)):
            if not with_masks:
                output = {key: value for key, value in output.items() if key != "masks"}
            scale, original_size = _back_to_original(image, target)
            results.extend(detections_to_lvis_results(_image_id(target), output, category_of,
                                                      mask_threshold, max_dets, scale, original_size))
        return results

    return run_over_dataset(model, dataset, predict_batch, device, batch_size, num_workers)


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
) -> list[dict]:
    """The inference loop shared by single- and multi-scale testing: batches of ``dataset`` moved to ``device``,
    ``predict_batch(images, targets)`` under ``torch.inference_mode`` with the model in eval mode (its mode is
    restored afterwards); returns all batches' results in dataset order."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_images_and_targets)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    results: list[dict] = []
    try:
        with torch.inference_mode():
            for images, targets in tqdm(loader, desc=desc, unit="batch"):
                results.extend(predict_batch([image.to(device, non_blocking=True) for image in images], targets))
    finally:
        model.train(was_training)
    return results


@dataclass(frozen=True)
class TestConfig:
    """One ``tests:`` entry of config.yaml: single-scale, or multi-scale + flip (``inference/tta.py``)."""

    min_size: int = 800
    max_size: int = 1333
    batch_size: int = 8
    num_workers: int = 0
    max_dets: int = LVIS_MAX_DETS_PER_IMAGE  # detections per image (LVIS allows 300); also sets the model's own cap
    mask_threshold: float = 0.5
    # multi-scale testing (any of these set -> inference/tta.py)
    scales: tuple[int, ...] | None = None  # short sides of the views; null = [min_size]
    flip: bool = False  # also every scale flipped left-right
    merge: str = "nms"  # how the views' detections merge: nms | soft_nms
    merge_iou: float = 0.5
    soft_nms_method: str = "linear"  # linear | gaussian
    scale_ranges: tuple[tuple[float, float], ...] | None = None  # per scale: [min, max) of sqrt(box area), original px
    mask_voting: bool = False  # masks averaged over every view (else from the first scale, unflipped)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "TestConfig":
        """Build from a config dict; unknown keys and inconsistent multi-scale settings raise."""
        reject_unknown_keys("test config", cfg, cls.__dataclass_fields__)
        cfg = dict(cfg)
        if cfg.get("scales") is not None:
            cfg["scales"] = tuple(int(s) for s in cfg["scales"])
        if cfg.get("scale_ranges") is not None:
            cfg["scale_ranges"] = tuple((float(lo), float(hi)) for lo, hi in cfg["scale_ranges"])
        config = cls(**cfg)
        config.validate()
        return config

    def validate(self) -> None:
        """Multi-scale settings that cannot work raise with the key."""
        if self.scales is not None and (not self.scales or min(self.scales) < 1):
            raise ValueError(f"test config: scales must be a non-empty list of positive short sides, got {self.scales}")
        if self.merge not in ("nms", "soft_nms"):
            raise ValueError(f"test config: merge must be 'nms' or 'soft_nms', got {self.merge!r}")
        if self.scale_ranges is not None and len(self.scale_ranges) != len(self.test_scales):
            raise ValueError(f"test config: scale_ranges needs one [min, max] per scale ({len(self.test_scales)}), "
                             f"got {len(self.scale_ranges)}")

    @property
    def multi_scale(self) -> bool:
        """Whether this test needs the multi-scale path (any multi-scale key away from its default)."""
        return (self.scales is not None or self.flip or self.merge != "nms" or self.scale_ranges is not None
                or self.mask_voting)

    @property
    def test_scales(self) -> tuple[int, ...]:
        """The short sides of the views (``[min_size]`` without ``scales``)."""
        return self.scales if self.scales is not None else (self.min_size,)

    def view_size_ranges(self) -> list[tuple[float, float] | None]:
        """Scale-adaptive range of each view, in ``tta.augmented_views`` order (flipped views share their scale's)."""
        per_scale = self.scale_ranges if self.scale_ranges is not None else [None] * len(self.test_scales)
        return [r for r in per_scale for _ in ((0, 1) if self.flip else (0,))]


def predict_annotation_file(
    checkpoint: str | os.PathLike,
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    cfg: TestConfig,
    device: str | torch.device = "cpu",
    score_threshold: float | None = None,
) -> tuple[list[dict], int, float]:
    """Run a model_final.pth over the images of an LVIS-format file (annotations optional).

    Returns (LVIS results, number of images, seconds). ``score_threshold`` raises the model's own detection score
    threshold (e.g. a pseudo-label teacher keeps only confident detections, which skips most mask work).
    """
    from longtail_seg.data.dataset import LVISDetectionDataset
    from longtail_seg.data.transforms import build_test_transforms
    from longtail_seg.models.detector import load_detector

    device = torch.device(device)
    model, meta = load_detector(checkpoint, map_location=device)
    model.to(device)
    model.roi_heads.detections_per_img = cfg.max_dets  # a test-time choice: no retraining to change it
    if score_threshold is not None:
        model.roi_heads.score_thresh = max(float(score_threshold), model.roi_heads.score_thresh)
    transforms = None if cfg.multi_scale else build_test_transforms(cfg.min_size, cfg.max_size)
    dataset = LVISDetectionDataset(annotation_file, image_root, transforms=transforms,
                                   category_ids=meta["category_ids"], with_masks=False)
    start = time.perf_counter()
    if cfg.multi_scale:
        from longtail_seg.inference.tta import predict_dataset_multiscale

        results = predict_dataset_multiscale(model, dataset, cfg, device)
    else:
        results = predict_dataset(model, dataset, device, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                  max_dets=cfg.max_dets, mask_threshold=cfg.mask_threshold)
    return results, len(dataset), time.perf_counter() - start


def write_results(path: str | os.PathLike, results: list[dict]) -> None:
    """Write LVIS result dicts as a JSON list, atomically."""
    atomic_write_json(path, results)
