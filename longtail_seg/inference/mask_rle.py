"""Box-relative Mask R-CNN masks -> COCO RLEs at any image size, without pasting into the full image.

torchvision pastes each detection's M x M mask into a zero image of the full size (``paste_masks_in_image``), one
float image per detection. Only the pixels inside the detection's integer paste box can be non-zero, so here each
mask is resized to its box exactly as torchvision resizes it (same padding, box expansion, truncation and
``F.interpolate`` call, on the mask's device), only the part inside the image is thresholded, and the RLE of the
whole image is built from that crop: the foreground runs of a mask that is zero outside a box are the crop's runs in
column-major order, shifted to image positions. Memory is O(detections x box area), and the RLEs are exactly those
of thresholding torchvision's pasted masks and encoding them with ``pycocotools.mask.encode``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

# torchvision's paste_masks_in_image pads the M x M mask by one pixel and expands the box by (M + 2) / M to match.
PASTE_PADDING = 1


@dataclass(frozen=True)
class PasteCrops:
    """Where each detection's mask lands, as torchvision pastes it: the size its padded mask is resized to, and the
    part of that resized mask inside the image (offset in the resized mask, position and size in the image)."""

    resized_height: list[int]
    resized_width: list[int]
    top: list[int]  # first row of the crop in the resized mask
    left: list[int]
    y0: np.ndarray  # first row / column of the crop in the image, int64 [N]
    x0: np.ndarray
    height: np.ndarray  # crop size, int64 [N]; 0 x 0 when the box misses the image
    width: np.ndarray


def paste_crops(boxes: torch.Tensor, mask_side: int, image_size: tuple[int, int]) -> PasteCrops:
    """The paste geometry of xyxy ``boxes`` [N, 4] (image pixels) for M x M masks in an image of ``image_size``
    (height, width): torchvision's integer box (expanded by (M + 2) / M, truncated to int64) and its clip to the
    image. A box whose paste box lies wholly outside the image gets an empty crop."""
    image_height, image_width = (int(v) for v in image_size)
    scale = float(mask_side + 2 * PASTE_PADDING) / mask_side
    x_lo, y_lo, x_hi, y_hi = expand_boxes(boxes.detach().cpu(), scale).to(torch.int64).unbind(1)
    resized_width = (x_hi - x_lo + 1).clamp(min=1)
    resized_height = (y_hi - y_lo + 1).clamp(min=1)
    x0, y0 = x_lo.clamp(min=0), y_lo.clamp(min=0)
    width = ((x_hi + 1).clamp(max=image_width) - x0).clamp(min=0)
    height = ((y_hi + 1).clamp(max=image_height) - y0).clamp(min=0)
    empty = (width == 0) | (height == 0)
    width, height = width.masked_fill(empty, 0), height.masked_fill(empty, 0)
    return PasteCrops(resized_height.tolist(), resized_width.tolist(), (y0 - y_lo).tolist(), (x0 - x_lo).tolist(),
                      y0.numpy(), x0.numpy(), height.numpy(), width.numpy())


def thresholded_crops(masks: torch.Tensor, crops: PasteCrops, threshold: float) -> np.ndarray:
    """Every detection's crop of its pasted mask, thresholded (>= ``threshold``), column-major, one after another:
    a bool array of sum(crop areas). Resizing runs on the masks' device; only the thresholded crops come back."""
    padded, _ = expand_masks(masks.detach().reshape(-1, 1, *masks.shape[-2:]), padding=PASTE_PADDING)
    areas = (crops.height * crops.width).tolist()
    flags = torch.empty(sum(areas), dtype=torch.bool, device=masks.device)
    start = 0
    for mask, size, top, left, height, width, area in zip(
        padded, zip(crops.resized_height, crops.resized_width), crops.top, crops.left, crops.height.tolist(),
        crops.width.tolist(), areas,
    ):
        if area == 0:
            continue
        # the call paste_masks_in_image makes, so the resized values (and what passes the threshold) are identical
        resized = F.interpolate(mask[0].expand((1, 1, -1, -1)), size=size, mode="bilinear", align_corners=False)
        crop = resized[0, 0, top:top + height, left:left + width]
        torch.ge(crop.t(), threshold, out=flags[start:start + area].view(width, height))  # column-major
        start += area
    return flags.cpu().numpy()


def crop_run_counts(flags: np.ndarray, crops: PasteCrops, image_size: tuple[int, int]) -> list[np.ndarray]:
    """Uncompressed COCO RLE counts (uint32, column-major, zeros first) of each image-sized mask that is zero
    outside its crop, from the thresholded crops of ``thresholded_crops``. Work and memory are O(sum of crop areas)
    plus O(runs)."""
    image_height, image_width = (int(v) for v in image_size)
    heights, widths = crops.height, crops.width
    areas = heights * widths
    crop_end = np.cumsum(areas)
    crop_start = crop_end - areas
    # A run breaks where the crop starts and ends, and at every column edge unless the crop spans the image height
    # (then a column's last pixel is followed by the next column's first in the image too).
    column_owner = np.repeat(np.arange(len(areas)), widths)
    column_index = np.arange(len(column_owner)) - np.repeat(np.cumsum(widths) - widths, widths)
    column_start = crop_start[column_owner] + heights[column_owner] * column_index
    spans_height = heights[column_owner] == image_height
    first_of_column = column_start[(column_index == 0) | ~spans_height]
    last_in_crop = column_index == widths[column_owner] - 1
    last_of_column = (column_start + heights[column_owner] - 1)[last_in_crop | ~spans_height]
    before, after = np.zeros_like(flags), np.zeros_like(flags)
    before[1:], after[:-1] = flags[:-1], flags[1:]
    before[first_of_column], after[last_of_column] = False, False
    run_first = np.flatnonzero(flags & ~before)
    run_last = np.flatnonzero(flags & ~after)
    owner = np.searchsorted(crop_end, run_first, side="right")  # runs never straddle two crops
    starts = _image_positions(run_first, owner, crops, crop_start, image_height)
    stops = _image_positions(run_last, owner, crops, crop_start, image_height) + 1
    runs_per_mask = np.bincount(owner, minlength=len(areas))
    # counts of one mask: start_1, stop_1 - start_1, start_2 - stop_1, ..., H * W - stop_last (0 runs: H * W)
    edges = np.empty(2 * len(starts), dtype=np.int64)
    edges[0::2], edges[1::2] = starts, stops
    counts = np.diff(edges, prepend=0)
    first_edge = np.cumsum(2 * runs_per_mask) - 2 * runs_per_mask
    with_runs = first_edge[runs_per_mask > 0]
    counts[with_runs] = edges[with_runs]  # a mask's first count is its first start, not the gap to the mask before
    # one array of every mask's counts: its runs' counts, then the zeros after its last run (when there are any)
    total = image_height * image_width
    last_stop = np.zeros(len(areas), dtype=np.int64)
    last_stop[runs_per_mask > 0] = stops[np.cumsum(runs_per_mask)[runs_per_mask > 0] - 1]
    has_tail = last_stop < total  # pycocotools writes no trailing empty run
    lengths = 2 * runs_per_mask + has_tail
    out_start = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), dtype=np.uint32)
    edge_owner = np.repeat(np.arange(len(areas)), 2 * runs_per_mask)
    out[out_start[edge_owner] + np.arange(len(edges)) - first_edge[edge_owner]] = counts
    out[(out_start + 2 * runs_per_mask)[has_tail]] = total - last_stop[has_tail]
    return np.split(out, out_start[1:])


def _image_positions(indices: np.ndarray, owner: np.ndarray, crops: PasteCrops, crop_start: np.ndarray,
                     image_height: int) -> np.ndarray:
    """Column-major image positions (x * H + y) of pixels given by their index in the concatenated crops."""
    offset = indices - crop_start[owner]
    column, row = np.divmod(offset, crops.height[owner])
    return (crops.x0[owner] + column) * image_height + crops.y0[owner] + row


def encode_box_masks(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], threshold: float = 0.5
) -> list[dict]:
    """COCO RLEs (str counts) of box-relative mask probabilities [N, 1, M, M] pasted into their xyxy ``boxes``
    [N, 4] in an image of ``image_size`` (height, width) and thresholded at ``>= threshold``: the RLEs of
    torchvision's ``paste_masks_in_image`` + threshold + ``pycocotools.mask.encode``, built from the box crops."""
    if not 0 < threshold:
        raise ValueError(f"mask threshold must be > 0, got {threshold}: at {threshold} every pixel outside a box "
                         "would count as foreground; set mask_threshold in (0, 1] in the tests section")
    if masks.shape[0] != boxes.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks for {boxes.shape[0]} boxes: one box-relative mask per box needed")
    if masks.shape[0] == 0:
        return []
    crops = paste_crops(boxes, masks.shape[-1], image_size)
    flags = thresholded_crops(masks, crops, threshold)
    counts = crop_run_counts(flags, crops, image_size)
    size = [int(image_size[0]), int(image_size[1])]
    rles = mask_utils.frPyObjects([{"size": size, "counts": c} for c in counts], *size)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles
