"""Boundary IoU's cost per image at LVIS sizes: 640 x 480 images, ~7 ground-truth masks, 300 detections.

Each image holds 7 octagon-shaped objects of COCO-like sizes (16-320 px) in 3 categories, and 300 detection masks:
10 jittered copies of each object (70 near hits, the same category) and 230 octagons anywhere, half of them of the
image's categories. Measured per image, one thread, median over the images of ``--rounds`` rounds:
- decode + boundary of one mask (``rle_boundary``: pycocotools decode, the mask's box, the erosion window sums);
- ``boundary_iou`` of all 300 x 7 pairs (the bare IoU, every mask decoded);
- ``boundary_ap_iou`` of the same-category pairs, every pair (min_iou 0) and pruned (min_iou 0.5, what the evaluator
  passes: only pairs that can match at LVIS's lowest threshold get a boundary);
- the federated evaluator (``evaluation/federated_eval.py``) per image with mask IoU and with boundary AP's IoU,
  against hotcoco's segm evaluation of the same images.

    python benchmarks/boundary_iou_speed.py [--images 20] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import hotcoco
import numpy as np
import torch
from pycocotools import mask as mask_utils

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # benchmarks/bench_common.py, when run as a script from anywhere

from benchmarks.bench_common import machine, markdown_table, write_results  # noqa: E402
from longtail_seg.evaluation.boundary_iou import (  # noqa: E402
    boundary_ap_iou,
    boundary_iou,
    dilation_pixels,
    rle_boundary,
)
from longtail_seg.evaluation.federated_eval import evaluate_federated  # noqa: E402
from longtail_seg.evaluation.protocols import boundary_iou_of, mask_iou  # noqa: E402

HEIGHT, WIDTH = 480, 640
OBJECTS, CATEGORIES_PER_IMAGE, DETECTIONS = 7, 3, 300
COPIES = 10  # jittered detections per object


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20, help="images measured (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the images; medians reported")
    parser.add_argument("--quick", action="store_true", help="3 images, 1 round: a few seconds")
    parser.add_argument("--out-dir", default=None, help="where boundary_iou_speed.json/.md go (default results/)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.rounds = 3, 1
    return args


def octagon_rle(x: float, y: float, w: float, h: float) -> dict:
    """A compressed RLE (str counts) of the octagon inscribed in a box of the image (corners cut at 30%)."""
    cx, cy = 0.3 * w, 0.3 * h
    polygon = [x + cx, y, x + w - cx, y, x + w, y + cy, x + w, y + h - cy, x + w - cx, y + h, x + cx, y + h,
               x, y + h - cy, x, y + cy]
    rle = mask_utils.merge(mask_utils.frPyObjects([polygon], HEIGHT, WIDTH))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def random_box(rng: np.random.Generator, side_range: tuple[float, float]) -> tuple[float, float, float, float]:
    side = float(np.exp(rng.uniform(np.log(side_range[0]), np.log(side_range[1]))))
    w, h = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
    w, h = min(w, WIDTH - 1), min(h, HEIGHT - 1)
    return float(rng.uniform(0, WIDTH - w)), float(rng.uniform(0, HEIGHT - h)), w, h


def make_split(num_images: int, seed: int) -> tuple[dict, list[dict]]:
    """An LVIS-format ground truth of ``num_images`` images and its 300-per-image detections."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    num_categories = 50
    for image_id in range(1, num_images + 1):
        present = [int(c) for c in rng.choice(num_categories, CATEGORIES_PER_IMAGE, replace=False) + 1]
        negatives = [c for c in range(1, num_categories + 1) if c not in present][:10]
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": HEIGHT, "width": WIDTH,
                       "neg_category_ids": negatives, "not_exhaustive_category_ids": []})
        for index in range(OBJECTS):
            category = present[index % CATEGORIES_PER_IMAGE]
            x, y, w, h = random_box(rng, (16, 320))
            rle = octagon_rle(x, y, w, h)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": mask_utils.toBbox(rle).tolist(), "area": float(mask_utils.area(rle)),
                                "segmentation": rle})
            for _ in range(COPIES):
                jx, jy = rng.normal(0, 0.06 * w), rng.normal(0, 0.06 * h)
                sw, sh = w * rng.uniform(0.85, 1.15), h * rng.uniform(0.85, 1.15)
                dx, dy = float(np.clip(x + jx, 0, WIDTH - sw)), float(np.clip(y + jy, 0, HEIGHT - sh))
                detections.append(_detection(image_id, category, octagon_rle(dx, dy, sw, sh), rng.uniform(0.3, 1)))
        for _ in range(DETECTIONS - OBJECTS * COPIES):
            category = present[int(rng.integers(CATEGORIES_PER_IMAGE))] if rng.random() < 0.5 else negatives[
                int(rng.integers(len(negatives)))]
            detections.append(_detection(image_id, category, octagon_rle(*random_box(rng, (16, 320))),
                                         rng.uniform(0, 0.7)))
    categories = [{"id": c, "name": f"c{c}", "frequency": "rcf"[c % 3]} for c in range(1, num_categories + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def _detection(image_id: int, category: int, rle: dict, score: float) -> dict:
    return {"image_id": image_id, "category_id": category, "bbox": mask_utils.toBbox(rle).tolist(),
            "score": float(score), "segmentation": rle}


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def per_image_times(data: dict, detections: list[dict]) -> dict[str, list[float]]:
    """Seconds per image of each measured step."""
    times: dict[str, list[float]] = {k: [] for k in ("decode_boundary_per_mask", "boundary_iou_all_pairs",
                                                     "boundary_ap_iou_same_category", "boundary_ap_iou_pruned")}
    for image in data["images"]:
        gts = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        dts = sorted((d for d in detections if d["image_id"] == image["id"]), key=lambda d: -d["score"])
        rles = [d["segmentation"] for d in dts] + [g["segmentation"] for g in gts]
        times["decode_boundary_per_mask"].append(timed(lambda rles=rles: [rle_boundary(r) for r in rles]) / len(rles))
        times["boundary_iou_all_pairs"].append(timed(boundary_iou, [d["segmentation"] for d in dts],
                                                     [g["segmentation"] for g in gts]))
        for key, min_iou in (("boundary_ap_iou_same_category", 0.0), ("boundary_ap_iou_pruned", 0.5)):
            def same_category(min_iou: float = min_iou, dts: list = dts, gts: list = gts) -> None:
                for category in {g["category_id"] for g in gts}:
                    boundary_ap_iou([d["segmentation"] for d in dts if d["category_id"] == category],
                                    [g["segmentation"] for g in gts if g["category_id"] == category], min_iou)
            times[key].append(timed(same_category))
    return times


def evaluator_times(data: dict, detections: list[dict]) -> dict[str, float]:
    """Seconds per image of the whole segm evaluation: hotcoco, ours with mask IoU, ours with boundary AP's IoU."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = hotcoco.LVIS(data)
    loaded = hotcoco.LVISResults(gt, detections, max_dets=300)

    def run_hotcoco() -> None:
        evaluator = hotcoco.LVISEval(gt, loaded, "segm")
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()

    n = len(data["images"])
    return {
        "hotcoco_segm": timed(run_hotcoco) / n,
        "federated_mask_iou": timed(evaluate_federated, gt, loaded,
                                    lambda image, dts, gts: mask_iou(image, dts, gts, gt)) / n,
        "federated_boundary": timed(evaluate_federated, gt, loaded, boundary_iou_of(gt)) / n,
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    data, detections = make_split(args.images, args.seed)
    pooled: dict[str, list[float]] = {}
    evaluators: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for key, values in per_image_times(data, detections).items():
            pooled.setdefault(key, []).extend(values)
        for key, value in evaluator_times(data, detections).items():
            evaluators.setdefault(key, []).append(value)
    rows = [{"step": key, "ms_per_image": 1000 * statistics.median(values)} for key, values in pooled.items()]
    rows[0] = {"step": "decode_boundary_per_mask (ms per mask)", "ms_per_image": rows[0]["ms_per_image"]}
    rows += [{"step": f"evaluation: {key}", "ms_per_image": 1000 * statistics.median(values)}
             for key, values in evaluators.items()]
    result = {
        "setting": {"height": HEIGHT, "width": WIDTH, "objects": OBJECTS, "detections": DETECTIONS,
                    "dilation_px": dilation_pixels(HEIGHT, WIDTH), "images": args.images, "rounds": args.rounds},
        "rows": rows, "machine": machine(),
    }
    markdown = (f"Boundary IoU per {WIDTH} x {HEIGHT} image ({OBJECTS} ground-truth masks in {CATEGORIES_PER_IMAGE} "
                f"categories, {DETECTIONS} detections, band {dilation_pixels(HEIGHT, WIDTH)} px), one thread, "
                f"medians over {args.images} images x {args.rounds} rounds.\n\n" + markdown_table(rows))
    path = write_results("boundary_iou_speed", result, markdown, args.out_dir)
    print(markdown)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main(parse_args())
