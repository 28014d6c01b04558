"""Exact class-aware NMS and the top-k shortcut: parity with a pure-Python greedy NMS (hypothesis) and with NMS over
every candidate, at LVIS class ids, negative and sub-pixel coordinates, ties, and the split into class groups."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_iou
from torchvision.ops.boxes import _batched_nms_coordinate_trick

from longtail_seg.models.postprocess import (
    class_aware_nms,
    class_groups,
    image_candidates,
    regression_candidates,
    shift_apart_by_class,
    top_detections,
)


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> list[int]:
    """Textbook per-class greedy NMS in float64, visiting by score descending then index ascending: the kept
    indices in visiting order."""
    boxes = boxes.double()
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        if all(labels[j] != labels[i] or not box_iou(boxes[j][None], boxes[i][None]).item() > iou_threshold
               for j in kept):  # suppressed only above the threshold (a NaN IoU of two empty boxes: not)
            kept.append(i)
    return kept


COORDINATES = st.integers(-40, 2400)


@st.composite
def detections(draw, coordinate=COORDINATES):
    """Up to 40 boxes on a coarse grid (so duplicates, equal scores and IoUs exactly at the threshold occur), labels
    from a few ids near 1203."""
    n = draw(st.integers(0, 40))
    corners = draw(st.lists(st.tuples(coordinate, coordinate), min_size=n, max_size=n))
    sizes = draw(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300)), min_size=n, max_size=n))
    boxes = torch.tensor([[x, y, x + w, y + h] for (x, y), (w, h) in zip(corners, sizes)], dtype=torch.float32)
    scores = torch.tensor(draw(st.lists(st.sampled_from([0.1, 0.25, 0.5, 0.9]), min_size=n, max_size=n)))
    labels = torch.tensor(draw(st.lists(st.sampled_from([1, 1201, 1202, 1203]), min_size=n, max_size=n)),
                          dtype=torch.int64)
    return boxes.reshape(n, 4), scores.reshape(n), labels.reshape(n)


@settings(max_examples=80, deadline=None)
@given(detections(), st.sampled_from([0.0, 0.5, 0.7]), st.sampled_from([None, 3]))
def test_class_aware_nms_is_per_class_greedy_nms(data, iou_threshold, max_boxes_per_call):
    """One call, or class groups of about 3 boxes: same kept boxes in the same order as the textbook algorithm."""
    boxes, scores, labels = data
    kept = class_aware_nms(boxes, scores, labels, iou_threshold, max_boxes_per_call=max_boxes_per_call)
    assert kept.dtype == torch.int64 and kept.tolist() == greedy_nms(boxes, scores, labels, iou_threshold)


@settings(max_examples=60, deadline=None)
@given(detections(), st.integers(1, 8), st.integers(1, 30))
def test_top_detections_equal_the_full_nms_prefix(data, initial_k, max_dets):
    """However small the first k (it grows), the result is the full NMS's first ``max_dets``."""
    boxes, scores, labels = data
    kept = top_detections(boxes, scores, labels, 0.5, max_dets, initial_k=initial_k)
    assert kept.tolist() == greedy_nms(boxes, scores, labels, 0.5)[:max_dets]


def test_sub_pixel_coordinates_the_shift_would_round_run_unshifted():
    """A coordinate of 1e-30 px cannot survive a shift by millions: that class runs on its own and stays exact."""
    boxes = torch.tensor([[1e-30, 0, 10, 10], [0, 0, 10, 10], [5, 0, 15, 10], [2000, 2000, 2400, 2400]])
    labels = torch.tensor([1203, 1203, 7, 7])
    shifted, exact = shift_apart_by_class(boxes.double(), labels)
    assert exact.tolist() == [False, True, True, True]
    assert box_iou(shifted[labels == 7], shifted[labels == 1203]).max() == 0  # classes never overlap
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert class_aware_nms(boxes, scores, labels, 0.5).tolist() == greedy_nms(boxes, scores, labels, 0.5) == [0, 2, 3]


def test_float32_offsets_would_mix_classes_where_float64_ones_do_not():
    """torchvision's offset trick in float32, with label 1203 and a 1333 px image, rounds to 0.125 px: two boxes of
    IoU 0.95 become one box and one suppresses the other at threshold 0.97. The float64 shift keeps both."""
    boxes = torch.tensor([[0.0, 0, 1, 1], [0.05, 0, 1, 1], [1300, 1300, 1333, 1333]])
    scores, labels = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1203, 1203, 1])
    assert box_iou(boxes[:1], boxes[1:2]).item() == pytest.approx(0.95)
    assert _batched_nms_coordinate_trick(boxes, scores, labels, 0.97).tolist() == [0, 2]
    assert class_aware_nms(boxes, scores, labels, 0.97).tolist() == [0, 1, 2]


def test_class_groups_hold_whole_classes_in_ascending_order():
    labels = torch.tensor([5, 1, 5, 2, 2, 1, 9, 5])
    positions = torch.arange(8)
    groups = class_groups(labels, 3, positions)
    assert sorted(torch.cat(groups).tolist()) == list(range(8))
    for group in groups:
        assert group.tolist() == sorted(group.tolist())
        for label in labels[group].unique():
            assert set(torch.nonzero(labels == label).flatten().tolist()) <= set(group.tolist())
    assert [g.tolist() for g in class_groups(labels, 8, positions)] == [list(range(8))]
    assert class_groups(labels[:0], 3, positions[:0]) == []


def test_image_candidates_threshold_clip_and_drop_small_boxes():
    """RoI-major order, clipped after selection, zero-area (after clipping) and sub-threshold candidates gone."""
    scores = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.05, 0.85]])
    boxes = torch.tensor([
        [[0.0, 0, 1, 1], [-5, 2, 30, 40], [0, 0, 20, 20]],
        [[0.0, 0, 1, 1], [1, 1, 2, 2], [25, 5, 35, 15]],   # class 2 box lies right of a 20 px wide image
    ])
    out_boxes, out_scores, labels = image_candidates(scores, boxes, (30, 20), score_thresh=0.1)
    assert labels.tolist() == [1, 2] and out_scores.tolist() == pytest.approx([0.3, 0.2])
    assert out_boxes.tolist() == [[0, 2, 20, 30], [0, 0, 20, 20]]
    empty = image_candidates(scores, boxes, (30, 20), score_thresh=0.9)
    assert [t.shape for t in empty] == [(0, 4), (0,), (0,)]


@pytest.mark.parametrize("num_classes, score_thresh", [(1203, 0.0008), (3, 0.2), (1203, 1.0)])
def test_decoding_only_the_candidates_gives_the_boxes_of_decoding_every_pair(num_classes, score_thresh):
    """Bit for bit the candidates of decoding all R x (C+1) boxes, at LVIS's class count, near-empty and empty."""
    generator = torch.Generator().manual_seed(num_classes)
    rois = 300
    xy = torch.rand(rois, 2, generator=generator) * 1200
    proposals = torch.cat([xy, xy + 1 + torch.rand(rois, 2, generator=generator) * 400], dim=1)
    regression = torch.randn(rois, (num_classes + 1) * 4, generator=generator) * 0.5
    scores = torch.softmax(torch.randn(rois, num_classes + 1, generator=generator) * 3, dim=1)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    every = coder.decode(regression, [proposals])
    expected = image_candidates(scores, every, (800, 1216), score_thresh)
    actual = regression_candidates(scores, regression, proposals, coder, (800, 1216), score_thresh)
    assert all(torch.equal(a, e) for a, e in zip(actual, expected))
    assert (len(actual[0]) > 0) == (score_thresh < 1.0)
