"""The ``train:`` / ``retrain:`` config classes: every key of the wrong type or out of range fails naming its path
(``retrain.batch_size``, ``models.bgs.retrain.batch_size``), whichever section or per-model override it is in."""

from __future__ import annotations

import math

import pytest

from longtail_seg.engine.config import RetrainConfig, TrainConfig

NAN, INF = float("nan"), float("inf")

# Every key with values that must fail, and what the message says they must be.
TRAIN_BAD: dict[str, tuple[str, list]] = {
    "sampler": ("one of ['uniform', 'repeat_factor']", ["random", 3, None]),
    "batch_size": ("an integer >= 1", ["4", 0, -1, 2.0, True, None]),
    "epochs": ("an integer >= 0", [-1, "2", 1.5, None]),
    "max_iterations": ("an integer >= 1 or null", [0, -5, "100", 10.5, True]),
    "optimizer": ("one of ['sgd', 'adamw']", ["adam", None]),
    "lr": ("a number > 0", [0, -0.1, "1e-3", NAN, INF, None, True]),
    "weight_decay": ("a number >= 0", [-1e-4, "0", NAN, None]),
    "momentum": ("a number in [0, 1)", [1, 1.5, -0.1, "0.9", NAN]),
    "warmup_iters": ("an integer >= 0", [-1, 2.5, "10", None]),
    "warmup_factor": ("a number in (0, 1]", [0, 1.5, -0.1, "0.001", NAN]),
    "min_lr": ("a number >= 0", [-1, "0", INF]),
    "grad_clip_norm": ("a number > 0 or null", [0, -1, "1.0", NAN]),
    "min_size_range": ("an integer >= 1 or a [lo, hi] pair of them with lo <= hi",
                       [0, [144, 112], [112], [112, "144"], "128", [112.0, 144], [0, 144], None]),
    "max_size": ("an integer >= 1", [0, "240", 240.0]),
    "flip_prob": ("a number in [0, 1]", [1.5, -0.1, "0.5", NAN]),
    "mosaic": ("true or false", [1, "true", None]),
    "num_workers": ("an integer >= 0", [-1, "1", 1.0]),
    "checkpoint_period": ("an integer >= 1", [0, "200", None]),
    "log_period": ("an integer >= 1", [0, "20"]),
    "seed": ("an integer >= 0", [-1, "0", 0.5, None]),
    "amp": ("true or false", [1, "yes"]),
    "tensorboard": ("true or false", [0, "false"]),
    "find_unused_parameters": ("true or false", [None]),
    "progress_bar": ("true or false", ["true"]),
}
RETRAIN_BAD = {
    **TRAIN_BAD,
    "sampler": ("one of ['class_aware', 'repeat_factor', 'uniform']", ["random", None]),
    "images_per_category": ("an integer >= 1", [0, "5", 1.5]),
    "rois_per_image": ("an integer >= 1 or null", [0, "64", 1.5]),
}
CASES = [(cls, key, value, what) for cls, table in ((TrainConfig, TRAIN_BAD), (RetrainConfig, RETRAIN_BAD))
         for key, (what, values) in table.items() for value in values]


def test_every_key_but_the_schedule_has_bad_values_here():
    assert set(TrainConfig.keys()) - set(TRAIN_BAD) == {"lr_schedule"}  # lr_schedule: test_a_bad_lr_schedule...
    assert set(RetrainConfig.keys()) - set(RETRAIN_BAD) == {"lr_schedule"}


@pytest.mark.parametrize("cls, key, value, what", CASES,
                         ids=[f"{c.SECTION}.{k}={v!r}" for c, k, v, _ in CASES])
def test_a_wrong_type_or_range_names_the_section_and_key(cls, key, value, what):
    for section in (None, f"models.m.{cls.SECTION}"):
        with pytest.raises(ValueError) as error:
            cls.from_dict({key: value}, section=section)
        path = f"{section or cls.SECTION}.{key}"
        assert str(error.value).startswith(f"{path} must be {what}, got {value!r}"), str(error.value)


def test_a_number_written_as_a_string_gets_a_hint():
    with pytest.raises(ValueError) as error:
        RetrainConfig.from_dict({"batch_size": "4"})
    assert str(error.value) == ("retrain.batch_size must be an integer >= 1, got '4' (a string: write the number "
                                "without quotes)")
    with pytest.raises(ValueError, match=r"retrain\.lr must be a number > 0, got '1e-4' .*write 1\.0e-4"):
        RetrainConfig.from_dict({"lr": "1e-4"})
    with pytest.raises(ValueError, match=r"^train\.amp must be true or false, got 'true' \(a string: write true"):
        TrainConfig.from_dict({"amp": "true"})


def test_values_on_the_bounds_pass():
    edges = {"epochs": 0, "max_iterations": 1, "momentum": 0.0, "warmup_iters": 0, "warmup_factor": 1,
             "weight_decay": 0, "min_lr": 0, "grad_clip_norm": None, "flip_prob": 1.0, "num_workers": 0,
             "seed": 0, "min_size_range": [128, 128], "max_size": 1, "lr": 1e-12, "checkpoint_period": 1}
    assert TrainConfig.from_dict(edges).flip_prob == 1.0
    assert TrainConfig.from_dict({"min_size_range": 96, "flip_prob": 0, "momentum": 0.999}).min_size_range == 96
    retrain = RetrainConfig.from_dict({**edges, "images_per_category": 1, "rois_per_image": 1})
    assert retrain.rois_per_image == 1 and RetrainConfig.from_dict({"rois_per_image": None}).rois_per_image is None


def test_zero_epochs_need_max_iterations_in_the_same_section():
    with pytest.raises(ValueError, match=r"^models\.bgs\.retrain\.epochs must be >= 1 \(or set "
                                         r"models\.bgs\.retrain\.max_iterations\), got 0"):
        RetrainConfig.from_dict({"epochs": 0, "max_iterations": None}, section="models.bgs.retrain")


def test_a_bad_lr_schedule_names_the_section():
    for schedule in ("step", [], [[0, 0]], [[-1, 0.1]], [[0, math.nan]], [[0, "0.1"]], [0.1]):
        with pytest.raises(ValueError, match=r"^models\.bgs\.retrain\.lr_schedule must be 'cosine', 'constant'"):
            RetrainConfig.from_dict({"lr_schedule": schedule}, section="models.bgs.retrain")
    assert RetrainConfig.from_dict({"lr_schedule": [[0, 0.1], [2, 0.01]]}).lr_schedule == [[0, 0.1], [2, 0.01]]


def test_unknown_keys_name_the_section():
    with pytest.raises(ValueError, match=r"^models\.bgs\.retrain: unknown key\(s\) \['batch'\]"):
        RetrainConfig.from_dict({"batch": 4}, section="models.bgs.retrain")
