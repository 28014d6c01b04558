"""Torch Dataset over an LVIS/COCO annotation file: images as float tensors, targets in torchvision's detection format.

Labels are contiguous 1..C (0 is background, torchvision convention) in the order of ``category_ids``. Annotations
are indexed per image once at construction, so ``__getitem__`` only decodes one image and its own masks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from longtail_seg.data.lvis_io import DatasetError, image_path, load_lvis
from longtail_seg.data.masks import decode_segmentation

Target = dict[str, Any]
Transform = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]


class _ImageAnnotations:
    """The annotations of one image as arrays (boxes xyxy, category ids, crowd flags) plus raw segmentations."""

    __slots__ = ("annotation_ids", "boxes", "category_ids", "iscrowd", "segmentations")

    def __init__(self, anns: list[dict]) -> None:
        self.annotation_ids = [a["id"] for a in anns]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        self.boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        self.category_ids = np.array([a["category_id"] for a in anns], dtype=np.int64)
        self.iscrowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        self.segmentations = [a.get("segmentation") for a in anns]


class LVISDetectionDataset(torch.utils.data.Dataset):
    """LVIS/COCO instance-segmentation dataset returning ``(image [3,H,W] float in [0,1], target dict)``.

    ``target`` holds ``boxes`` (float32 [N,4] xyxy pixels), ``labels`` (int64 [N], 1..C), ``masks`` (uint8
    [N,H,W], only when ``with_masks``), ``image_id`` (int) and ``orig_size`` ((H, W) before transforms).
    Crowd annotations (``iscrowd=1``) are skipped, unless ``crowd_as_ignore``: then they are instances like the
    others (they follow every augmentation) and ``target["iscrowd"]`` (bool [N]) marks them; the RoI heads treat
    them as ignore regions (``models/detector.py``). ``transforms`` is called as ``transforms(image, target)``.
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        image_root: str | os.PathLike,
        transforms: Transform | None = None,
        category_ids: Sequence[int] | None = None,
        with_masks: bool = True,
        crowd_as_ignore: bool = False,
    ) -> None:
        self.annotation_file = str(annotation_file)
        self.image_root = image_root
        self.transforms = transforms
        self.with_masks = with_masks
        self.crowd_as_ignore = crowd_as_ignore
        data = load_lvis(annotation_file, image_root=image_root, require_annotations=False)
        file_category_ids = sorted(c["id"] for c in data["categories"])
        self.category_ids: list[int] = list(category_ids) if category_ids is not None else file_category_ids
        if len(set(self.category_ids)) != len(self.category_ids):
            raise DatasetError(f"{annotation_file}: category_ids passed to the dataset contain duplicates")
        self._label_of = {cid: label for label, cid in enumerate(self.category_ids, start=1)}
        names = {c["id"]: str(c.get("name", c["id"])) for c in data["categories"]}
        self.category_names: list[str] = [names.get(cid, str(cid)) for cid in self.category_ids]  # label order
        self.images: list[dict] = list(data["images"])
        self.image_ids: list[int] = [im["id"] for im in self.images]
        self._annotations = self._index_annotations(data.get("annotations", []))

    @property
    def num_classes(self) -> int:
        """Number of foreground classes C (labels run 1..C; 0 is background)."""
        return len(self.category_ids)

    def label_of(self, category_id: int) -> int:
        """Contiguous label (1..C) of a dataset category id."""
        try:
            return self._label_of[category_id]
        except KeyError:
            message = f"category id {category_id} is not one of the dataset's {self.num_classes} categories"
            raise KeyError(message) from None

    def category_of(self, label: int) -> int:
        """Dataset category id of a contiguous label (1..C)."""
        if not 1 <= label <= self.num_classes:
            raise KeyError(f"label {label} is outside 1..{self.num_classes} (0 is background)")
        return self.category_ids[label - 1]

    def image_category_ids(self, index: int) -> set[int]:
        """Category ids present (non-crowd) in the image at ``index``; what class-aware / RFS samplers index on."""
        anns = self._annotations[index]
        return set(anns.category_ids[~anns.iscrowd].tolist())

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        record = self.images[index]
        image = self._load_image(record)
        target = self._build_target(index, record)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def _index_annotations(self, annotations: list[dict]) -> list[_ImageAnnotations]:
        """Group annotations per image (dataset order; crowd ones only with ``crowd_as_ignore``), checking
        categories and segmentations once."""
        position = {image_id: i for i, image_id in enumerate(self.image_ids)}
        per_image: list[list[dict]] = [[] for _ in self.images]
        for ann in annotations:
            if ann.get("iscrowd", 0) and not self.crowd_as_ignore:
                continue
            if ann["category_id"] not in self._label_of:
                raise DatasetError(
                    f"{self.annotation_file}: annotation id {ann['id']}: category_id {ann['category_id']} is not in "
                    "the category_ids given to the dataset; pass the full category list of this file"
                )
            if self.with_masks and not ann.get("segmentation"):
                raise DatasetError(
                    f"{self.annotation_file}: annotation id {ann['id']}: no 'segmentation'; "
                    "add one or build the dataset with with_masks=False"
                )
            per_image[position[ann["image_id"]]].append(ann)
        return [_ImageAnnotations(anns) for anns in per_image]

    def _load_image(self, record: dict) -> torch.Tensor:
        """Decode an image file to a float32 [3,H,W] tensor in [0,1], checking its size against the record."""
        path = image_path(record, self.image_root)
        try:
            with Image.open(path) as pil:
                array = np.asarray(pil.convert("RGB"))
        except (OSError, Image.DecompressionBombError) as err:  # truncated, not an image, unreadable
            raise DatasetError(
                f"{self.annotation_file}: image id {record['id']}: cannot decode image file {path} ({err}); "
                "re-download or re-extract the file, or remove the image and its annotations "
                "(workflow_scripts/check_dataset.py lists every bad file in one pass)"
            ) from err
        height, width = array.shape[:2]
        if (height, width) != (record["height"], record["width"]):
            raise DatasetError(
                f"{self.annotation_file}: image id {record['id']}: file {path} is {width}x{height} but the record "
                f"says {record['width']}x{record['height']}; fix the record or the file"
            )
        chw = array.transpose(2, 0, 1).astype(np.float32, order="C")  # numpy: avoids torch's per-op thread overhead
        chw /= 255.0
        return torch.from_numpy(chw)

    def _build_target(self, index: int, record: dict) -> Target:
        anns = self._annotations[index]
        height, width = record["height"], record["width"]
        labels = np.fromiter((self._label_of[c] for c in anns.category_ids.tolist()), np.int64, len(anns.category_ids))
        target: Target = {
            "boxes": torch.from_numpy(anns.boxes.copy()),
            "labels": torch.from_numpy(labels),
            "image_id": int(record["id"]),
            "orig_size": (int(height), int(width)),
        }
        if self.crowd_as_ignore:
            target["iscrowd"] = torch.from_numpy(anns.iscrowd.copy())
        if self.with_masks:
            target["masks"] = self._decode_masks(anns, record)
        return target

    def _decode_masks(self, anns: _ImageAnnotations, record: dict) -> torch.Tensor:
        height, width = record["height"], record["width"]
        if not anns.segmentations:
            return torch.zeros((0, height, width), dtype=torch.uint8)
        masks = np.empty((len(anns.segmentations), height, width), dtype=np.uint8)
        for i, (ann_id, segmentation) in enumerate(zip(anns.annotation_ids, anns.segmentations)):
            try:
                masks[i] = decode_segmentation(segmentation, height, width)
            except ValueError as err:
                raise DatasetError(
                    f"{self.annotation_file}: annotation id {ann_id} (image id {record['id']}): segmentation: "
                    f"{err}; fix or drop the annotation (workflow_scripts/check_dataset.py lists every bad record)"
                ) from err
        return torch.from_numpy(masks)


def collate_detection(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Collate detection samples into (list of images, list of targets); images keep their own sizes."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


class ConcatDetectionDataset(torch.utils.data.ConcatDataset):
    """Several LVISDetectionDatasets over the same categories as one (e.g. train + pseudo-labelled images).

    Keeps the interface the samplers and the retraining need: ``image_ids`` (in index order), ``category_ids``,
    ``num_classes``, ``label_of``/``category_of`` and ``image_category_ids``. Image ids must be unique across parts.
    """

    def __init__(self, datasets: Sequence[LVISDetectionDataset]) -> None:
        super().__init__(list(datasets))
        first = self.datasets[0]
        for part in self.datasets[1:]:
            if list(part.category_ids) != list(first.category_ids):
                raise DatasetError(
                    f"{part.annotation_file}: its category ids differ from those of {first.annotation_file}; "
                    "build every part with the same category_ids"
                )
        self.category_ids: list[int] = list(first.category_ids)
        self.category_names: list[str] = list(first.category_names)
        self.image_ids: list[int] = [image_id for part in self.datasets for image_id in part.image_ids]
        seen: dict[int, str] = {}
        for part in self.datasets:
            for image_id in part.image_ids:
                if image_id in seen:
                    raise DatasetError(
                        f"image id {image_id} is in both {seen[image_id]} and {part.annotation_file}; "
                        "image ids must be unique across the combined annotation files"
                    )
                seen[image_id] = part.annotation_file

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label_of(self, category_id: int) -> int:
        return self.datasets[0].label_of(category_id)

    def category_of(self, label: int) -> int:
        return self.datasets[0].category_of(label)

    def image_category_ids(self, index: int) -> set[int]:
        """Category ids present in the image at combined ``index``."""
        part, local = self._locate(index)
        return self.datasets[part].image_category_ids(local)

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        part = int(np.searchsorted(self.cumulative_sizes, index, side="right"))
        return part, index - (self.cumulative_sizes[part - 1] if part else 0)
