"""Image samplers for training: repeat factor sampling and class-aware sampling (distributed-aware)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from torch.utils.data import Sampler

from longtail_seg.sampling.class_aware import ClassAwareSampler
from longtail_seg.sampling.repeat_factor import RepeatFactorSampler, read_repeat_factors
from longtail_seg.sampling.uniform import EpochShardedSampler, UniformSampler

SAMPLER_NAMES = ("uniform", "repeat_factor", "class_aware")


def build_sampler(
    name: str,
    num_images: int,
    *,
    repeat_factors: Sequence[float] | None = None,
    repeat_factor_csv: str | os.PathLike | None = None,
    image_ids: Sequence[int] | None = None,
    image_category_ids: Sequence[Iterable[int]] | None = None,
    images_per_category: int = 5,
    shuffle: bool = True,
    seed: int = 0,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> Sampler[int]:
    """Build the sampler a config names: ``"uniform"`` or ``"repeat_factor"`` (factors given directly, or read from
    ``repeat_factor_csv`` aligned to ``image_ids``, the dataset's order) or ``"class_aware"`` (``images_per_category``
    images per category each epoch, from ``image_category_ids``: the category ids of each dataset index).
    """
    common = dict(shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank)
    if name == "uniform":
        return UniformSampler(num_images, **common)
    if name == "repeat_factor":
        if repeat_factors is None:
            if repeat_factor_csv is None or image_ids is None:
                raise ValueError("sampler 'repeat_factor' needs repeat_factors, or repeat_factor_csv with image_ids")
            repeat_factors = read_repeat_factors(repeat_factor_csv, image_ids)
        if len(repeat_factors) != num_images:
            raise ValueError(f"got {len(repeat_factors)} repeat factors for a dataset of {num_images} images")
        return RepeatFactorSampler(repeat_factors, **common)
    if name == "class_aware":
        if image_category_ids is None:
            raise ValueError("sampler 'class_aware' needs image_category_ids (dataset.image_category_ids(i) per index)")
        if len(image_category_ids) != num_images:
            raise ValueError(f"got category ids for {len(image_category_ids)} images for a dataset of {num_images}")
        return ClassAwareSampler(image_category_ids, images_per_category=images_per_category, **common)
    raise ValueError(f"unknown sampler '{name}'; choose one of {SAMPLER_NAMES}")


__all__ = [
    "SAMPLER_NAMES",
    "ClassAwareSampler",
    "EpochShardedSampler",
    "RepeatFactorSampler",
    "UniformSampler",
    "build_sampler",
    "read_repeat_factors",
]
