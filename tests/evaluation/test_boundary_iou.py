"""Boundary IoU against a per-pixel reference (the definition, pixel by pixel) on small random masks, and its edges:
empty masks, masks at the image border, 1-pixel masks, the band width of LVIS images."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from longtail_seg.evaluation.boundary_iou import (
    boundary_ap_iou,
    boundary_iou,
    decode_box,
    dilation_pixels,
    mask_boundary,
    rle_boundary,
)
from tests.evaluation.hand_lvis import rle_of


def reference_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """A pixel of the mask is on the boundary when a background pixel, or a pixel outside the image, lies within
    Chebyshev distance d: checked pixel by pixel."""
    height, width = mask.shape
    out = np.zeros_like(mask, dtype=bool)
    for y in range(height):
        for x in range(width):
            if not mask[y, x]:
                continue
            out[y, x] = any(not (0 <= y + dy < height and 0 <= x + dx < width) or not mask[y + dy, x + dx]
                            for dy in range(-d, d + 1) for dx in range(-d, d + 1))
    return out


def reference_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def full_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """Our boundary pasted back into the image."""
    boundary = mask_boundary(mask, d)
    out = np.zeros(mask.shape, dtype=bool)
    h, w = boundary.pixels.shape
    out[boundary.y0:boundary.y0 + h, boundary.x0:boundary.x0 + w] = boundary.pixels
    return out


masks = st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1), st.floats(0.05, 0.95)).map(
    lambda a: (np.random.default_rng(a[2]).random((a[0], a[1])) < a[3]).astype(np.uint8))


@settings(max_examples=60, deadline=None)
@given(mask=masks, d=st.integers(1, 4))
def test_boundary_matches_the_per_pixel_reference(mask: np.ndarray, d: int) -> None:
    np.testing.assert_array_equal(full_boundary(mask, d), reference_boundary(mask, d))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shape=st.tuples(st.integers(1, 10), st.integers(1, 10)),
       n_dt=st.integers(0, 3), n_gt=st.integers(0, 3), d=st.integers(1, 3))
def test_boundary_iou_and_boundary_ap_iou_match_the_reference(seed, shape, n_dt, n_gt, d) -> None:
    rng = np.random.default_rng(seed)
    dts = [(rng.random(shape) < rng.uniform(0.1, 0.9)).astype(np.uint8) for _ in range(n_dt)]
    gts = [(rng.random(shape) < rng.uniform(0.1, 0.9)).astype(np.uint8) for _ in range(n_gt)]
    expected_boundary = np.array([[reference_iou(reference_boundary(a, d), reference_boundary(b, d)) for b in gts]
                                  for a in dts]).reshape(n_dt, n_gt)
    expected_mask = np.array([[reference_iou(a.astype(bool), b.astype(bool)) for b in gts]
                              for a in dts]).reshape(n_dt, n_gt)
    dt_rles, gt_rles = [rle_of(m) for m in dts], [rle_of(m) for m in gts]
    np.testing.assert_allclose(boundary_iou(dt_rles, gt_rles, d), expected_boundary)
    np.testing.assert_allclose(boundary_ap_iou(dt_rles, gt_rles, 0.0, d), np.minimum(expected_mask, expected_boundary))
    # pruned: pairs below min_iou keep their mask IoU (below min_iou), the others are exact
    pruned = boundary_ap_iou(dt_rles, gt_rles, 0.5, d)
    exact = np.minimum(expected_mask, expected_boundary)
    np.testing.assert_allclose(pruned[expected_mask >= 0.5], exact[expected_mask >= 0.5])
    assert np.all(pruned[expected_mask < 0.5] < 0.5)


@settings(max_examples=60, deadline=None)
@given(mask=masks, corners=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)))
def test_decode_box_equals_pycocotools_decode(mask: np.ndarray, corners) -> None:
    height, width = mask.shape
    y0, y1 = sorted(int(c * height) for c in corners[:2])
    x0, x1 = sorted(int(c * width) for c in corners[2:])
    rle = rle_of(mask)
    np.testing.assert_array_equal(decode_box(rle, y0, x0, y1, x1), mask_utils.decode(rle)[y0:y1, x0:x1] == 1)
    assert decode_box(rle, 0, 0, height, width).shape == (height, width)


def test_decode_box_reads_long_runs_and_byte_counts() -> None:
    mask = np.zeros((480, 640), np.uint8)
    mask[100:400, 50:600] = 1  # runs of up to 480 * 50 pixels: numbers of several characters
    mask[0, 639] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))  # bytes counts, as pycocotools returns them
    np.testing.assert_array_equal(decode_box(rle, 0, 0, 480, 640), mask == 1)
    np.testing.assert_array_equal(decode_box(rle, 90, 40, 110, 60), mask[90:110, 40:60] == 1)
    uncompressed = {"size": [3, 2], "counts": [1, 2, 3]}  # column-major: 0, 1, 1 | 0, 0, 0
    assert rle_boundary(uncompressed, 1).pixels.tolist() == [[True], [True]]


def test_band_width_is_two_percent_of_the_diagonal() -> None:
    assert dilation_pixels(480, 640) == 16  # diagonal 800
    assert dilation_pixels(64, 64) == 2  # 1.81 rounds to 2
    assert dilation_pixels(10, 10) == 1  # 0.28 rounds to 0: at least 1
    rle = rle_of(np.ones((480, 640), dtype=np.uint8))
    boundary = rle_boundary(rle)
    assert boundary.area == 480 * 640 - (480 - 32) * (640 - 32)  # a 16 px band inside the image border


def test_empty_masks() -> None:
    empty, full = np.zeros((6, 7), np.uint8), np.ones((6, 7), np.uint8)
    assert mask_boundary(empty, 2).area == 0
    ious = boundary_iou([rle_of(empty), rle_of(full)], [rle_of(empty), rle_of(full)], 1)
    np.testing.assert_allclose(ious, [[0.0, 0.0], [0.0, 1.0]])  # two empty masks: 0, as pycocotools
    assert boundary_ap_iou([rle_of(empty)], [rle_of(empty)], 0.0, 1).tolist() == [[0.0]]
    assert boundary_ap_iou([], [rle_of(full)]).shape == (0, 1)


def test_mask_touching_the_border_has_a_boundary_there() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[:, :6] = 1  # the left 6 columns: its left, top and bottom edges are the image border
    expected = mask.astype(bool)
    expected[1:9, 1:5] = False  # at d = 1 only the outer ring of the 10 x 6 block is boundary
    np.testing.assert_array_equal(full_boundary(mask, 1), expected)
    np.testing.assert_array_equal(reference_boundary(mask, 1), expected)
    assert mask_boundary(mask, 1).area == 60 - 8 * 4


def test_one_pixel_masks() -> None:
    a = np.zeros((5, 5), np.uint8)
    a[2, 2] = 1
    b = np.zeros((5, 5), np.uint8)
    b[2, 3] = 1
    assert mask_boundary(a, 3).area == 1
    np.testing.assert_allclose(boundary_iou([rle_of(a)], [rle_of(a), rle_of(b)], 1), [[1.0, 0.0]])


def test_boundary_ap_iou_is_the_min_of_mask_and_boundary_iou_by_hand() -> None:
    # a 10x10 square and the same square with its right column cut: mask IoU 90/100. At d = 1 the boundaries are
    # the outer rings, 36 and 34 px; they share the top and bottom rows of the cut square (2 x 9) and its left
    # column between them (8): 26, so boundary IoU = 26 / (36 + 34 - 26) = 26 / 44.
    full = np.zeros((12, 12), np.uint8)
    full[1:11, 1:11] = 1
    cut = full.copy()
    cut[:, 10] = 0
    expected = reference_iou(reference_boundary(cut, 1), reference_boundary(full, 1))
    assert expected == pytest.approx(26 / 44)
    value = boundary_ap_iou([rle_of(cut)], [rle_of(full)], 0.0, 1)[0, 0]
    assert value == pytest.approx(min(0.9, 26 / 44))
    assert mask_utils.iou([rle_of(cut)], [rle_of(full)], [0])[0, 0] == pytest.approx(0.9)
