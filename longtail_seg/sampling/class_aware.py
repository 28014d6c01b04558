"""Class-aware sampling (Shen et al. 2016, as used for classifier retraining by Kang et al.'s cRT and the report's
double classifier): every epoch draws ``k`` images per category, so each category with at least one training image
is seen equally often whatever its frequency.

Each category c keeps a list of the images containing it. The list is shuffled once per *pass* and consecutive
epochs read consecutive windows of ``k`` positions from it, a pass lasting ceil(n_c / k) epochs: a category with
n_c >= k images gets k distinct images per epoch and all its images over one pass; a category with n_c < k images
repeats its images (each floor(k / n_c) or ceil(k / n_c) times), the only case of sampling with replacement. Pass
permutations are seeded by (seed, category id, pass) and the epoch list is shuffled by (seed, epoch), so any epoch is
reproducible on its own, on every rank, without state carried between epochs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from longtail_seg.sampling.uniform import EpochShardedSampler, epoch_rng

# Distinguishes the per-category pass streams from the per-epoch shuffle stream of the same seed.
_PASS_STREAM_TAG = 0x5A17


class ClassAwareSampler(EpochShardedSampler):
    """Yield ``images_per_category`` images for every category present in the dataset each epoch, shuffled and sharded.

    An epoch has C x k indices (C = categories with at least one image); an image holding several categories can be
    drawn once per category. Images without annotations are never drawn.
    """

    def __init__(
        self,
        image_category_ids: Sequence[Iterable[int]],
        images_per_category: int = 5,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if images_per_category < 1:
            raise ValueError(f"images_per_category must be >= 1, got {images_per_category}")
        super().__init__(shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank)
        self.images_per_category = int(images_per_category)
        self.num_images = len(image_category_ids)
        self.category_ids, self._offsets, self._images = _index_images_by_category(image_category_ids)
        if len(self.category_ids) == 0:
            raise ValueError(
                f"ClassAwareSampler needs at least one image with a category; all {self.num_images} images have none "
                "(check that the training annotation file has annotations)"
            )

    @classmethod
    def from_dataset(cls, dataset, **kwargs) -> ClassAwareSampler:
        """Build from a dataset exposing ``image_category_ids(index)`` (e.g. ``LVISDetectionDataset``)."""
        if not hasattr(dataset, "image_category_ids"):
            raise TypeError(
                f"{type(dataset).__name__} has no image_category_ids(index); class-aware sampling needs the category "
                "ids of each image (use LVISDetectionDataset or pass image_category_ids directly)"
            )
        return cls([dataset.image_category_ids(i) for i in range(len(dataset))], **kwargs)

    @property
    def num_categories(self) -> int:
        """Number of categories drawn each epoch (those present in at least one image)."""
        return len(self.category_ids)

    def images_of(self, category_id: int) -> np.ndarray:
        """Dataset indices of the images containing ``category_id`` (sorted)."""
        position = int(np.searchsorted(self.category_ids, category_id))
        if position >= len(self.category_ids) or self.category_ids[position] != category_id:
            raise KeyError(f"category id {category_id} is in no image of this sampler")
        return self._images[self._offsets[position] : self._offsets[position + 1]]

    def epoch_draws(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(dataset indices, the category each index was drawn for) of ``epoch``, both of length C x k."""
        k = self.images_per_category
        indices = np.concatenate([self._category_window(c, epoch) for c in range(self.num_categories)])
        categories = np.repeat(self.category_ids, k)
        if self.shuffle:
            order = epoch_rng(self.seed, epoch).permutation(len(indices))
            indices, categories = indices[order], categories[order]
        return indices, categories

    def epoch_indices(self, epoch: int) -> np.ndarray:
        return self.epoch_draws(epoch)[0]

    def _category_window(self, position: int, epoch: int) -> np.ndarray:
        """The k images of the category at ``position`` for ``epoch``: window ``epoch mod P`` of pass ``epoch // P``."""
        images = self._images[self._offsets[position] : self._offsets[position + 1]]
        k = self.images_per_category
        epochs_per_pass = -(-len(images) // k)  # ceil(n_c / k)
        pass_index, window = divmod(int(epoch), epochs_per_pass)
        if self.shuffle:
            stream = [self.seed, _PASS_STREAM_TAG, int(self.category_ids[position]), pass_index]
            images = np.random.default_rng(stream).permutation(images)
        return images[(window * k + np.arange(k)) % len(images)]


def _index_images_by_category(image_category_ids: Sequence[Iterable[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR index of images per category: (sorted category ids, offsets [C+1], image indices grouped by category)."""
    pairs = [(int(c), i) for i, categories in enumerate(image_category_ids) for c in set(categories)]
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64)
    table = np.asarray(pairs, dtype=np.int64)
    table = table[np.lexsort((table[:, 1], table[:, 0]))]
    category_ids, counts = np.unique(table[:, 0], return_counts=True)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return category_ids, offsets, table[:, 1].copy()


__all__ = ["ClassAwareSampler"]
