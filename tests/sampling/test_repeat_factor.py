"""Repeat factor and uniform samplers: expected counts, determinism per (seed, epoch), distributed sharding, CSV."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from longtail_seg.data.lvis_io import DatasetError
from longtail_seg.sampling import RepeatFactorSampler, UniformSampler, build_sampler

FACTORS = [1.0, 1.3, 2.7, 0.5, 3.0, 1.0, 4.25]


def test_expected_count_per_epoch_equals_repeat_factor():
    """Mean count of image i over E epochs ~ r_i, within 5 binomial standard errors sqrt(p(1-p)/E)."""
    epochs = 3000
    sampler = RepeatFactorSampler(FACTORS, seed=7)
    counts = np.zeros((epochs, len(FACTORS)))
    for epoch in range(epochs):
        counts[epoch] = np.bincount(sampler.epoch_indices(epoch), minlength=len(FACTORS))
    factors = np.array(FACTORS)
    frac = factors - np.floor(factors)
    tolerance = 5 * np.sqrt(frac * (1 - frac) / epochs) + 1e-12
    assert np.all(np.abs(counts.mean(0) - factors) <= tolerance), (counts.mean(0), factors)
    # per epoch, each image appears floor(r) or floor(r) + 1 times (stochastic rounding, not sampling with replacement)
    assert np.all((counts == np.floor(factors)) | (counts == np.floor(factors) + 1))
    integer = frac == 0
    assert np.all(counts[:, integer] == factors[integer])


def test_epoch_length_matches_sum_of_factors_on_many_images():
    rng = np.random.default_rng(0)
    factors = 1 + rng.exponential(1.0, size=500)
    sampler = RepeatFactorSampler(factors, seed=3)
    lengths = np.array([len(sampler.epoch_indices(epoch)) for epoch in range(200)])
    frac = factors - np.floor(factors)
    standard_error = np.sqrt((frac * (1 - frac)).sum() / len(lengths))
    assert abs(lengths.mean() - factors.sum()) <= 5 * standard_error
    assert sampler.expected_epoch_length == pytest.approx(factors.sum())


def test_same_seed_and_epoch_give_same_order_and_epochs_differ():
    a = RepeatFactorSampler(FACTORS, seed=1)
    b = RepeatFactorSampler(FACTORS, seed=1)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b) and len(a) == len(list(a))
    epochs = [RepeatFactorSampler(FACTORS, seed=1).epoch_indices(e).tolist() for e in range(5)]
    assert all(epochs[i] != epochs[j] for i in range(5) for j in range(i + 1, 5))
    assert RepeatFactorSampler(FACTORS, seed=2).epoch_indices(4).tolist() != epochs[4]


def test_set_epoch_changes_iteration_and_length():
    sampler = RepeatFactorSampler(FACTORS, seed=5)
    seen = []
    for epoch in range(6):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(sampler) == len(sampler.epoch_indices(epoch))
        seen.append(order)
    assert len({tuple(order) for order in seen}) == 6


def test_no_shuffle_keeps_index_order():
    indices = RepeatFactorSampler([2.0, 1.0, 3.0], shuffle=False).epoch_indices(0).tolist()
    assert indices == [0, 0, 1, 2, 2, 2]


@pytest.mark.parametrize("num_replicas", [2, 3, 4])
@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_distributed_shards_are_disjoint_equal_and_cover_the_epoch(num_replicas, epoch):
    single = RepeatFactorSampler(FACTORS, seed=11, num_replicas=1, rank=0)
    single.set_epoch(epoch)
    full = list(single)
    shards = []
    for rank in range(num_replicas):
        sampler = RepeatFactorSampler(FACTORS, seed=11, num_replicas=num_replicas, rank=rank)
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1])
    assert len({len(shard) for shard in shards}) == 1, "DDP needs equal step counts on every rank"
    length = len(shards[0])
    assert length == -(-len(full) // num_replicas)
    # interleaving the shards by position rebuilds the padded epoch list: positions disjoint, union covers it
    interleaved = [shards[rank][k] for k in range(length) for rank in range(num_replicas)]
    padding = length * num_replicas - len(full)
    assert interleaved[: len(full)] == full
    assert Counter(interleaved) == Counter(full) + Counter(full[:padding])
    assert padding < num_replicas


def test_exact_cover_without_padding():
    factors = [1.0] * 12
    shards = [list(RepeatFactorSampler(factors, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(12))


def test_uniform_sampler_is_a_permutation_per_epoch_and_shards_evenly():
    sampler = UniformSampler(10, seed=0)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
        assert sorted(orders[-1]) == list(range(10))
    assert orders[0] != orders[1]
    shards = [UniformSampler(10, seed=0, num_replicas=4, rank=r) for r in range(4)]
    assert [len(s) for s in shards] == [3, 3, 3, 3]
    assert set(sum((list(s) for s in shards), [])) == set(range(10))
    assert list(UniformSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_from_csv_aligns_to_dataset_order(tmp_path):
    path = tmp_path / "image_repeat_factors.csv"
    table = pd.DataFrame({"image_id": [30, 10, 20, 99], "repeat_factor": [3.0, 1.0, 2.0, 5.0]})
    table["sampling_prob"] = table["repeat_factor"] / table["repeat_factor"].sum()
    table.to_csv(path, index=False)
    sampler = RepeatFactorSampler.from_csv(path, [10, 20, 30], shuffle=False, seed=0)
    assert sampler.repeat_factors.tolist() == [1.0, 2.0, 3.0]
    assert list(sampler) == [0, 1, 1, 2, 2, 2]
    built = build_sampler("repeat_factor", 3, repeat_factor_csv=path, image_ids=[10, 20, 30], shuffle=False)
    assert list(built) == [0, 1, 1, 2, 2, 2]


def test_from_csv_missing_image_names_file_and_id(tmp_path):
    path = tmp_path / "image_repeat_factors.csv"
    pd.DataFrame({"image_id": [1, 2], "repeat_factor": [1.0, 2.0], "sampling_prob": [1 / 3, 2 / 3]}).to_csv(
        path, index=False
    )
    with pytest.raises(DatasetError, match=r"image_repeat_factors\.csv.*image id 3\b"):
        RepeatFactorSampler.from_csv(path, [1, 2, 3])
    with pytest.raises(DatasetError, match="not found"):
        RepeatFactorSampler.from_csv(tmp_path / "absent.csv", [1])


def test_build_sampler_and_bad_inputs():
    assert isinstance(build_sampler("uniform", 4), UniformSampler)
    assert isinstance(build_sampler("repeat_factor", 2, repeat_factors=[1.0, 2.0]), RepeatFactorSampler)
    with pytest.raises(ValueError, match="unknown sampler"):
        build_sampler("class_balanced", 4)
    with pytest.raises(ValueError, match="2 repeat factors"):
        build_sampler("repeat_factor", 3, repeat_factors=[1.0, 2.0])
    with pytest.raises(ValueError, match=">= 0"):
        RepeatFactorSampler([1.0, -1.0])
    with pytest.raises(ValueError, match="rank"):
        UniformSampler(3, num_replicas=2, rank=2)
