"""Repeat factor sampling (LVIS paper, Gupta et al. 2019; detectron2's RepeatFactorTrainingSampler semantics).

Image i has a repeat factor r_i >= 0 (max over its categories of max(1, sqrt(t / f_c)), computed by
``longtail_seg.stats``). Each epoch, image i appears floor(r_i) + Bernoulli(frac(r_i)) times, so its expected count
per epoch is exactly r_i; the rounding, the shuffle and the sharding over ranks are seeded by (seed, epoch).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from longtail_seg.data.lvis_io import DatasetError
from longtail_seg.sampling.uniform import EpochShardedSampler, epoch_rng

CSV_COLUMNS = ("image_id", "repeat_factor")


class RepeatFactorSampler(EpochShardedSampler):
    """Yield dataset indices repeated by stochastically rounded repeat factors, shuffled and sharded per epoch."""

    def __init__(
        self,
        repeat_factors: Sequence[float],
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        factors = np.asarray(repeat_factors, dtype=np.float64).reshape(-1)
        if len(factors) == 0:
            raise ValueError("RepeatFactorSampler needs one repeat factor per image, got none")
        bad = np.flatnonzero(~np.isfinite(factors) | (factors < 0))
        if len(bad):
            raise ValueError(f"repeat factors must be finite and >= 0; index {bad[0]} has {factors[bad[0]]}")
        super().__init__(shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank)
        self.repeat_factors = factors
        self._integer_part = np.floor(factors).astype(np.int64)
        self._fractional_part = factors - self._integer_part

    @classmethod
    def from_csv(cls, path: str | os.PathLike, image_ids: Sequence[int], **kwargs) -> RepeatFactorSampler:
        """Build from ``image_repeat_factors.csv`` (image_id, repeat_factor, sampling_prob), aligned to ``image_ids``
        (the dataset's order). Extra CSV rows are ignored; a dataset image missing from the CSV is an error.
        """
        return cls(read_repeat_factors(path, image_ids), **kwargs)

    @property
    def expected_epoch_length(self) -> float:
        """Expected number of indices per epoch over all replicas (sum of r_i, before padding)."""
        return float(self.repeat_factors.sum())

    def epoch_indices(self, epoch: int) -> np.ndarray:
        rng = epoch_rng(self.seed, epoch)
        counts = self._integer_part + (rng.random(len(self.repeat_factors)) < self._fractional_part)
        indices = np.repeat(np.arange(len(self.repeat_factors)), counts)
        return rng.permutation(indices) if self.shuffle else indices


def read_repeat_factors(path: str | os.PathLike, image_ids: Sequence[int]) -> np.ndarray:
    """Repeat factors from ``image_repeat_factors.csv`` in the order of ``image_ids``; errors name file and image."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: repeat factor file not found; run the dataset statistics step first")
    table = pd.read_csv(path)
    missing_columns = [c for c in CSV_COLUMNS if c not in table.columns]
    if missing_columns:
        raise DatasetError(f"{path}: missing column(s) {missing_columns}; expected columns image_id,repeat_factor,...")
    duplicated = table["image_id"][table["image_id"].duplicated()]
    if len(duplicated):
        raise DatasetError(f"{path}: image id {duplicated.iloc[0]} appears twice; regenerate the statistics")
    factor_of = pd.Series(table["repeat_factor"].to_numpy(np.float64), index=table["image_id"].to_numpy(np.int64))
    wanted = np.asarray(image_ids, dtype=np.int64)
    missing = ~np.isin(wanted, factor_of.index.to_numpy())
    if missing.any():
        raise DatasetError(
            f"{path}: image id {wanted[missing][0]} of the training set has no repeat factor "
            f"({int(missing.sum())} images missing); the statistics were computed on another annotation file, "
            "rerun the dataset statistics step on the training annotations"
        )
    return factor_of.loc[wanted].to_numpy(np.float64)
