"""The ``train:`` and ``retrain:`` config sections as dataclasses: the one home of their defaults (= the embedded
demo's values, as config.yaml states them), torch-free so that building the workflow's DAG validates every section
and every per-model override before any job runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from longtail_seg.config_keys import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    is_int,
    is_number,
    reject_unknown_keys,
)

TRAIN_SAMPLERS = ("uniform", "repeat_factor")
RETRAIN_SAMPLERS = ("class_aware", "repeat_factor", "uniform")
OPTIMIZERS = ("sgd", "adamw")
NAMED_LR_SCHEDULES = ("cosine", "constant")

# The type and range of every scalar key: (check, bounds). Messages read "SECTION.KEY must be ..., got VALUE".
_POSITIVE = {"minimum": 0, "exclusive_minimum": True}
TRAIN_VALUE_CHECKS: dict[str, tuple[Any, dict[str, Any]]] = {
    "batch_size": (check_int, {"minimum": 1}),
    "epochs": (check_int, {"minimum": 0}),
    "max_iterations": (check_int, {"minimum": 1, "allow_none": True}),
    "lr": (check_number, _POSITIVE),
    "weight_decay": (check_number, {"minimum": 0}),
    "momentum": (check_number, {"minimum": 0, "maximum": 1, "exclusive_maximum": True}),
    "warmup_iters": (check_int, {"minimum": 0}),
    "warmup_factor": (check_number, {"minimum": 0, "maximum": 1, "exclusive_minimum": True}),
    "min_lr": (check_number, {"minimum": 0}),
    "grad_clip_norm": (check_number, {**_POSITIVE, "allow_none": True}),
    "max_size": (check_int, {"minimum": 1}),
    "flip_prob": (check_number, {"minimum": 0, "maximum": 1}),
    "mosaic": (check_bool, {}),
    "num_workers": (check_int, {"minimum": 0}),
    "checkpoint_period": (check_int, {"minimum": 1}),
    "log_period": (check_int, {"minimum": 1}),
    "seed": (check_int, {"minimum": 0}),
    "amp": (check_bool, {}),
    "tensorboard": (check_bool, {}),
    "find_unused_parameters": (check_bool, {}),
    "progress_bar": (check_bool, {}),
}
RETRAIN_VALUE_CHECKS = {
    **TRAIN_VALUE_CHECKS,
    "images_per_category": (check_int, {"minimum": 1}),
    "rois_per_image": (check_int, {"minimum": 1, "allow_none": True}),
}


@dataclass
class TrainConfig:
    """The ``train:`` section: representation learning (stage 1). Defaults = the embedded demo (2 CPU cores)."""

    SECTION: ClassVar[str] = "train"  # the config section, for error messages
    SAMPLERS: ClassVar[tuple[str, ...]] = TRAIN_SAMPLERS
    VALUE_CHECKS: ClassVar[dict[str, tuple[Any, dict[str, Any]]]] = TRAIN_VALUE_CHECKS
    # How a run is carried out, not what it computes: changing one keeps a checkpoint resumable and reruns no job
    # (the workflow passes them apart from the job's tracked parameters). Samples are seeded by their position in
    # the epoch, so the number of loader workers does not change the data either.
    RUN_SETTINGS: ClassVar[tuple[str, ...]] = (
        "num_workers", "checkpoint_period", "log_period", "progress_bar", "tensorboard",
    )

    sampler: str = "repeat_factor"  # uniform | repeat_factor (image-level sampler of representation learning)
    batch_size: int = 8  # images per step per process
    epochs: int = 2  # passes over the sampler's epoch list
    max_iterations: int | None = 1100  # optional hard cap on global iterations (overrides epochs when reached)
    optimizer: str = "adamw"  # sgd | adamw
    lr: float = 2e-3  # base learning rate
    weight_decay: float = 1e-4  # on weights only (no decay on biases / norm parameters)
    momentum: float = 0.9  # sgd only
    warmup_iters: int = 100  # linear warmup length in iterations
    warmup_factor: float = 0.001  # lr multiplier at iteration 0 of the warmup
    lr_schedule: Any = "cosine"  # "cosine" | "constant" | [[epoch, lr], ...] steps (lr used from that 0-based epoch)
    min_lr: float = 0.0  # cosine floor
    grad_clip_norm: float | None = None  # clip the global gradient norm (null = off)
    min_size_range: Any = field(default_factory=lambda: [112, 144])  # training short side, [lo, hi] or int
    max_size: int = 240  # cap on the long side after resize
    flip_prob: float = 0.5  # horizontal flip probability
    mosaic: bool = False  # balanced mosaic (augment/mosaic.py, settings in the config's augment.mosaic) instead of
    #                       the plain resize + flip pipeline
    num_workers: int = 1  # DataLoader worker processes
    checkpoint_period: int = 200  # iterations between checkpoints/last.pth writes
    log_period: int = 20  # iterations between metrics.csv rows
    seed: int = 0  # seeds Python, NumPy, torch, the sampler and the loader workers
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    tensorboard: bool = False  # also log to out_dir/tensorboard if the tensorboard package is installed
    find_unused_parameters: bool = False  # DDP option (true if some heads get no gradient)
    progress_bar: bool = True  # tqdm bar on rank 0

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every key of the section."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | TrainConfig | None, section: str | None = None) -> TrainConfig:
        """Build from a plain dict; unknown keys and impossible values raise naming ``section`` (the config path)."""
        if isinstance(cfg, TrainConfig):
            return cfg
        section = section or cls.SECTION
        cfg = dict(cfg or {})
        reject_unknown_keys(section, cfg, cls.keys())
        config = cls(**cfg)
        config.validate(section)
        return config

    def validate(self, section: str | None = None) -> None:
        """Reject values of the wrong type or out of range, and values that would fail later, naming the key's
        path (``section``: ``retrain``, ``models.bgs.retrain``, ...)."""
        section = section or self.SECTION
        check_choice(f"{section}.sampler", self.sampler, self.SAMPLERS)
        check_choice(f"{section}.optimizer", self.optimizer, OPTIMIZERS)
        for key, (check, bounds) in self.VALUE_CHECKS.items():
            check(f"{section}.{key}", getattr(self, key), **bounds)
        check_min_size_range(self.min_size_range, f"{section}.min_size_range")
        if self.epochs < 1 and self.max_iterations is None:
            raise ValueError(f"{section}.epochs must be >= 1 (or set {section}.max_iterations), got {self.epochs!r}")
        check_lr_schedule(self.lr_schedule, f"{section}.lr_schedule")

    def run_settings(self) -> dict[str, Any]:
        """The ``RUN_SETTINGS`` values: how the job runs (loader workers, logging, checkpoint period)."""
        return {key: getattr(self, key) for key in self.RUN_SETTINGS}

    def computed_settings(self) -> dict[str, Any]:
        """``used_settings`` without the run settings: what decides the trained weights (the job's parameters)."""
        return {key: value for key, value in self.used_settings().items() if key not in self.RUN_SETTINGS}

    def used_settings(self) -> dict[str, Any]:
        """The keys this run reads, so a job's parameters change only when its own training would: momentum only
        with SGD, the cosine floor only with a cosine schedule, the resize + flip keys only without the mosaic."""
        settings = asdict(self)
        unused = []
        if self.optimizer != "sgd":
            unused.append("momentum")
        if self.lr_schedule != "cosine":
            unused.append("min_lr")
        if self.warmup_iters == 0:
            unused.append("warmup_factor")
        if self.mosaic:
            unused += ["min_size_range", "max_size", "flip_prob"]
        for key in unused:
            settings.pop(key)
        return settings


@dataclass
class RetrainConfig(TrainConfig):
    """The ``retrain:`` section: decoupled classifier retraining. The keys of ``train`` (same meaning, defaults of
    the demo's retraining) plus the class-aware sampler's k and the RoIs per image of the classifier loss."""

    SECTION: ClassVar[str] = "retrain"
    SAMPLERS: ClassVar[tuple[str, ...]] = RETRAIN_SAMPLERS
    VALUE_CHECKS: ClassVar[dict[str, tuple[Any, dict[str, Any]]]] = RETRAIN_VALUE_CHECKS

    sampler: str = "repeat_factor"  # repeat_factor | class_aware | uniform
    batch_size: int = 16
    epochs: int = 100
    max_iterations: int | None = 500  # 8000 images
    warmup_iters: int = 20
    num_workers: int = 0  # the light retraining step runs faster without a loader process on 2 cores
    images_per_category: int = 5  # class_aware only: images drawn per category each epoch (the report's k)
    rois_per_image: int | None = None  # RoIs sampled per image for the classifier loss (null: the model's own)

    def used_settings(self) -> dict[str, Any]:
        """``TrainConfig.used_settings``; ``images_per_category`` only with the class-aware sampler."""
        settings = super().used_settings()
        if self.sampler != "class_aware":
            settings.pop("images_per_category")
        return settings


def check_lr_schedule(lr_schedule: Any, key: str) -> None:
    """``lr_schedule`` is "cosine", "constant" or a non-empty list of [epoch >= 0, lr > 0] pairs; else raise."""
    if isinstance(lr_schedule, str):
        if lr_schedule in NAMED_LR_SCHEDULES:
            return
    elif isinstance(lr_schedule, (list, tuple)) and lr_schedule and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and is_number(p[0]) and p[0] >= 0 and is_number(p[1]) and p[1] > 0
        for p in lr_schedule
    ):
        return
    raise ValueError(f"{key} must be 'cosine', 'constant' or [[epoch, lr], ...] with epoch >= 0 and lr > 0; "
                     f"got {lr_schedule!r}")


def check_min_size_range(value: Any, key: str) -> None:
    """``min_size_range`` is a short side >= 1 or a [lo, hi] pair of them with lo <= hi; else raise."""
    if is_int(value) and value >= 1:
        return
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(is_int(v) and v >= 1 for v in value) \
            and value[0] <= value[1]:
        return
    raise ValueError(f"{key} must be an integer >= 1 or a [lo, hi] pair of them with lo <= hi, got {value!r}")
