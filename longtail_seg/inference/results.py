"""Detections -> LVIS results: the result dicts (xywh boxes, scores, dataset category ids, RLE masks) and the JSON.

Shared by single-scale (``inference/predict.py``) and multi-scale testing (``inference/tta.py``). Masks come
box-relative ([N, 1, M, M], what ``Detector.detect`` and mask voting give): each is pasted only inside its box, at
the original image size, and encoded from that crop (``inference/mask_rle.py``), so no full-image mask is ever
built. Full-image masks ([N, 1, H, W], what a torchvision model's forward gives) are still accepted: each is
thresholded only inside its (slightly enlarged) box, straight into one Fortran-ordered uint8 [H, W, N] stack, which
a single ``pycocotools.mask.encode`` call turns into RLEs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from longtail_seg.inference.config import LVIS_MAX_DETS_PER_IMAGE
from longtail_seg.inference.mask_rle import encode_box_masks
from longtail_seg.io_utils import atomic_write_json

# Mask R-CNN pastes its M x M mask into the box enlarged by (M + 2) / M (7% for M = 28) plus one pixel;
# thresholding inside the box enlarged by 10% + 2 px therefore sees every foreground pixel.
BOX_MARGIN_FRACTION = 0.1
BOX_MARGIN_PIXELS = 2.0

CategoryMap = Sequence[int] | Mapping[int, int] | Callable[[int], int]


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
    """Map a detection dict with full-image masks from the model's (resized) input pixels back to the original
    image (boxes scaled, masks resized bilinearly)."""
    rescaled = dict(output, boxes=_scaled_boxes(output["boxes"], scale))
    masks = output.get("masks")
    if masks is not None:
        in_h, in_w = masks.shape[-2:]
        height, width = image_size if image_size is not None else (round(in_h * scale[1]), round(in_w * scale[0]))
        masks = masks.reshape(-1, 1, in_h, in_w).float()
        if (height, width) != (in_h, in_w):
            masks = (F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
                     if masks.shape[0] else masks.new_zeros((0, 1, height, width)))
        rescaled["masks"] = masks
    return rescaled


def _scaled_boxes(boxes: torch.Tensor, scale: tuple[float, float]) -> torch.Tensor:
    """xyxy boxes in model-input pixels -> original pixels (original = input * (sx, sy))."""
    sx, sy = float(scale[0]), float(scale[1])
    return boxes * torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)


def detections_to_lvis_results(
    image_id: int,
    output: dict[str, torch.Tensor],
    category_ids_of_labels: CategoryMap,
    mask_threshold: float = 0.5,
    max_dets: int = LVIS_MAX_DETS_PER_IMAGE,
    scale: tuple[float, float] | None = None,
    image_size: tuple[int, int] | None = None,
    box_relative: bool = False,
) -> list[dict]:
    """Convert one image's detector output to LVIS result dicts, keeping the ``max_dets`` highest scores.

    ``output`` holds boxes [N, 4] xyxy, labels [N] (1..C), scores [N] and optionally masks. ``scale = (sx, sy)``
    maps model-input pixels to original pixels (original = input * s); ``image_size = (height, width)`` is the
    original image's. With ``box_relative`` the masks are [N, 1, M, M] probabilities inside each box (pasted at the
    original size with the scaled boxes, as torchvision's postprocess pastes; ``image_size`` required); otherwise
    [N, 1, H, W] full-image probabilities in input pixels, resized to ``image_size`` (by default the input size
    times the scale).
    """
    if box_relative and output.get("masks") is not None and image_size is None:
        raise ValueError("box-relative masks need image_size=(height, width) of the image they are pasted into")
    masks = output.get("masks")  # large or on the device: only the kept ones are read
    output = {key: value.detach().cpu() for key, value in output.items() if torch.is_tensor(value) and key != "masks"}
    order = torch.argsort(output["scores"].float(), descending=True, stable=True)[: max(int(max_dets), 0)]
    output = {key: value[order] for key, value in output.items()}
    segmentations = None
    if box_relative:
        boxes = output["boxes"] if scale is None else _scaled_boxes(output["boxes"], scale)
        boxes = boxes.float()
        if masks is not None:
            segmentations = encode_box_masks(masks.detach()[order.to(masks.device)], boxes, image_size,
                                             mask_threshold)
    else:
        if masks is not None and (masks.device.type != "cpu" or scale is not None):
            masks, order = masks.detach()[order.to(masks.device)].cpu(), torch.arange(len(order))
        if scale is not None:
            output = _rescale({**output, "masks": masks} if masks is not None else output, scale, image_size)
            masks = output.pop("masks", None)
        boxes = output["boxes"].float()
        if masks is not None:
            segmentations = encode_masks(masks, mask_threshold, boxes, indices=order)
    return result_dicts(image_id, boxes, output["labels"], output["scores"], category_ids_of_labels, segmentations,
                        output.get("mask_scores"))


def result_dicts(
    image_id: int,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    category_ids_of_labels: CategoryMap,
    segmentations: list[dict] | None = None,
    mask_scores: torch.Tensor | None = None,
) -> list[dict]:
    """LVIS result dicts from one image's xyxy ``boxes`` [N, 4], ``labels`` and ``scores`` (and RLEs): bbox as
    xywh rounded to 2 decimals, category ids looked up once per distinct label. With RLEs and ``mask_scores`` (a
    MaskIoU head's) each result also holds ``mask_score``, the score its segm evaluation uses (``score`` stays the
    class score, the bbox evaluation's)."""
    boxes = boxes.detach().cpu().float()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).numpy().astype(np.float64)
    # float32 values times 100 are exact in float64, so numpy's rounding equals Python's round(value, 2)
    bboxes = np.round(xywh, 2).tolist()
    categories = _category_ids(labels.detach().cpu().numpy(), category_ids_of_labels)
    image_id = int(image_id)
    if segmentations is None:
        return [{"image_id": image_id, "category_id": category, "bbox": bbox, "score": score}
                for category, bbox, score in zip(categories, bboxes, scores.detach().cpu().tolist())]
    results = [{"image_id": image_id, "category_id": category, "bbox": bbox, "score": score, "segmentation": rle}
               for category, bbox, score, rle in zip(categories, bboxes, scores.detach().cpu().tolist(), segmentations)]
    if mask_scores is not None:
        for result, mask_score in zip(results, mask_scores.detach().cpu().float().tolist()):
            result["mask_score"] = mask_score
    return results


def _category_ids(labels: np.ndarray, category_ids_of_labels: CategoryMap) -> list[int]:
    """Dataset category id of each model label (one lookup per distinct label)."""
    to_category = _category_lookup(category_ids_of_labels)
    distinct, inverse = np.unique(labels.astype(np.int64), return_inverse=True)
    ids = np.array([int(to_category(int(label))) for label in distinct.tolist()], dtype=np.int64)
    return ids[inverse.reshape(-1)].tolist()


def image_id_of(target: Any) -> int:
    """The image id from a dataset target dict (int or 0-d / 1-element tensor)."""
    if not isinstance(target, Mapping) or "image_id" not in target:
        raise KeyError("dataset targets must be dicts with an 'image_id' entry for LVIS results")
    value = target["image_id"]
    return int(value.item() if torch.is_tensor(value) else value)


def check_mask_sizes(results: Sequence[dict], image_sizes: Mapping[int, tuple[int, int]], source: str) -> None:
    """Raise naming the first result whose RLE mask is not of its image's (height, width), or whose image is not
    in ``image_sizes``. Evaluation reads a results file's masks through hotcoco and looks at one mask itself, so
    every mask is checked here, once, when predictions are written (a plain loop: ~1 s per million results)."""
    for index, result in enumerate(results):
        segmentation = result.get("segmentation")
        if segmentation is None:
            continue
        expected = image_sizes.get(result["image_id"])
        size = segmentation.get("size") if isinstance(segmentation, Mapping) else None
        if expected is None or size is None or size[0] != expected[0] or size[1] != expected[1]:
            raise ValueError(
                f"{source}: result {index} (image {result['image_id']}) has a mask of size {size}, but the image is "
                f"{expected} (height, width): masks must be encoded at the original image size; this is a bug in "
                "the inference code that wrote it")


def write_results(path: str | os.PathLike, results: list[dict]) -> None:
    """Write LVIS result dicts as a JSON list, atomically."""
    atomic_write_json(path, results)
