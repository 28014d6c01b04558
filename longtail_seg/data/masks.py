"""Decode LVIS/COCO segmentations (polygons, uncompressed or compressed RLE) to binary masks with pycocotools."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict:
    """Convert any COCO segmentation encoding to a compressed RLE dict."""
    if isinstance(segmentation, list):  # polygons: list of [x0, y0, x1, y1, ...]
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            raise ValueError("polygon segmentation needs at least one polygon with 3 points")
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    if isinstance(segmentation, dict) and "counts" in segmentation:  # compressed RLE
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        return rle
    raise ValueError(f"unknown segmentation format: {type(segmentation).__name__}")


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a segmentation to a (height, width) uint8 mask with values 0/1."""
    return mask_utils.decode(segmentation_to_rle(segmentation, height, width)).astype(np.uint8)


def encode_mask(mask: np.ndarray) -> dict:
    """Encode a binary (H, W) mask as compressed RLE with a JSON-ready (str) ``counts``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle
