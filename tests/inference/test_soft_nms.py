"""Soft-NMS against hand-computed decays, class separation, properties over random boxes (hypothesis), a float64
per-class reference, and the one-box-at-a-time loop it vectorises."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou, nms

from longtail_seg.inference.soft_nms import soft_nms, soft_nms_one_at_a_time

# box 1 overlaps box 0 with IoU 0.6 (10x10 boxes, shifted by 2.5: 75 / 125); box 2 overlaps box 0 by 0.25
BOXES = torch.tensor([[0.0, 0, 10, 10], [2.5, 0, 12.5, 10], [6.0, 0, 16, 10]])
SCORES = torch.tensor([0.9, 0.8, 0.7])
LABELS = torch.tensor([1, 1, 1])


def test_hand_computed_ious_of_the_fixture():
    ious = box_iou(BOXES, BOXES)
    assert ious[0, 1].item() == pytest.approx(0.6)
    assert ious[0, 2].item() == pytest.approx(40 / 160)
    assert ious[1, 2].item() == pytest.approx(65 / 135)


def test_linear_decays_only_overlaps_at_or_above_the_threshold():
    keep, scores = soft_nms(BOXES, SCORES, LABELS, iou_threshold=0.5, method="linear")
    # pick 0 (0.9): box 1 (IoU 0.6) -> 0.8 * 0.4 = 0.32, box 2 (IoU 0.25) unchanged; pick 2 (0.7): box 1 vs box 2
    # IoU 0.48 < 0.5 -> unchanged; pick 1 (0.32)
    assert keep.tolist() == [0, 2, 1]
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.32])


def test_gaussian_decays_every_overlap():
    sigma = 0.5
    keep, scores = soft_nms(BOXES, SCORES, LABELS, method="gaussian", sigma=sigma)
    s1 = 0.8 * math.exp(-0.36 / sigma)            # 0.389
    s2 = 0.7 * math.exp(-(0.25**2) / sigma)       # 0.618 after the first pick
    iou12 = 65 / 135
    s1 *= math.exp(-(iou12**2) / sigma)           # then decayed again by box 2
    assert keep.tolist() == [0, 2, 1]
    assert scores.tolist() == pytest.approx([0.9, s2, s1], rel=1e-5)


def test_classes_never_interact_and_threshold_drops_low_scores():
    keep, scores = soft_nms(BOXES, SCORES, torch.tensor([1, 2, 3]))
    assert keep.tolist() == [0, 1, 2] and scores.tolist() == pytest.approx(SCORES.tolist())
    keep, _ = soft_nms(BOXES, SCORES, LABELS, score_threshold=0.5)
    assert keep.tolist() == [0, 2]  # box 1 decayed to 0.32 < 0.5: dropped
    keep, _ = soft_nms(BOXES, SCORES, LABELS, max_dets=2)
    assert keep.tolist() == [0, 2]


def test_empty_input_and_bad_arguments():
    keep, scores = soft_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert keep.shape == (0,) and scores.shape == (0,)
    with pytest.raises(ValueError, match="method"):
        soft_nms(BOXES, SCORES, LABELS, method="hard")
    with pytest.raises(ValueError, match="sigma"):
        soft_nms(BOXES, SCORES, LABELS, method="gaussian", sigma=0)


@st.composite
def detections(draw):
    n = draw(st.integers(1, 30))
    xy = torch.tensor(draw(st.lists(st.tuples(st.floats(0, 50), st.floats(0, 50)), min_size=n, max_size=n)))
    wh = torch.tensor(draw(st.lists(st.tuples(st.floats(1, 30), st.floats(1, 30)), min_size=n, max_size=n)))
    scores = torch.tensor(draw(st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n)))
    labels = torch.tensor(draw(st.lists(st.integers(1, 3), min_size=n, max_size=n)))
    return torch.cat([xy, xy + wh], dim=1), scores, labels


@settings(max_examples=60, deadline=None)
@given(detections(), st.sampled_from(["linear", "gaussian"]))
def test_scores_only_decay_and_come_out_non_increasing(data, method):
    boxes, scores, labels = data
    keep, kept_scores = soft_nms(boxes, scores, labels, method=method, score_threshold=0.0)
    assert len(set(keep.tolist())) == len(keep) == len(boxes)  # threshold 0: every box stays, once
    assert torch.all(kept_scores <= scores[keep] + 1e-6)
    assert torch.all(kept_scores[1:] <= kept_scores[:-1] + 1e-6)
    # the first pick is the overall best, as in hard NMS
    assert keep[0].item() == nms(boxes, scores, 0.5)[0].item()


@settings(max_examples=60, deadline=None)
@given(detections())
def test_linear_soft_nms_keeps_what_hard_nms_keeps_with_unchanged_scores(data):
    """A box hard NMS keeps overlaps no higher-scored kept box by more than the threshold, but soft-NMS may still
    have decayed it through a box hard NMS removed; at least every box without any overlap >= 0.5 is untouched."""
    boxes, scores, labels = data
    keep, kept_scores = soft_nms(boxes, scores, labels, iou_threshold=0.5, score_threshold=0.0)
    same_class = labels[:, None] == labels[None, :]
    ious = torch.where(same_class, box_iou(boxes, boxes), torch.zeros(()))
    ious.fill_diagonal_(0)
    isolated = torch.nonzero(ious.max(dim=1).values < 0.5).flatten().tolist()
    final = dict(zip(keep.tolist(), kept_scores.tolist()))
    for index in isolated:
        assert final[index] == pytest.approx(scores[index].item())


def _reference_soft_nms(boxes, scores, labels, iou_threshold, method, sigma, score_threshold):
    """Straightforward float64 soft-NMS, one class at a time: {index: decayed score} of the kept boxes."""
    boxes, kept = boxes.double(), {}
    for label in labels.unique().tolist():
        members = torch.nonzero(labels == label).flatten().tolist()
        current = {i: float(scores[i]) for i in members if scores[i] >= score_threshold}
        while current:
            best = max(current, key=lambda i: (current[i], -i))
            kept[best] = current.pop(best)
            for i in list(current):
                iou = box_iou(boxes[best][None], boxes[i][None]).item()
                factor = (1 - iou if iou >= iou_threshold else 1.0) if method == "linear" else math.exp(-iou**2 / sigma)
                current[i] *= factor
                if current[i] < score_threshold:
                    del current[i]
    return kept


@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_a_float64_per_class_reference_at_lvis_class_ids_and_sizes(method, seed):
    """Decayed scores do not depend on the class id or the image size (ids up to 1203, coordinates up to 2400 px)."""
    g = torch.Generator().manual_seed(seed)
    count = 300
    xy = torch.rand(count, 2, generator=g) * 2000
    wh = torch.rand(count, 2, generator=g) * 400 + 1
    boxes = torch.cat([xy, xy + wh], dim=1).clamp(max=2400)
    boxes[count // 2:] = boxes[: count - count // 2] + torch.rand(count - count // 2, 4, generator=g) * 20  # overlaps
    scores = torch.rand(count, generator=g)
    labels = torch.randint(1190, 1204, (count,), generator=g)
    keep, kept_scores = soft_nms(boxes, scores, labels, 0.5, method, 0.5, score_threshold=1e-3)
    reference = _reference_soft_nms(boxes, scores, labels, 0.5, method, 0.5, 1e-3)
    assert set(keep.tolist()) == set(reference)
    for index, score in zip(keep.tolist(), kept_scores.tolist()):
        assert score == pytest.approx(reference[index], abs=1e-5)
    relabelled_keep, relabelled_scores = soft_nms(boxes, scores, labels - 1189, 0.5, method, 0.5, score_threshold=1e-3)
    assert torch.equal(relabelled_keep, keep) and torch.equal(relabelled_scores, kept_scores)  # ids do not matter


def test_nothing_above_the_threshold_gives_an_empty_result():
    keep, scores = soft_nms(BOXES, torch.full((3,), 1e-5), LABELS, score_threshold=1e-4)
    assert keep.shape == (0,) and keep.dtype == torch.int64 and scores.shape == (0,)


@st.composite
def crowded_detections(draw):
    """Up to 60 boxes on a coarse grid (duplicates, zero-area boxes, equal scores), a few labels near 1203."""
    n = draw(st.integers(0, 60))
    corner = st.tuples(st.integers(0, 12), st.integers(0, 12))
    size = st.tuples(st.integers(0, 8), st.integers(0, 8))
    corners = draw(st.lists(corner, min_size=n, max_size=n))
    sizes = draw(st.lists(size, min_size=n, max_size=n))
    boxes = torch.tensor([[x, y, x + w, y + h] for (x, y), (w, h) in zip(corners, sizes)], dtype=torch.float32)
    scores = torch.tensor(draw(st.lists(st.sampled_from([1e-5, 0.05, 0.3, 0.3001, 0.9]), min_size=n, max_size=n)))
    labels = torch.tensor(draw(st.lists(st.sampled_from([3, 1201, 1203]), min_size=n, max_size=n)), dtype=torch.int64)
    return boxes.reshape(n, 4) * 200, scores.reshape(n), labels.reshape(n)


@settings(max_examples=100, deadline=None)
@given(crowded_detections(), st.sampled_from(["linear", "gaussian"]), st.sampled_from([None, 0, 1, 7]),
       st.sampled_from([1e-4, 0.1]))
def test_all_classes_in_step_equal_the_one_box_at_a_time_loop(data, method, max_dets, score_threshold):
    """Same picks, same order (ties by index), bit-identical decayed scores."""
    boxes, scores, labels = data
    expected = soft_nms_one_at_a_time(boxes, scores, labels, 0.5, method, 0.5, score_threshold, max_dets)
    actual = soft_nms(boxes, scores, labels, 0.5, method, 0.5, score_threshold, max_dets)
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])
    assert actual[0].dtype == torch.int64


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_a_ten_view_merge_at_lvis_size_equals_the_loop(method):
    """3,000 boxes across 300 classes with ids up to 1203 and coordinates up to 2400 px, views of the same objects
    (so boxes overlap), 300 kept: what multi-scale testing merges per image."""
    g = torch.Generator().manual_seed(0)
    objects = torch.rand(300, 2, generator=g) * 2000
    object_boxes = torch.cat([objects, objects + torch.rand(300, 2, generator=g) * 380 + 20], dim=1)
    owner = torch.randint(0, 300, (3000,), generator=g)
    boxes = (object_boxes[owner] + torch.randn(3000, 4, generator=g) * 10).clamp(0, 2400)
    scores = torch.rand(3000, generator=g)
    labels = 1203 - owner
    expected = soft_nms_one_at_a_time(boxes, scores, labels, 0.5, method, 0.5, 1e-4, 300)
    actual = soft_nms(boxes, scores, labels, 0.5, method, 0.5, 1e-4, 300)
    assert len(actual[0]) == 300
    assert torch.equal(actual[0], expected[0])
    torch.testing.assert_close(actual[1], expected[1], rtol=0, atol=1e-5)
