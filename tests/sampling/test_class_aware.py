"""Class-aware sampler: k draws per category per epoch, replacement only for small categories, epoch coverage,
determinism per (seed, epoch), distributed sharding, construction from a dataset and from build_sampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from longtail_seg.sampling import ClassAwareSampler, build_sampler

# category 7: 2 images (< k), category 3: 5 images (= k), category 9: 12 images (> k), category 4: 1 image;
# image 13 has no category; several images hold two categories.
IMAGE_CATEGORIES = [
    {7, 3}, {7}, {3, 9}, {3}, {3}, {3, 9}, {9}, {9}, {9}, {9}, {9}, {9}, {9, 4}, set(), {9}, {9}, {9},
]
K = 5


def _categories_of(image_index: int) -> set[int]:
    return IMAGE_CATEGORIES[image_index]


def test_each_category_drawn_k_times_with_an_image_that_contains_it():
    sampler = ClassAwareSampler(IMAGE_CATEGORIES, images_per_category=K, seed=0)
    assert sampler.num_categories == 4 and sampler.category_ids.tolist() == [3, 4, 7, 9]
    for epoch in range(4):
        indices, categories = sampler.epoch_draws(epoch)
        assert len(indices) == 4 * K == len(sampler.epoch_indices(epoch))
        assert Counter(categories.tolist()) == {3: K, 4: K, 7: K, 9: K}
        assert all(category in _categories_of(i) for i, category in zip(indices.tolist(), categories.tolist()))
        assert 13 not in indices  # the image without annotations is never drawn


def test_replacement_only_for_categories_with_fewer_than_k_images():
    sampler = ClassAwareSampler(IMAGE_CATEGORIES, images_per_category=K, seed=1)
    for epoch in range(6):
        indices, categories = sampler.epoch_draws(epoch)
        drawn = {c: indices[categories == c].tolist() for c in (3, 4, 7, 9)}
        # 2 images for 5 draws: both used, counts balanced (2 and 3); 1 image: used 5 times
        assert sorted(Counter(drawn[7]).values()) == [2, 3] and set(drawn[7]) == {0, 1}
        assert drawn[4] == [12] * K
        # categories with >= k images: k distinct images
        assert len(set(drawn[3])) == K and set(drawn[3]) == {0, 2, 3, 4, 5}
        assert len(set(drawn[9])) == K


def test_large_category_covers_all_its_images_over_a_pass():
    """12 images, k = 5: a pass lasts ceil(12 / 5) = 3 epochs and sees every image at least once."""
    sampler = ClassAwareSampler(IMAGE_CATEGORIES, images_per_category=K, seed=2)
    images_of_9 = set(sampler.images_of(9).tolist())
    assert len(images_of_9) == 12
    for first_epoch in (0, 3, 6):
        seen = set()
        for epoch in range(first_epoch, first_epoch + 3):
            indices, categories = sampler.epoch_draws(epoch)
            seen |= set(indices[categories == 9].tolist())
        assert seen == images_of_9
    # consecutive epochs inside a pass use different windows of the list
    first = [set(sampler.epoch_draws(e)[0][sampler.epoch_draws(e)[1] == 9].tolist()) for e in range(2)]
    assert len(first[0] | first[1]) > K


def test_many_images_per_category_statistics():
    """A category with 1000 images, k = 5, 50 epochs: 250 draws, all distinct (one pass lasts 200 epochs)."""
    image_categories = [{1}] * 1000 + [{2}] * 3
    sampler = ClassAwareSampler(image_categories, images_per_category=5, seed=3)
    draws = [sampler.epoch_draws(epoch) for epoch in range(50)]
    drawn_1 = np.concatenate([idx[cat == 1] for idx, cat in draws])
    assert len(drawn_1) == 250 and len(set(drawn_1.tolist())) == 250
    # 3 images for 5 draws: every epoch uses all three, two of them twice (balanced repeats, not i.i.d.)
    assert all(sorted(Counter(idx[cat == 2].tolist()).values()) == [1, 2, 2] for idx, cat in draws)
    # which image is drawn once varies over epochs (a new permutation per pass)
    drawn_once = set()
    for idx, cat in draws:
        counts = Counter(idx[cat == 2].tolist())
        drawn_once.add(min(counts, key=counts.get))
    assert drawn_once == {1000, 1001, 1002}


def test_same_seed_and_epoch_reproduce_and_epochs_differ():
    a = ClassAwareSampler(IMAGE_CATEGORIES, seed=4)
    b = ClassAwareSampler(IMAGE_CATEGORIES, seed=4)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) and len(a) == 4 * K
    epochs = [a.epoch_indices(e).tolist() for e in range(5)]
    assert all(epochs[i] != epochs[j] for i in range(5) for j in range(i + 1, 5))
    assert ClassAwareSampler(IMAGE_CATEGORIES, seed=5).epoch_indices(3).tolist() != epochs[3]
    # an epoch does not depend on which epochs were computed before it
    assert ClassAwareSampler(IMAGE_CATEGORIES, seed=4).epoch_indices(3).tolist() == epochs[3]


def test_epoch_list_is_shuffled_and_unshuffled_mode_is_grouped_by_category():
    shuffled = ClassAwareSampler(IMAGE_CATEGORIES, seed=0).epoch_draws(0)[1].tolist()
    assert shuffled != sorted(shuffled)
    plain = ClassAwareSampler(IMAGE_CATEGORIES, shuffle=False)
    indices, categories = plain.epoch_draws(1)
    assert categories.tolist() == sorted(categories.tolist())
    # without shuffling, category 9 reads its sorted image list window by window (epoch 1 = positions 5..9)
    assert indices[categories == 9].tolist() == plain.images_of(9)[5:10].tolist()


@pytest.mark.parametrize("num_replicas", [2, 3])
def test_shards_are_disjoint_in_position_cover_the_epoch_and_have_equal_lengths(num_replicas: int):
    full = ClassAwareSampler(IMAGE_CATEGORIES, seed=6, num_replicas=1, rank=0)
    full.set_epoch(2)
    epoch_list = list(full)
    shards = []
    for rank in range(num_replicas):
        shard = ClassAwareSampler(IMAGE_CATEGORIES, seed=6, num_replicas=num_replicas, rank=rank)
        shard.set_epoch(2)
        shards.append(list(shard))
    assert len({len(s) for s in shards}) == 1
    assert len(shards[0]) == -(-len(epoch_list) // num_replicas)
    interleaved = [shards[i % num_replicas][i // num_replicas] for i in range(len(epoch_list))]
    assert interleaved == epoch_list  # shard r holds positions r, r + R, ...: disjoint, union = epoch list


class _FakeDataset:
    def __len__(self) -> int:
        return len(IMAGE_CATEGORIES)

    def image_category_ids(self, index: int) -> set[int]:
        return IMAGE_CATEGORIES[index]


def test_from_dataset_and_build_sampler_match_the_constructor():
    expected = ClassAwareSampler(IMAGE_CATEGORIES, images_per_category=3, seed=8).epoch_indices(1).tolist()
    from_dataset = ClassAwareSampler.from_dataset(_FakeDataset(), images_per_category=3, seed=8)
    assert from_dataset.epoch_indices(1).tolist() == expected
    built = build_sampler("class_aware", len(IMAGE_CATEGORIES), image_category_ids=IMAGE_CATEGORIES,
                          images_per_category=3, seed=8)
    assert isinstance(built, ClassAwareSampler) and built.epoch_indices(1).tolist() == expected
    with pytest.raises(ValueError, match="image_category_ids"):
        build_sampler("class_aware", 3)
    with pytest.raises(TypeError, match="image_category_ids"):
        ClassAwareSampler.from_dataset([1, 2, 3])


def test_lvis_dataset_builds_the_sampler(small_lvis):
    from longtail_seg.data.dataset import LVISDetectionDataset

    annotation_file, image_root = small_lvis
    dataset = LVISDetectionDataset(annotation_file, image_root)
    sampler = ClassAwareSampler.from_dataset(dataset, images_per_category=2, seed=0)
    indices, categories = sampler.epoch_draws(0)
    assert Counter(categories.tolist()) == {1: 2, 2: 2}  # category 3 has no annotation: not drawn
    assert sorted(indices[categories == 1].tolist()) == [0, 2] and indices[categories == 2].tolist() == [1, 1]


def test_bad_input_fails_clearly():
    with pytest.raises(ValueError, match="images_per_category"):
        ClassAwareSampler(IMAGE_CATEGORIES, images_per_category=0)
    with pytest.raises(ValueError, match="no"):
        ClassAwareSampler([set(), set()])
