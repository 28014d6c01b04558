"""The test-time settings of one ``tests:`` entry, torch-free so that building the workflow's DAG validates them.

``TestConfig.from_dict`` is what ``workflow_scripts/infer.py`` and ``pseudo_labels.py`` build from their
``--test-cfg`` and what ``rules/common.smk`` checks every ``tests`` entry with before any job runs; ``multi_scale``
tells which inference path (``inference/predict.py`` or ``inference/tta.py``) an entry takes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from longtail_seg.config_keys import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    is_int,
    is_number,
    reject_unknown_keys,
)

LVIS_MAX_DETS_PER_IMAGE = 300
MERGE_METHODS = ("nms", "soft_nms")
SOFT_NMS_METHODS = ("linear", "gaussian")
# Evaluation protocols (longtail_seg/evaluation/protocols.py); the per-category ones make inference keep each
# category's `dets_per_category` best detections over the split (AP-fixed, Dave et al. 2021: 10,000).
PROTOCOLS = ("standard", "fixed", "boundary", "challenge2021")
PER_CATEGORY_PROTOCOLS = ("fixed", "challenge2021")
PROTOCOL_KEYS = ("protocol", "dets_per_category")
AP_FIXED_DETS_PER_CATEGORY = 10000
# Keys that only the multi-scale path (inference/tta.py) reads; the first five select it when away from their default.
MULTI_SCALE_SELECTORS = ("scales", "flip", "merge", "scale_ranges", "mask_voting")
MULTI_SCALE_KEYS = (*MULTI_SCALE_SELECTORS, "merge_iou", "soft_nms_method")
# The type and range of every scalar key: (check, bounds). Messages read "SECTION: KEY must be ..., got VALUE".
VALUE_CHECKS: dict[str, tuple[Any, dict[str, Any]]] = {
    "min_size": (check_int, {"minimum": 1}),
    "max_size": (check_int, {"minimum": 1}),
    "batch_size": (check_int, {"minimum": 1}),
    "num_workers": (check_int, {"minimum": 0}),
    "max_dets": (check_int, {"minimum": 1}),
    "mask_threshold": (check_number, {"minimum": 0, "maximum": 1, "exclusive_minimum": True}),
    "flip": (check_bool, {}),
    "merge_iou": (check_number, {"minimum": 0, "maximum": 1}),
    "mask_voting": (check_bool, {}),
    "dets_per_category": (check_int, {"minimum": 1}),
}


@dataclass(frozen=True)
class TestConfig:
    """One ``tests:`` entry of config.yaml: single-scale, or multi-scale + flip (``inference/tta.py``)."""

    __test__ = False  # not a pytest test class, despite the name

    min_size: int = 800  # short side of the test image (single scale; the views' sizes come from `scales`)
    max_size: int = 1333  # cap on the long side
    batch_size: int = 8
    num_workers: int = 0
    max_dets: int = LVIS_MAX_DETS_PER_IMAGE  # detections per image (LVIS allows 300); also sets the model's own cap
    mask_threshold: float = 0.5
    # multi-scale testing (any of these set -> inference/tta.py)
    scales: tuple[int, ...] | None = None  # short sides of the views; null = [min_size]
    flip: bool = False  # also every scale flipped left-right
    merge: str = "nms"  # how the views' detections merge: nms | soft_nms
    merge_iou: float = 0.5
    soft_nms_method: str = "linear"  # linear | gaussian
    scale_ranges: tuple[tuple[float, float], ...] | None = None  # per scale: [min, max) of sqrt(box area), original px
    mask_voting: bool = False  # masks averaged over every view (else from the first scale, unflipped)
    # NorCal post-hoc calibration (inference/norcal.py): foreground scores / training instance count ** gamma,
    # renormalised with the background; null = off. Needs the dataset statistics (category_stats.csv).
    norcal_gamma: float | None = None
    # evaluation (longtail_seg/evaluation/protocols.py)
    protocol: str = "standard"  # standard | fixed | boundary | challenge2021
    dets_per_category: int = AP_FIXED_DETS_PER_CATEGORY  # fixed / challenge2021: detections per category per split

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], section: str = "test config") -> TestConfig:
        """Build from a config dict; unknown keys and inconsistent multi-scale settings raise naming ``section``."""
        reject_unknown_keys(section, cfg, (f.name for f in fields(cls)))
        cfg = dict(cfg)
        if cfg.get("scales") is not None:
            _check_scales(cfg["scales"], section)
            cfg["scales"] = tuple(int(s) for s in cfg["scales"])
        if cfg.get("scale_ranges") is not None:
            _check_scale_ranges(cfg["scale_ranges"], section)
            cfg["scale_ranges"] = tuple((float(lo), float(hi)) for lo, hi in cfg["scale_ranges"])
        config = cls(**cfg)
        config.validate(section)
        return config

    def validate(self, section: str = "test config") -> None:
        """Values of the wrong type or out of range, and settings that cannot work, raise with the key."""
        for key, (check, bounds) in VALUE_CHECKS.items():
            check(f"{section}: {key}", getattr(self, key), **bounds)
        if self.scales is not None:
            _check_scales(self.scales, section)
        check_number(f"{section}: norcal_gamma", self.norcal_gamma, minimum=0, allow_none=True)
        check_choice(f"{section}: merge", self.merge, MERGE_METHODS)
        check_choice(f"{section}: soft_nms_method", self.soft_nms_method, SOFT_NMS_METHODS)
        check_choice(f"{section}: protocol", self.protocol, PROTOCOLS)
        if self.scale_ranges is not None:
            _check_scale_ranges(self.scale_ranges, section)
        if self.scale_ranges is not None and len(self.scale_ranges) != len(self.test_scales):
            raise ValueError(f"{section}: scale_ranges needs one [min, max] per scale ({len(self.test_scales)} "
                             f"scales: {list(self.test_scales)}), got {len(self.scale_ranges)}")

    @property
    def multi_scale(self) -> bool:
        """Whether this test needs the multi-scale path (a view, flip, merge or mask-voting key away from its
        default; ``merge_iou`` and ``soft_nms_method`` only tune that path)."""
        return any(getattr(self, key) != getattr(TestConfig, key) for key in MULTI_SCALE_SELECTORS)

    @property
    def test_scales(self) -> tuple[int, ...]:
        """The short sides of the views (``[min_size]`` without ``scales``)."""
        return self.scales if self.scales is not None else (self.min_size,)

    @property
    def per_category_top_k(self) -> int | None:
        """How many detections per category inference keeps over the split (AP-fixed's k), or None (no such cap)."""
        return self.dets_per_category if self.protocol in PER_CATEGORY_PROTOCOLS else None

    def evaluation_settings(self) -> dict[str, Any]:
        """What the evaluation of this test reads (rule evaluate): the protocol and AP-fixed's k."""
        return {"protocol": self.protocol, "dets_per_category": self.dets_per_category}

    def view_size_ranges(self) -> list[tuple[float, float] | None]:
        """Scale-adaptive range of each view, in ``tta.augmented_views`` order (flipped views share their scale's)."""
        per_scale = self.scale_ranges if self.scale_ranges is not None else [None] * len(self.test_scales)
        return [r for r in per_scale for _ in ((0, 1) if self.flip else (0,))]

    def used_settings(self) -> dict[str, Any]:
        """The keys the chosen inference path reads (as plain config values): single-scale tests drop the
        multi-scale keys and soft-NMS settings are kept only with ``merge: soft_nms``, so a change elsewhere does
        not rerun this test."""
        settings = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.norcal_gamma is None:  # off: not a setting of the job (tests without it keep their results)
            settings.pop("norcal_gamma")
        if self.per_category_top_k is None:  # standard / boundary: inference is the standard one
            for key in PROTOCOL_KEYS:
                settings.pop(key)
        if not self.multi_scale:
            for key in MULTI_SCALE_KEYS:
                settings.pop(key)
            return _plain(settings)
        if self.scales is not None:  # the views' sizes come from `scales`
            settings.pop("min_size")
        if self.merge != "soft_nms":
            settings.pop("soft_nms_method")
        return _plain(settings)


def _check_scales(scales: Any, section: str) -> None:
    """``scales`` is a non-empty list of short sides >= 1; else raise naming ``section``."""
    if not isinstance(scales, (list, tuple)) or not scales or not all(is_int(s) and s >= 1 for s in scales):
        raise ValueError(f"{section}: scales must be a non-empty list of positive integer short sides or null, "
                         f"got {_plain(scales)!r}")


def _check_scale_ranges(scale_ranges: Any, section: str) -> None:
    """``scale_ranges`` is a list of [min, max) pairs of numbers with 0 <= min < max (max may be .inf); else raise
    naming ``section`` and the entry."""
    if not isinstance(scale_ranges, (list, tuple)):
        raise ValueError(f"{section}: scale_ranges must be a list of [min, max] pairs (one per scale) or null, "
                         f"got {_plain(scale_ranges)!r}")
    for index, pair in enumerate(scale_ranges):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and is_number(pair[0])
                and (is_number(pair[1]) or pair[1] == math.inf) and 0 <= pair[0] < pair[1]):
            raise ValueError(f"{section}: scale_ranges[{index}] must be [min, max) with 0 <= min < max, "
                             f"got {_plain(pair)!r}")


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (the JSON / YAML form of a setting)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
