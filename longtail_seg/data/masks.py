"""Decode LVIS/COCO segmentations (polygons, uncompressed or compressed RLE) to binary masks with pycocotools."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

MIN_POLYGON_COORDS = 6  # 3 points
_NUMBER_TYPES = {int, float}  # what JSON numbers parse to


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict:
    """Convert any COCO segmentation encoding to a compressed RLE dict.

    A malformed segmentation raises ``ValueError`` saying what is wrong (the caller adds the file and record):
    a polygon with an odd count, fewer than 6 coordinates or non-numbers (pycocotools would drop it, or read
    a 4-number polygon as a box), an RLE whose ``size`` is not ``[height, width]`` (a shape error later), or
    uncompressed counts that do not cover the image (pycocotools would decode garbage).
    """
    if isinstance(segmentation, list):  # polygons: list of [x0, y0, x1, y1, ...]
        if not segmentation:
            raise ValueError("polygon segmentation is an empty list; it needs at least one polygon of 3 points")
        for index, polygon in enumerate(segmentation):
            problem = polygon_problem(polygon)
            if problem is not None:
                raise ValueError(f"polygon {index}: {problem}")
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation:
        problem = _rle_size_problem(segmentation, height, width)
        if problem is None and isinstance(segmentation["counts"], list):
            problem = counts_problem(segmentation["counts"], height, width)
        if problem is not None:
            raise ValueError(f"RLE {problem}")
        if isinstance(segmentation["counts"], list):  # uncompressed RLE
            return mask_utils.frPyObjects(segmentation, height, width)
        rle = dict(segmentation)  # compressed RLE
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        return rle
    raise ValueError(f"unknown segmentation format: {type(segmentation).__name__}")


def polygon_problem(polygon: Any) -> str | None:
    """What is wrong with one polygon of a segmentation, or None for a flat list of >= 6 finite numbers, even count."""
    if not isinstance(polygon, list):
        return f"is a {type(polygon).__name__}, not a list of coordinates [x0, y0, x1, y1, ...]"
    if not set(map(type, polygon)) <= _NUMBER_TYPES:  # exact types, not bool (map/set: C speed on 1M polygons)
        bad = next(v for v in polygon if type(v) not in _NUMBER_TYPES)
        return f"holds {bad!r}, which is not a number"
    if len(polygon) % 2:
        return f"has an odd number of coordinates ({len(polygon)}); a polygon is x, y pairs"
    if len(polygon) < MIN_POLYGON_COORDS:
        return f"has {len(polygon)} coordinates, fewer than 3 points ({MIN_POLYGON_COORDS} coordinates)"
    if not math.isfinite(sum(polygon)):
        return "has a NaN or infinite coordinate"
    return None


def _rle_size_problem(rle: dict, height: int, width: int) -> str | None:
    """What is wrong with an RLE's ``size`` for a ``height`` x ``width`` image, or None."""
    size = rle.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        return f"has size {size!r}, not [height, width]"
    if list(size) != [height, width]:
        return f"size {list(size)} is not the image's [height, width] [{height}, {width}]"
    return None


def counts_problem(counts: list, height: int, width: int) -> str | None:
    """What is wrong with RLE run lengths for a ``height`` x ``width`` mask (non-negative ints summing to h * w)."""
    if not all(type(c) is int and c >= 0 for c in counts):
        return "counts must be non-negative integers"
    if sum(counts) != height * width:
        return f"counts sum to {sum(counts)}, not height * width = {height * width}"
    return None


def compressed_counts(counts: str | bytes) -> list[int]:
    """Run lengths of a compressed RLE string, parsed as pycocotools' ``rleFrString`` does; ``ValueError`` on a
    malformed string (pycocotools itself decodes those to garbage without an error)."""
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    runs: list[int] = []
    position = 0
    while position < len(data):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(data):
                raise ValueError("compressed RLE counts end in the middle of a number (truncated string)")
            char = data[position] - 48
            if not 0 <= char < 64:
                raise ValueError(f"compressed RLE counts hold {chr(data[position])!r} at {position}, outside '0'..'o'")
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            position += 1
            shift += 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a segmentation to a (height, width) uint8 mask with values 0/1."""
    return mask_utils.decode(segmentation_to_rle(segmentation, height, width)).astype(np.uint8)


def encode_mask(mask: np.ndarray) -> dict:
    """Encode a binary (H, W) mask as compressed RLE with a JSON-ready (str) ``counts``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle
