"""Draw augmented training samples (image, mask overlays, boxes, labels) into one PNG grid: what the model sees."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from longtail_seg.io_utils import atomic_path  # noqa: E402
from longtail_seg.visualize import draw_instances  # noqa: E402

Sample = tuple[torch.Tensor, dict[str, Any]]
CategoryNames = Mapping[int, str] | Sequence[str] | None


def save_augmented_grid(
    dataset_or_samples: torch.utils.data.Dataset | Sequence[Sample],
    path: str | os.PathLike,
    num: int = 16,
    category_names: CategoryNames = None,
) -> None:
    """Write the first ``num`` samples as a PNG grid (atomic write).

    ``dataset_or_samples`` is a dataset returning ``(image [3,H,W] float in [0,1], target)`` or a list of such
    pairs. ``category_names`` maps labels to names: a mapping ``{label: name}`` or a sequence in label order
    (``names[label - 1]``, the order of ``LVISDetectionDataset.category_ids``); labels are printed as numbers without.
    """
    samples = _first_samples(dataset_or_samples, num)
    if not samples:
        raise ValueError("save_augmented_grid needs at least one sample")
    columns = math.ceil(math.sqrt(len(samples)))
    rows = math.ceil(len(samples) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, target) in zip(axes.flat, samples):
        _draw_sample(ax, image, target, category_names)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _first_samples(dataset_or_samples: Any, num: int) -> list[Sample]:
    if isinstance(dataset_or_samples, (list, tuple)):
        return list(dataset_or_samples[:num])
    return [dataset_or_samples[i] for i in range(min(num, len(dataset_or_samples)))]


def _draw_sample(ax: plt.Axes, image: torch.Tensor, target: dict[str, Any], names: CategoryNames) -> None:
    """Image with coloured mask overlays, boxes in the same colours and label names (``visualize.draw_instances``)."""
    rgb = image.detach().permute(1, 2, 0).clamp(0, 1).numpy().astype(np.float32)
    boxes = target.get("boxes", torch.zeros((0, 4))).tolist()
    labels = target.get("labels", torch.zeros(0, dtype=torch.int64)).tolist()
    masks = target.get("masks")
    mask_list = list(masks.bool().numpy()) if masks is not None else [None] * len(labels)
    draw_instances(ax, rgb, boxes, mask_list, [_label_name(label, names) for label in labels], fontsize=6)
    ax.set_title(_title(target), fontsize=7)


def _label_name(label: int, names: CategoryNames) -> str:
    if names is None:
        return str(label)
    if isinstance(names, Mapping):
        return str(names.get(label, label))
    return names[label - 1] if 1 <= label <= len(names) else str(label)


def _title(target: dict[str, Any]) -> str:
    ids = target.get("mosaic_image_ids")
    if ids and len(ids) > 1:
        return "mosaic " + " ".join(str(i) for i in ids)
    return f"image {target.get('image_id', '?')}"
