"""The test-time settings of one ``tests:`` entry, torch-free so that building the workflow's DAG validates them.

``TestConfig.from_dict`` is what ``workflow_scripts/infer.py`` and ``pseudo_labels.py`` build from their
``--test-cfg`` and what ``rules/common.smk`` checks every ``tests`` entry with before any job runs; ``multi_scale``
tells which inference path (``inference/predict.py`` or ``inference/tta.py``) an entry takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from longtail_seg.config_keys import reject_unknown_keys

LVIS_MAX_DETS_PER_IMAGE = 300
MERGE_METHODS = ("nms", "soft_nms")
SOFT_NMS_METHODS = ("linear", "gaussian")
# Keys that only the multi-scale path (inference/tta.py) reads; the first five select it when away from their default.
MULTI_SCALE_SELECTORS = ("scales", "flip", "merge", "scale_ranges", "mask_voting")
MULTI_SCALE_KEYS = (*MULTI_SCALE_SELECTORS, "merge_iou", "soft_nms_method")


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

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], section: str = "test config") -> TestConfig:
        """Build from a config dict; unknown keys and inconsistent multi-scale settings raise naming ``section``."""
        reject_unknown_keys(section, cfg, (f.name for f in fields(cls)))
        cfg = dict(cfg)
        if cfg.get("scales") is not None:
            cfg["scales"] = tuple(int(s) for s in cfg["scales"])
        if cfg.get("scale_ranges") is not None:
            cfg["scale_ranges"] = tuple((float(lo), float(hi)) for lo, hi in cfg["scale_ranges"])
        config = cls(**cfg)
        config.validate(section)
        return config

    def validate(self, section: str = "test config") -> None:
        """Settings that cannot work raise with the key."""
        if self.scales is not None and (not self.scales or min(self.scales) < 1):
            raise ValueError(f"{section}: scales must be a non-empty list of positive short sides, got {self.scales}")
        if self.merge not in MERGE_METHODS:
            raise ValueError(f"{section}: merge must be one of {list(MERGE_METHODS)}, got {self.merge!r}")
        if self.soft_nms_method not in SOFT_NMS_METHODS:
            raise ValueError(f"{section}: soft_nms_method must be one of {list(SOFT_NMS_METHODS)}, "
                             f"got {self.soft_nms_method!r}")
        if self.scale_ranges is not None and len(self.scale_ranges) != len(self.test_scales):
            raise ValueError(f"{section}: scale_ranges needs one [min, max] per scale ({len(self.test_scales)} "
                             f"scales: {list(self.test_scales)}), got {len(self.scale_ranges)}")
        for index, (low, high) in enumerate(self.scale_ranges or ()):
            if not 0 <= low < high:
                raise ValueError(f"{section}: scale_ranges[{index}] must be [min, max) with 0 <= min < max, "
                                 f"got [{low}, {high}]")

    @property
    def multi_scale(self) -> bool:
        """Whether this test needs the multi-scale path (a view, flip, merge or mask-voting key away from its
        default; ``merge_iou`` and ``soft_nms_method`` only tune that path)."""
        return any(getattr(self, key) != getattr(TestConfig, key) for key in MULTI_SCALE_SELECTORS)

    @property
    def test_scales(self) -> tuple[int, ...]:
        """The short sides of the views (``[min_size]`` without ``scales``)."""
        return self.scales if self.scales is not None else (self.min_size,)

    def view_size_ranges(self) -> list[tuple[float, float] | None]:
        """Scale-adaptive range of each view, in ``tta.augmented_views`` order (flipped views share their scale's)."""
        per_scale = self.scale_ranges if self.scale_ranges is not None else [None] * len(self.test_scales)
        return [r for r in per_scale for _ in ((0, 1) if self.flip else (0,))]

    def used_settings(self) -> dict[str, Any]:
        """The keys the chosen inference path reads (as plain config values): single-scale tests drop the
        multi-scale keys and soft-NMS settings are kept only with ``merge: soft_nms``, so a change elsewhere does
        not rerun this test."""
        settings = {f.name: getattr(self, f.name) for f in fields(self)}
        if not self.multi_scale:
            for key in MULTI_SCALE_KEYS:
                settings.pop(key)
            return _plain(settings)
        if self.scales is not None:  # the views' sizes come from `scales`
            settings.pop("min_size")
        if self.merge != "soft_nms":
            settings.pop("soft_nms_method")
        return _plain(settings)


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (the JSON / YAML form of a setting)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
