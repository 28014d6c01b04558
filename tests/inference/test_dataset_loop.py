"""The shared inference loop's AP-fixed pruning: pruned as batches come, the result is the top k per category of all
results, ties included."""

from __future__ import annotations

import torch

from longtail_seg.evaluation.protocols import top_per_category
from longtail_seg.inference.dataset_loop import run_over_dataset


class Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int):
        return torch.zeros(1, 2, 2), {"image_id": index + 1}


def fake_results(images, targets) -> list[dict]:
    """Per image: 7 results over categories 1-3 (and one of category 1203) with scores that tie across images."""
    out = []
    for target in targets:
        image_id = target["image_id"]
        for j in range(7):
            score = ((image_id * 7 + j) % 11) / 10
            out.append({"image_id": image_id, "category_id": 1 + j % 3, "score": score})
        out.append({"image_id": image_id, "category_id": 1203, "score": 0.5})
    return out


def test_pruning_as_batches_come_equals_the_top_k_of_all() -> None:
    model = torch.nn.Identity()
    everything = run_over_dataset(model, Images(), fake_results, batch_size=3)
    assert len(everything) == 40 * 8
    for k in (1, 4, 25, 1000):
        pruned = run_over_dataset(model, Images(), fake_results, batch_size=3, dets_per_category=k)
        assert pruned == top_per_category(everything, k)
        assert all(sum(r["category_id"] == c for r in pruned) == min(k, 40 * (3 if c == 1 else 2 if c < 4 else 1))
                   for c in (1, 2, 3, 1203))
