"""Uniform (instance-balanced baseline) image sampler, and the per-epoch, distributed-aware base all samplers share.

Every sampler builds one epoch list from a generator seeded by (seed, epoch), identical on every rank, then pads
it to a multiple of ``num_replicas`` and gives rank ``r`` the positions ``r, r + R, r + 2R, ...``: shards are
disjoint in position, cover the epoch list together, and have equal lengths (DDP needs equal step counts).
"""

from __future__ import annotations

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def resolve_replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """Default (num_replicas, rank) from torch.distributed when initialised, else (1, 0); validate the pair."""
    distributed = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if distributed else 1
    if rank is None:
        rank = dist.get_rank() if distributed else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas=} {rank=}")
    return int(num_replicas), int(rank)


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """Random generator seeded by (seed, epoch): same stream on every rank, a fresh one each epoch."""
    return np.random.default_rng([int(seed), int(epoch)])


def pad_to_multiple(indices: np.ndarray, num_replicas: int) -> np.ndarray:
    """Pad by repeating the list's head (cyclically) until its length is a multiple of ``num_replicas``."""
    padding = (-len(indices)) % num_replicas
    if padding == 0 or len(indices) == 0:
        return indices
    return np.concatenate([indices, np.resize(indices, padding)])


class EpochShardedSampler(Sampler[int]):
    """Base for samplers whose epoch list is a function of (seed, epoch); subclasses define :meth:`epoch_indices`."""

    def __init__(self, shuffle: bool = True, seed: int = 0, num_replicas: int | None = None, rank: int | None = None):
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas, self.rank = resolve_replicas(num_replicas, rank)
        self.epoch = 0
        self._cache: tuple[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose list :meth:`__iter__` and :meth:`__len__` describe (call before each epoch)."""
        self.epoch = int(epoch)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The full (single-replica, unpadded) list of dataset indices for ``epoch``."""
        raise NotImplementedError

    def shard(self, epoch: int) -> np.ndarray:
        """This rank's indices for ``epoch``: padded epoch list, positions ``rank::num_replicas``."""
        if self._cache is None or self._cache[0] != epoch:
            padded = pad_to_multiple(self.epoch_indices(epoch), self.num_replicas)
            self._cache = (epoch, padded[self.rank :: self.num_replicas])
        return self._cache[1]

    def __iter__(self):
        return iter(self.shard(self.epoch).tolist())

    def __len__(self) -> int:
        return len(self.shard(self.epoch))


class UniformSampler(EpochShardedSampler):
    """Every image once per epoch, shuffled per (seed, epoch): the uniform / instance-balanced baseline."""

    def __init__(
        self,
        num_images: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if num_images < 1:
            raise ValueError(f"UniformSampler needs at least one image, got num_images={num_images}")
        super().__init__(shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank)
        self.num_images = int(num_images)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_images)
        return epoch_rng(self.seed, epoch).permutation(self.num_images)


__all__ = ["EpochShardedSampler", "UniformSampler", "epoch_rng", "pad_to_multiple", "resolve_replicas"]
