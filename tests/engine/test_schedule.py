"""Learning-rate schedule values at hand-picked points, and optimizer parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from longtail_seg.engine.schedule import LRSchedule, build_optimizer

REPORT_STEPS = [[20, 3e-2], [24, 3e-3], [26, 3e-4], [27, 3e-5], [28, 3e-6]]


def test_linear_warmup_from_factor_to_base() -> None:
    schedule = LRSchedule(base_lr=0.1, kind="constant", warmup_iters=100, warmup_factor=0.001)
    assert schedule.lr_at(0, 0.0) == pytest.approx(0.1 * 0.001)
    assert schedule.lr_at(50, 0.1) == pytest.approx(0.1 * (0.001 * 0.5 + 0.5))
    assert schedule.lr_at(100, 0.2) == pytest.approx(0.1)
    assert schedule.lr_at(5000, 3.0) == pytest.approx(0.1)


def test_report_step_schedule() -> None:
    schedule = LRSchedule.from_config(REPORT_STEPS, base_lr=0.3, epochs=29, warmup_iters=0)
    expected = {0.0: 0.3, 19.99: 0.3, 20.0: 3e-2, 23.5: 3e-2, 24.0: 3e-3, 25.9: 3e-3, 26.0: 3e-4, 27.0: 3e-5,
                28.0: 3e-6, 28.9: 3e-6}
    for epoch, lr in expected.items():
        assert schedule.lr_at(100_000, epoch) == pytest.approx(lr), epoch


def test_steps_are_sorted_and_warmup_multiplies_them() -> None:
    schedule = LRSchedule.from_config([[2, 0.01], [1, 0.05]], base_lr=0.1, warmup_iters=10, warmup_factor=0.5)
    assert schedule.lr_at(0, 1.5) == pytest.approx(0.05 * 0.5)
    assert schedule.lr_at(10, 2.0) == pytest.approx(0.01)


def test_cosine_by_epoch_and_by_iteration() -> None:
    by_epoch = LRSchedule(base_lr=1.0, kind="cosine", epochs=4, min_lr=0.0)
    assert by_epoch.lr_at(0, 0.0) == pytest.approx(1.0)
    assert by_epoch.lr_at(0, 2.0) == pytest.approx(0.5)
    assert by_epoch.lr_at(0, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert by_epoch.lr_at(0, 4.0) == pytest.approx(0.0)
    by_iter = LRSchedule(base_lr=1.0, kind="cosine", epochs=100, max_iterations=200, min_lr=0.1)
    assert by_iter.lr_at(100, 0.5) == pytest.approx(0.1 + 0.45)
    assert by_iter.lr_at(200, 0.9) == pytest.approx(0.1)


def test_bad_schedules_fail_clearly() -> None:
    with pytest.raises(ValueError, match="lr_schedule"):
        LRSchedule.from_config([[1, 2, 3]], base_lr=0.1)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        LRSchedule.from_config("linear", base_lr=0.1)


def test_apply_sets_every_group() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    optimizer = build_optimizer(model, "sgd", lr=0.1, weight_decay=1e-4)
    schedule = LRSchedule(base_lr=0.1, kind="constant", warmup_iters=10, warmup_factor=0.0)
    assert schedule.apply(optimizer, 5, 0.0) == pytest.approx(0.05)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.05])


def test_optimizer_groups_skip_decay_on_biases_and_frozen_params() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    optimizer = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and [p.shape for p in decay["params"]] == [(4, 3)]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 4  # bias, bn weight+bias, bias
    with pytest.raises(ValueError, match="sgd"):
        build_optimizer(model, "lamb", lr=1e-3)
