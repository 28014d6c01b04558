"""Boundary IoU on RLE masks (Cheng, Girshick, Dollár, Berg, Kirillov 2021, "Boundary IoU: Improving Object-Centric
Image Segmentation Evaluation") and the IoU of boundary AP: min(mask IoU, boundary IoU).

A mask's boundary is its pixels within Chebyshev distance d of a background pixel, where everything outside the image
is background (a mask cut by the image border has a boundary there), with d = round(0.02 x image diagonal), at least
1: the mask minus its erosion by a (2d+1) x (2d+1) square. Only each mask's tight box is decoded from its RLE, and
its boundary is kept there (outside the box the mask is background, so the box is all the erosion needs); the
intersection of two boundaries is counted on the overlap of their boxes only. Pairs whose mask IoU is below
``min_iou`` keep their mask IoU (an upper bound of the min), so an evaluator passes its lowest threshold and no mask
of a pair that cannot match is decoded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

DILATION_RATIO = 0.02  # the boundary band, as a fraction of the image diagonal (the Boundary IoU paper's choice)


def dilation_pixels(height: int, width: int, ratio: float = DILATION_RATIO) -> int:
    """The band width d in pixels of an image: round(ratio x diagonal), at least 1 (640 x 480 -> 16)."""
    return max(1, int(round(ratio * math.hypot(height, width))))


@dataclass(frozen=True)
class Boundary:
    """A mask's boundary pixels inside the mask's tight box, whose top-left corner is (y0, x0)."""

    y0: int
    x0: int
    pixels: np.ndarray  # bool, (box height, box width); (0, 0) for an empty mask

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.pixels))


def mask_boundary(mask: np.ndarray, dilation: int) -> Boundary:
    """The boundary of a binary (H, W) mask: its pixels with a background pixel (or the outside) within ``dilation``."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return Boundary(0, 0, np.zeros((0, 0), dtype=bool))
    crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(bool)
    return Boundary(int(rows[0]), int(cols[0]), crop & ~_erode(crop, dilation))


def _erode(crop: np.ndarray, dilation: int) -> np.ndarray:
    """Erosion of a bool crop by a (2d+1) x (2d+1) square, everything outside the crop being background: one axis
    at a time (a square is separable)."""
    rows = _erode_rows(crop, dilation)
    return _erode_rows(np.ascontiguousarray(rows.T), dilation).T


def _erode_rows(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Whether all pixels within ``dilation`` along each row are set (outside counts as unset): ANDs of windows
    that double in length (1, 2, 4, ...), then two overlapping ones cover the 2d+1 window."""
    window = 2 * dilation + 1
    anded = np.pad(mask, ((0, 0), (dilation, dilation)))
    length = 1  # anded[:, i] is the AND of padded[:, i : i + length]
    while 2 * length <= window:
        anded = anded[:, :-length] & anded[:, length:]
        length *= 2
    width = mask.shape[1]
    return anded[:, :width] & anded[:, window - length:window - length + width]


def rle_boundary(rle: dict, dilation: int | None = None) -> Boundary:
    """The boundary of one RLE mask; ``dilation`` defaults to the image's (``dilation_pixels``). Only the mask's box
    is decoded (``decode_box``)."""
    height, width = rle["size"]
    d = dilation_pixels(height, width) if dilation is None else dilation
    if not isinstance(rle["counts"], (str, bytes)):  # uncompressed counts: compress, as pycocotools reads both
        rle = mask_utils.frPyObjects(rle, height, width)
    x, y, w, h = (int(round(v)) for v in mask_utils.toBbox(rle))
    if w == 0 or h == 0:
        return Boundary(0, 0, np.zeros((0, 0), dtype=bool))
    crop = decode_box(rle, y, x, y + h, x + w)
    return Boundary(y, x, crop & ~_erode(crop, d))


def rle_counts(counts: str | bytes) -> np.ndarray:
    """The run lengths of a compressed RLE string (the COCO format: 5 bits a character, 0x20 continues a number,
    0x10 the sign of its last character, from the fourth run on a difference to the run two before), vectorised."""
    raw = counts.encode("ascii") if isinstance(counts, str) else counts
    codes = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    ends = np.flatnonzero((codes & 0x20) == 0)  # the last character of each number
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    number = np.repeat(np.arange(len(ends)), lengths)
    shifted = (codes & 0x1F) << (5 * (np.arange(len(codes)) - starts[number]))
    values = np.bincount(number, weights=shifted, minlength=len(ends)).astype(np.int64)
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # run m >= 3 adds run m - 2: both chains are cumulative sums
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def decode_box(rle: dict, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """The [y0, y1) x [x0, x1) part of a compressed RLE mask as a bool array, decoding only columns x0..x1 (RLE
    runs go down the columns)."""
    height = rle["size"][0]
    runs = rle_counts(rle["counts"])
    ends = np.cumsum(runs)
    first, last = x0 * height, x1 * height
    lengths = np.clip(ends, first, last) - np.clip(ends - runs, first, last)
    values = (np.arange(len(runs)) % 2).astype(bool)  # runs alternate background, foreground
    return np.repeat(values, lengths).reshape(x1 - x0, height).T[y0:y1]


def boundary_intersection(a: Boundary, b: Boundary) -> int:
    """Pixels in both boundaries, counted on the overlap of their boxes."""
    y0, x0 = max(a.y0, b.y0), max(a.x0, b.x0)
    y1 = min(a.y0 + a.pixels.shape[0], b.y0 + b.pixels.shape[0])
    x1 = min(a.x0 + a.pixels.shape[1], b.x0 + b.pixels.shape[1])
    if y1 <= y0 or x1 <= x0:
        return 0
    part_a = a.pixels[y0 - a.y0:y1 - a.y0, x0 - a.x0:x1 - a.x0]
    part_b = b.pixels[y0 - b.y0:y1 - b.y0, x0 - b.x0:x1 - b.x0]
    return int(np.count_nonzero(part_a & part_b))


def boundary_pair_iou(a: Boundary, b: Boundary) -> float:
    """IoU of two boundaries; 0 when both are empty (as pycocotools scores two empty masks)."""
    inter = boundary_intersection(a, b)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def boundary_iou(dt_rles: Sequence[dict], gt_rles: Sequence[dict], dilation: int | None = None) -> np.ndarray:
    """Boundary IoU of every (detection, ground truth) pair of one image's RLE masks: a (len(dt), len(gt)) array."""
    dt = [rle_boundary(r, dilation) for r in dt_rles]
    gt = [rle_boundary(r, dilation) for r in gt_rles]
    out = np.zeros((len(dt), len(gt)))
    for i, a in enumerate(dt):
        for j, b in enumerate(gt):
            out[i, j] = boundary_pair_iou(a, b)
    return out


def boundary_ap_iou(
    dt_rles: Sequence[dict], gt_rles: Sequence[dict], min_iou: float = 0.0, dilation: int | None = None
) -> np.ndarray:
    """The IoU of boundary AP, min(mask IoU, boundary IoU), of every (detection, ground truth) pair of one image.

    Only pairs with mask IoU >= ``min_iou`` get their boundary IoU (and only their masks are decoded); the others
    keep their mask IoU, which is below ``min_iou`` and an upper bound of the min: pass an evaluator's lowest IoU
    threshold and its matches are unchanged.
    """
    if not dt_rles or not gt_rles:
        return np.zeros((len(dt_rles), len(gt_rles)))
    mask_iou = np.asarray(mask_utils.iou(list(dt_rles), list(gt_rles), [0] * len(gt_rles)), dtype=np.float64)
    mask_iou = mask_iou.reshape(len(dt_rles), len(gt_rles))
    out = mask_iou.copy()
    dt_boundaries: dict[int, Boundary] = {}
    gt_boundaries: dict[int, Boundary] = {}
    for i, j in np.argwhere(mask_iou >= min_iou):  # every pair when min_iou is 0
        if i not in dt_boundaries:
            dt_boundaries[i] = rle_boundary(dt_rles[i], dilation)
        if j not in gt_boundaries:
            gt_boundaries[j] = rle_boundary(gt_rles[j], dilation)
        out[i, j] = min(mask_iou[i, j], boundary_pair_iou(dt_boundaries[i], gt_boundaries[j]))
    return out
