"""Read and validate LVIS / COCO instance-segmentation JSON files.

Every check names the file, the record and the fix, so a researcher pointing the workflow at a broken
annotation file learns what to repair instead of meeting a KeyError deep inside training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longtail_seg.config_keys import is_number

REQUIRED_TOP_LEVEL_KEYS = ("images", "annotations", "categories")
FREQUENCY_GROUPS = ("r", "c", "f")


class DatasetError(ValueError):
    """A dataset file is missing, malformed or inconsistent; the message names the file and record."""


@dataclass(frozen=True)
class AnnotationArrays:
    """Column view of an annotation file, so statistics run as numpy operations, not Python loops."""

    image_ids: np.ndarray  # (num_images,) int64, every image in the file
    category_ids: np.ndarray  # (num_categories,) int64, sorted
    category_names: list[str]
    ann_image_ids: np.ndarray  # (num_annotations,) int64
    ann_category_ids: np.ndarray  # (num_annotations,) int64
    ann_bboxes: np.ndarray  # (num_annotations, 4) float64, xywh


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    """Load a JSON file, failing with the file name and position on a missing file or bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found; check the dataset paths in your config")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}; "
            "the file is truncated or not JSON (re-download or regenerate it)"
        ) from err


def load_lvis(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, require_annotations: bool = True
) -> dict[str, Any]:
    """Load an LVIS/COCO JSON file and validate it (see :func:`validate_dataset`)."""
    data = load_json(path)
    validate_dataset(data, path, image_root=image_root, require_annotations=require_annotations)
    return data


def validate_dataset(
    data: dict[str, Any],
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    require_annotations: bool = True,
) -> None:
    """Check structure and cross references of an LVIS/COCO dict; raise :class:`DatasetError` on the first problem.

    Checks (:func:`dataset_problems`): required keys, unique ids, every annotation's image and category exist,
    boxes have positive width and height; and (when ``image_root`` is given) every image file exists.
    ``longtail_seg/data/check.py`` runs the same checks and more, listing every problem instead of the first.
    """
    for problem in dataset_problems(data, require_annotations):
        raise DatasetError(f"{path}: {problem}")
    if image_root is not None:
        for image in data["images"]:
            file = image_path(image, image_root)
            if not file.is_file():
                raise DatasetError(
                    f"{path}: image id {image['id']}: image file {file} not found; check image_root in your config"
                )


def dataset_problems(data: Any, require_annotations: bool = True) -> Iterator[str]:
    """Yield each structural problem of an LVIS/COCO dict (record, what is wrong, the fix), lazily, so a caller
    can stop at the first or list them all. Messages omit the file name: the caller prefixes it."""
    if not isinstance(data, dict):
        yield f"top level must be a JSON object with keys {REQUIRED_TOP_LEVEL_KEYS}"
        return
    keys = REQUIRED_TOP_LEVEL_KEYS if require_annotations else ("images", "categories")
    missing = [key for key in keys if key not in data]
    for key in missing:
        yield f"missing top-level key '{key}' (an LVIS/COCO file has {keys})"
    wrong_type = [key for key in REQUIRED_TOP_LEVEL_KEYS if key in data and not isinstance(data[key], list)]
    for key in wrong_type:
        yield f"'{key}' must be a list of records, got {type(data[key]).__name__}"
    if missing or wrong_type:
        return
    image_ids = yield from _unique_id_problems(data["images"], "images")
    category_ids = yield from _unique_id_problems(data["categories"], "categories")
    annotations = data.get("annotations", [])
    yield from _unique_id_problems(annotations, "annotations")
    for ann in annotations:
        if isinstance(ann, dict):
            yield from _annotation_problems(ann, image_ids, category_ids)


def _unique_id_problems(records: list, kind: str) -> Generator[str, None, set]:
    """Yield records that are not objects, lack an 'id' or repeat one; return the set of ids."""
    ids: set = set()
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            yield f"{kind}[{index}] is a {type(record).__name__}, not a JSON object; fix or remove the record"
        elif "id" not in record:
            yield f"{kind}[{index}] has no 'id'; give every record a unique id"
        elif record["id"] in ids:
            yield f"{kind} id {record['id']} appears twice; ids must be unique"
        else:
            ids.add(record["id"])
    return ids


def _annotation_problems(ann: dict, image_ids: set, category_ids: set) -> Iterator[str]:
    """Yield the problems of one annotation record: missing keys, unknown image or category, a bad box."""
    ann_id = ann.get("id", "?")
    missing = [key for key in ("id", "image_id", "category_id", "bbox") if key not in ann]
    for key in missing:
        yield f"annotation id {ann_id}: missing '{key}'"
    if missing:
        return
    if ann["image_id"] not in image_ids:
        yield (f"annotation id {ann_id}: image_id {ann['image_id']} is not in 'images'; "
               "remove the annotation or add the image record")
    if ann["category_id"] not in category_ids:
        yield (f"annotation id {ann_id}: category_id {ann['category_id']} is not in 'categories'; "
               "remove the annotation or add the category record")
    bbox = ann["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(is_number, bbox)):
        yield f"annotation id {ann_id}: bbox must be [x, y, width, height] (4 numbers), got {bbox}"
    elif not (bbox[2] > 0 and bbox[3] > 0):
        yield (f"annotation id {ann_id}: bbox {bbox} has non-positive width or height; "
               "drop the annotation or fix its box")


def image_path(image: dict[str, Any], image_root: str | os.PathLike) -> Path:
    """Path of an image record's file: ``file_name`` (COCO, synthetic) or the tail of ``coco_url`` (LVIS v1).

    LVIS v1 records carry only ``coco_url`` (``.../train2017/000000391895.jpg``); with ``image_root`` the COCO
    folder holding ``train2017/`` and ``val2017/``, this resolves to ``image_root/train2017/000000391895.jpg``.
    COCO's own records (e.g. ``image_info_unlabeled2017.json``) carry both, with a bare ``file_name``: of the two
    paths the one that exists is taken, ``file_name``'s first, so the same ``image_root`` serves LVIS and COCO
    files; when neither exists, ``file_name``'s path is returned for the caller's not-found message.
    """
    root = Path(image_root)
    candidates = []
    if image.get("file_name"):
        candidates.append(root / image["file_name"])
    if image.get("coco_url"):
        parts = image["coco_url"].rstrip("/").split("/")
        candidates.append(root / parts[-2] / parts[-1])
    if not candidates:
        raise DatasetError(f"image id {image.get('id')}: record has neither 'file_name' nor 'coco_url'")
    if len(candidates) > 1:
        return next((path for path in candidates if path.is_file()), candidates[0])
    return candidates[0]


def annotation_arrays(data: dict[str, Any]) -> AnnotationArrays:
    """Extract the columns statistics need from a loaded dataset dict."""
    anns = data.get("annotations", [])
    categories = sorted(data["categories"], key=lambda c: c["id"])
    bboxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    return AnnotationArrays(
        image_ids=np.array([im["id"] for im in data["images"]], dtype=np.int64),
        category_ids=np.array([c["id"] for c in categories], dtype=np.int64),
        category_names=[c.get("name", str(c["id"])) for c in categories],
        ann_image_ids=np.array([a["image_id"] for a in anns], dtype=np.int64),
        ann_category_ids=np.array([a["category_id"] for a in anns], dtype=np.int64),
        ann_bboxes=bboxes,
    )
