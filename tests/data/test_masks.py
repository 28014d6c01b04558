"""Polygon and RLE decoding against hand-drawn masks."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from longtail_seg.data.masks import decode_segmentation, encode_mask, segmentation_to_rle


def _reference_mask() -> np.ndarray:
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[4:12, 5:25] = 1
    mask[14:18, 2:6] = 1
    return mask


def test_polygon_rectangle_decodes_to_its_pixels():
    # pycocotools rasterises polygon [2,3]-[8,3]-[8,9]-[2,9] to columns 2..7 and rows 3..8 (half-open at the far edge).
    mask = decode_segmentation([[2, 3, 8, 3, 8, 9, 2, 9]], 12, 12)
    expected = np.zeros((12, 12), dtype=np.uint8)
    expected[3:9, 2:8] = 1
    np.testing.assert_array_equal(mask, expected)


def test_two_polygons_are_merged():
    mask = decode_segmentation([[0, 0, 4, 0, 4, 4, 0, 4], [6, 6, 10, 6, 10, 10, 6, 10]], 12, 12)
    assert mask[1, 1] == 1 and mask[7, 7] == 1 and mask[5, 5] == 0


def test_compressed_rle_round_trip_with_str_counts():
    mask = _reference_mask()
    rle = encode_mask(mask)
    assert isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_segmentation(rle, 20, 30), mask)


def test_uncompressed_rle_decodes():
    mask = _reference_mask()
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    uncompressed = {"size": [20, 30], "counts": counts}
    np.testing.assert_array_equal(decode_segmentation(uncompressed, 20, 30), mask)


def test_rle_area_matches_mask():
    mask = _reference_mask()
    assert mask_utils.area(segmentation_to_rle(encode_mask(mask), 20, 30)) == mask.sum()


def test_unknown_format_is_rejected():
    with pytest.raises(ValueError, match="unknown segmentation format"):
        decode_segmentation("not a mask", 4, 4)


@pytest.mark.parametrize("segmentation, expected", [
    ([[0, 0, 4, 0, 4]], r"polygon 0: has an odd number of coordinates \(5\)"),
    ([[0, 0, 4, 0, 4, 4, 0, 4], [1, 1, 3, 3]], r"polygon 1: has 4 coordinates, fewer than 3 points"),  # not a box
    ([[0, 0, 4, 0, None, 4]], r"polygon 0: holds None, which is not a number"),
    ([[0, 0, 4, 0, float("nan"), 4]], r"polygon 0: has a NaN or infinite coordinate"),
    ([], r"polygon segmentation is an empty list"),
    ({"size": [6, 6], "counts": [144]}, r"RLE size \[6, 6\] is not the image's \[height, width\] \[12, 12\]"),
    ({"size": [12, 12], "counts": [100]}, r"RLE counts sum to 100, not height \* width = 144"),
    ({"counts": "abc"}, r"RLE has size None, not \[height, width\]"),
])
def test_malformed_segmentations_raise_instead_of_being_dropped(segmentation, expected):
    with pytest.raises(ValueError, match=expected):
        segmentation_to_rle(segmentation, 12, 12)
