"""A tiny learnable detection dataset in memory: coloured rectangles on a dark background.

Category k has its own colour, so a detector can learn it in a few dozen steps; every item is a
deterministic function of (seed, index).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1]])


class FakeDetectionDataset(Dataset):
    """``num_images`` images of ``size`` x ``size`` with 1-3 rectangles each; labels 1..num_classes."""

    def __init__(
        self, num_images: int = 16, size: int = 64, num_classes: int = 3, seed: int = 0, sizes: list[int] | None = None
    ) -> None:
        self.num_images = num_images
        self.size = size
        self.sizes = sizes  # per-index image sizes (default: ``size`` for every image)
        self.num_classes = num_classes
        self.seed = seed
        self.category_ids = [100 + k for k in range(1, num_classes + 1)]
        self.image_ids = list(range(num_images))

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int):
        g = torch.Generator().manual_seed(self.seed * 10_000 + index)
        size = self.sizes[index] if self.sizes is not None else self.size
        image = torch.rand(3, size, size, generator=g) * 0.15
        count = int(torch.randint(1, 4, (1,), generator=g))
        boxes, labels, masks = [], [], []
        for _ in range(count):
            w, h = (int(v) for v in torch.randint(size // 5, size // 2, (2,), generator=g))
            x0 = int(torch.randint(0, size - w, (1,), generator=g))
            y0 = int(torch.randint(0, size - h, (1,), generator=g))
            label = int(torch.randint(1, self.num_classes + 1, (1,), generator=g))
            image[:, y0 : y0 + h, x0 : x0 + w] = COLOURS[label - 1].view(3, 1, 1)
            mask = torch.zeros(size, size, dtype=torch.uint8)
            mask[y0 : y0 + h, x0 : x0 + w] = 1
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(label)
            masks.append(mask)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.stack(masks),
            "image_id": index,
            "orig_size": (size, size),
        }
        return image, target


class OrderedSampler(torch.utils.data.Sampler):
    """All indices in a fixed, epoch-seeded order (stands in for the data package's samplers)."""

    def __init__(self, num_images: int, seed: int = 0) -> None:
        self.num_images = num_images
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_images, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_images


def collate(batch):
    """Lists of images and targets (what torchvision detection models take)."""
    return [item[0] for item in batch], [item[1] for item in batch]


# A fast model for tests: the demo architecture, smaller RPN/RoI budgets.
TEST_MODEL_CFG = {
    "backbone": "tiny",
    "tiny_stem_channels": 8,
    "tiny_stage_channels": [16, 24, 32],
    "fpn_channels": 16,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "box_batch_size_per_image": 32,
    "box_head_dim": 64,
    "mask_head_channels": 16,
    "mask_head_layers": 1,
    "box_detections_per_img": 50,
}
