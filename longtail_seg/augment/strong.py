"""Strong augmentation for pseudo-labelled images (the report's Section 4.1, "Unlabeled Data"): Gaussian blur, colour
jitter and cutout, applied to the pseudo-labelled images only, so the student cannot simply copy the teacher.

Photometric only: the geometry (boxes, masks) is untouched, so it composes before the resize/flip pipeline or the
balanced mosaic. Cutout grey rectangles may hide part of an object; its label stays (as in the cutout paper and the
report), which acts as occlusion noise. Random draws come from torch's global generator, which the DataLoader seeds
per worker from the training seed, like the other training transforms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from longtail_seg.augment.mosaic import DEFAULT_FILL, color_jitter
from longtail_seg.config_keys import reject_unknown_keys

Target = dict[str, Any]


@dataclass(frozen=True)
class StrongAugmentConfig:
    """The ``augment.strong`` config section (every key optional; these are the defaults)."""

    blur_prob: float = 0.5  # probability of a Gaussian blur
    blur_sigma: Sequence[float] = (0.1, 1.0)  # blur sigma drawn uniformly from this range (pixels)
    jitter_prob: float = 0.8  # probability of a colour jitter
    color_jitter: Mapping[str, float] = field(
        default_factory=lambda: {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.0}
    )
    cutout_prob: float = 0.5  # probability of cutting holes
    cutout_holes: Sequence[int] = (1, 3)  # number of holes drawn from this inclusive range
    cutout_size: Sequence[float] = (0.05, 0.2)  # hole side as a fraction of the image side
    fill_value: float = DEFAULT_FILL  # grey of the holes

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> StrongAugmentConfig:
        """Build from a config dict; unknown keys and out-of-range values raise with the key name."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        reject_unknown_keys("augment.strong", cfg, known)
        config = cls(**cfg)
        config.validate()
        return config

    def validate(self) -> None:
        for name in ("blur_prob", "jitter_prob", "cutout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.strong.{name} must be in [0, 1], got {value}")
        _check_pair("blur_sigma", self.blur_sigma, minimum=0.0)
        _check_pair("cutout_holes", self.cutout_holes, minimum=0)
        _check_pair("cutout_size", self.cutout_size, minimum=0.0, maximum=1.0)
        reject_unknown_keys("augment.strong.color_jitter", self.color_jitter,
                            ("brightness", "contrast", "saturation", "hue"))


def _check_pair(name: str, values: Sequence[float], minimum: float, maximum: float = float("inf")) -> None:
    pair = list(values)
    if len(pair) != 2 or not minimum <= pair[0] <= pair[1] <= maximum:
        raise ValueError(f"augment.strong.{name} must be a [lo, hi] pair with {minimum} <= lo <= hi <= {maximum}, "
                         f"got {values}")


class StrongAugment:
    """``(image, target) -> (image, target)``: blur, colour jitter and cutout, each with its own probability."""

    def __init__(self, cfg: StrongAugmentConfig | Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg if isinstance(cfg, StrongAugmentConfig) else StrongAugmentConfig.from_dict(cfg)
        jitter = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}
        jitter.update({k: float(v) for k, v in self.cfg.color_jitter.items()})
        self.jitter = jitter

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        cfg = self.cfg
        if _chance(cfg.blur_prob):
            sigma = _uniform(*cfg.blur_sigma)
            if sigma > 0:
                kernel = 2 * int(np.ceil(3 * sigma)) + 1
                image = TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
        if _chance(cfg.jitter_prob):
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)).item()))
            image = color_jitter(image, self.jitter, rng)
        if _chance(cfg.cutout_prob):
            image = cutout(image, cfg.cutout_holes, cfg.cutout_size, cfg.fill_value)
        return image, target

    def __repr__(self) -> str:
        return f"StrongAugment({self.cfg})"


def cutout(
    image: torch.Tensor, holes: Sequence[int], size: Sequence[float], fill: float = DEFAULT_FILL
) -> torch.Tensor:
    """Grey out a random number (``holes`` range) of random squares (side ``size`` x image side) of ``image``."""
    height, width = image.shape[-2:]
    count = int(torch.randint(int(holes[0]), int(holes[1]) + 1, (1,)).item())
    image = image.clone()
    for _ in range(count):
        side = max(1, round(_uniform(*size) * min(height, width)))
        y0 = int(torch.randint(0, max(1, height - side + 1), (1,)).item())
        x0 = int(torch.randint(0, max(1, width - side + 1), (1,)).item())
        image[..., y0 : y0 + side, x0 : x0 + side] = fill
    return image


def _chance(probability: float) -> bool:
    """True with ``probability`` (always draws, so later draws do not depend on the probability)."""
    return bool(torch.rand(1).item() < probability)


def _uniform(low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand(1).item())
