"""A hand-made LVIS ground truth (3 images of 64x64, categories of each frequency, neg and not-exhaustive lists) and
detections built from masks, shared by the evaluation tests (the ``hand_gt`` fixture is in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

GROUP_KEYS = ("AP", "AP50", "AP75", "APr", "APc", "APf")


def rle_of(mask: np.ndarray) -> dict:
    """Compressed RLE with str counts for a binary mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def box_mask(height: int, width: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y:y + h, x:x + w] = 1
    return mask


def annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray) -> dict:
    rle = rle_of(mask)
    return {"id": ann_id, "image_id": image_id, "category_id": category_id,
            "bbox": mask_utils.toBbox(rle).tolist(), "area": float(mask_utils.area(rle)), "segmentation": rle}


def detection(image_id: int, category_id: int, mask: np.ndarray, score: float) -> dict:
    rle = rle_of(mask)
    return {"image_id": image_id, "category_id": category_id, "bbox": mask_utils.toBbox(rle).tolist(),
            "score": score, "segmentation": rle}


# Hand-made LVIS gt: 3 images of 64x64, categories 1 (r), 2 (c), 3 and 4 (f); all objects 20x20 (small).
SIZE = 64
OBJECTS = {  # image id -> [(category, x, y)]
    1: [(1, 2, 2), (3, 30, 30)],
    2: [(2, 2, 2), (3, 30, 30)],
    3: [(4, 2, 2), (1, 30, 30)],
}
NEGATIVES = {1: [2], 2: [4], 3: [3]}
NOT_EXHAUSTIVE = {1: [], 2: [3], 3: []}
FREE_SPOT = (40, 2)  # no object there on any image


def write_hand_gt(tmp_path: Path) -> Path:
    images = [{"id": i, "file_name": f"{i}.png", "height": SIZE, "width": SIZE, "neg_category_ids": NEGATIVES[i],
               "not_exhaustive_category_ids": NOT_EXHAUSTIVE[i]} for i in OBJECTS]
    categories = [{"id": c, "name": f"cat{c}", "frequency": f} for c, f in ((1, "r"), (2, "c"), (3, "f"), (4, "f"))]
    annotations = []
    for image_id, objects in OBJECTS.items():
        for category, x, y in objects:
            annotations.append(annotation(len(annotations) + 1, image_id, category,
                                          box_mask(SIZE, SIZE, x, y, 20, 20)))
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def gt_as_detections(gt_path: Path, score: float = 0.5) -> list[dict]:
    data = json.loads(gt_path.read_text())
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": score,
             "segmentation": a["segmentation"]} for a in data["annotations"]]


def false_positive(image_id: int, category_id: int, score: float = 0.9) -> dict:
    return detection(image_id, category_id, box_mask(SIZE, SIZE, *FREE_SPOT, 20, 20), score)
