"""Reference tests for dataset statistics: hand-computed repeat factors, group boundaries, probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longtail_seg.data.lvis_categories import lvis_v1_categories
from longtail_seg.data.lvis_io import AnnotationArrays, annotation_arrays, load_lvis
from longtail_seg.stats import (
    bgs_groups,
    category_repeat_factors,
    compute_dataset_stats,
    frequency_groups,
    image_repeat_factors,
    repeat_factors_of_images,
    sampling_probabilities,
)


def test_frequency_group_boundaries_follow_lvis():
    counts = np.array([0, 1, 10, 11, 100, 101, 5000])
    assert frequency_groups(counts).tolist() == ["r", "r", "r", "c", "c", "f", "f"]


def test_category_repeat_factors_hand_computed():
    # 4000 images, t = 0.01: f = 0.001 -> sqrt(10); f = 0.0025 -> 2; f = 0.01 -> 1; f = 0.5 -> clipped to 1.
    factors = category_repeat_factors(np.array([4, 10, 40, 2000]), num_images=4000, threshold=0.01)
    np.testing.assert_allclose(factors, [math.sqrt(10), 2.0, 1.0, 1.0])


def test_category_without_images_gets_factor_one():
    assert category_repeat_factors(np.array([0, 1]), 100, 0.5).tolist()[0] == 1.0


@pytest.mark.parametrize("threshold", [0.0, -1.0])
def test_non_positive_threshold_is_rejected(threshold):
    with pytest.raises(ValueError, match="threshold"):
        category_repeat_factors(np.array([1]), 10, threshold)


def test_image_repeat_factor_is_max_over_present_categories():
    category_factors = np.array([1.0, 3.0, 2.0])
    # image 0 has categories 0 and 2 (twice), image 1 has 1, image 2 has nothing.
    factors = image_repeat_factors(3, np.array([0, 0, 0, 1]), np.array([0, 2, 2, 1]), category_factors)
    assert factors.tolist() == [2.0, 3.0, 1.0]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=1.0, max_value=100.0), min_size=1, max_size=200))
def test_sampling_probabilities_sum_to_one_and_follow_factors(factors):
    probs = sampling_probabilities(np.array(factors))
    assert math.isclose(probs.sum(), 1.0, rel_tol=1e-9)
    ratios = probs / np.array(factors)
    np.testing.assert_allclose(ratios, ratios[0])


def test_bgs_groups_bin_edges():
    counts = np.array([0, 9, 10, 99, 100, 999, 1000, 10**6])
    assert bgs_groups(counts, (10, 100, 1000)).tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(ValueError, match="increasing"):
        bgs_groups(counts, (100, 10))


def test_compute_dataset_stats_recomputes_counts_from_annotations(small_lvis):
    annotations, _ = small_lvis
    stats = compute_dataset_stats(annotation_arrays(load_lvis(annotations)), rfs_threshold=0.5)
    cats = stats.categories.set_index("category_id")
    # category 1: images 1 and 3, 3 instances; category 2: image 2, 1 instance; category 3: absent.
    assert cats.loc[1, "image_count"] == 2 and cats.loc[1, "instance_count"] == 3
    assert cats.loc[2, "image_count"] == 1 and cats.loc[2, "instance_count"] == 1
    assert cats.loc[3, "image_count"] == 0 and cats.loc[3, "instance_count"] == 0
    # t = 0.5, 3 images: f_1 = 2/3 -> r = 1; f_2 = 1/3 -> sqrt(1.5).
    np.testing.assert_allclose(cats["repeat_factor"].tolist(), [1.0, math.sqrt(1.5), 1.0])
    images = stats.images.set_index("image_id")
    np.testing.assert_allclose(images["repeat_factor"].tolist(), [1.0, math.sqrt(1.5), 1.0])
    assert math.isclose(images["sampling_prob"].sum(), 1.0)
    assert stats.summary["groups"]["rare"]["categories"] == 3
    assert stats.summary["instances"] == 4


def test_stats_reject_annotation_of_unknown_category():
    arrays = AnnotationArrays(
        image_ids=np.array([1]), category_ids=np.array([1, 2]), category_names=["a", "b"],
        ann_image_ids=np.array([1]), ann_category_ids=np.array([7]), ann_bboxes=np.zeros((1, 4)),
    )
    with pytest.raises(ValueError, match="7"):
        compute_dataset_stats(arrays)


def test_stats_scale_to_lvis_v1_size_with_real_category_table():
    """LVIS v1 scale (1203 categories, ~100k images, ~1.27M instances) must take seconds, not minutes."""
    import time

    table = lvis_v1_categories()
    rng = np.random.default_rng(0)
    num_images = 100_170
    image_counts = table["image_count"].to_numpy()
    instance_counts = table["instance_count"].to_numpy()
    category_ids = table["id"].to_numpy()
    # Place each category's instances on image_count distinct random images.
    ann_cats, ann_images = [], []
    for cid, n_img, n_inst in zip(category_ids, image_counts, instance_counts):
        chosen = rng.choice(num_images, size=n_img, replace=False)
        ann_images.append(np.concatenate([chosen, rng.choice(chosen, size=n_inst - n_img)]))
        ann_cats.append(np.full(n_inst, cid))
    arrays = AnnotationArrays(
        image_ids=np.arange(1, num_images + 1), category_ids=category_ids,
        category_names=table["name"].tolist(), ann_image_ids=np.concatenate(ann_images) + 1,
        ann_category_ids=np.concatenate(ann_cats), ann_bboxes=np.zeros((int(instance_counts.sum()), 4)),
    )
    start = time.perf_counter()
    stats = compute_dataset_stats(arrays, rfs_threshold=0.001)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"statistics took {elapsed:.1f}s at LVIS scale"
    np.testing.assert_array_equal(stats.categories["image_count"], image_counts)
    assert stats.categories["frequency"].tolist() == table["frequency"].tolist()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(1, 6), max_size=5), min_size=1, max_size=30), st.floats(0.01, 1.0))
def test_repeat_factors_of_images_match_the_stats_step(image_categories, threshold):
    """The in-memory repeat factors (train + pseudo sets) equal those of compute_dataset_stats on the same data."""
    ann_images = [i for i, cats in enumerate(image_categories) for _ in cats]
    ann_cats = [c for cats in image_categories for c in cats]
    arrays = AnnotationArrays(
        image_ids=np.arange(len(image_categories)), category_ids=np.arange(1, 7),
        category_names=[str(c) for c in range(1, 7)], ann_image_ids=np.array(ann_images, dtype=np.int64),
        ann_category_ids=np.array(ann_cats, dtype=np.int64), ann_bboxes=np.zeros((len(ann_cats), 4)),
    )
    expected = compute_dataset_stats(arrays, rfs_threshold=threshold).images["repeat_factor"].to_numpy()
    np.testing.assert_allclose(repeat_factors_of_images(image_categories, threshold), expected)


def test_repeat_factors_of_images_hand_computed():
    # 4 images; category 7 in 1 of them (f = 0.25), category 8 in all; t = 1: r_7 = 2, r_8 = 1
    factors = repeat_factors_of_images([{7, 8}, {8}, {8}, {8}], threshold=1.0)
    np.testing.assert_allclose(factors, [2.0, 1.0, 1.0, 1.0])
