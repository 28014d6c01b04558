"""The prediction viewer: chosen val images with their ground truth next to two (or more) models' predictions, as
one PNG. Ground truth and predictions are read by hotcoco (a results file is never parsed in Python)."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from typing import Any

import hotcoco

from longtail_seg.data.lvis_io import image_path
from longtail_seg.evaluation.lvis_eval import LVIS_MAX_DETS_PER_IMAGE, load_ground_truth
from longtail_seg.visualize import load_rgb, save_comparison


def pick_images(gt: Any, count: int, image_ids: Sequence[int] | None = None) -> list[int]:
    """``image_ids`` as given (each must be in the ground truth), else the first ``count`` image ids (ascending)
    holding a rare-category annotation, then the first others."""
    ids = sorted(gt.get_img_ids())
    if image_ids:
        unknown = sorted(set(image_ids) - set(ids))
        if unknown:
            raise ValueError(f"image ids {unknown[:5]} are not in the ground truth; pick val image ids")
        return list(image_ids)
    rare = {c["id"] for c in gt.load_cats(gt.get_cat_ids()) if c.get("frequency") == "r"}
    with_rare = {a["image_id"] for a in gt.load_anns(gt.get_ann_ids()) if a["category_id"] in rare}
    ordered = [i for i in ids if i in with_rare] + [i for i in ids if i not in with_rare]
    return ordered[:count]


def save_viewer(
    annotations: str | os.PathLike,
    image_root: str | os.PathLike,
    predictions: Sequence[tuple[str, str | os.PathLike]],
    path: str | os.PathLike,
    count: int = 4,
    image_ids: Sequence[int] | None = None,
    score_threshold: float = 0.5,
) -> list[int]:
    """Write the viewer PNG: one row per picked val image, ground truth then each ``(label, results JSON)``'s
    detections with score >= ``score_threshold``. Returns the image ids shown."""
    gt = load_ground_truth(annotations)
    picked = pick_images(gt, count, image_ids)
    loaded = []
    for label, results in predictions:
        with contextlib.redirect_stdout(io.StringIO()):
            loaded.append((label, hotcoco.LVISResults(gt, str(results), max_dets=LVIS_MAX_DETS_PER_IMAGE)))
    names = {c["id"]: c["name"] for c in gt.load_cats(gt.get_cat_ids())}
    rows = []
    for image in gt.load_imgs(picked):
        panels = [("ground truth", gt.load_anns(gt.get_ann_ids(img_ids=[image["id"]])))]
        panels += [(label, res.load_anns(res.get_ann_ids(img_ids=[image["id"]]))) for label, res in loaded]
        rows.append((f"image {image['id']}", load_rgb(image_path(image, image_root)), panels))
    save_comparison(rows, names, path, score_threshold)
    return picked
