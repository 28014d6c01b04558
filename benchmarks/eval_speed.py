"""Evaluation speed at LVIS val shape: the evaluate rule's script against bare hotcoco and the `lvis` package.

Makes an LVIS-shaped ground truth (the 1203 LVIS v1 categories shipped with the package, COCO-like image sizes,
~6.5 polygon instances per image drawn by the long tail's instance counts, sparse neg / not-exhaustive ids) and a
results file of 300 detections per image with RLE masks: jittered copies of the ground truth (true positives at
varied IoU, some with a confusable category) and false positives of random categories (boxes and masks drawn from
a pool of 4000 per image size, since rasterising millions of polygons is the slow part), scored so that hits tend
to score higher. Files are generated with vectorised numpy / pycocotools and cached under a tmp folder.

Each evaluator runs in its own subprocess (wall time, and peak RSS from ``getrusage(RUSAGE_CHILDREN)``), bbox and
segm from one results file:
- ours: ``workflow_scripts/evaluate.py`` as the evaluate rule runs it (``--checked`` report of the gate, per-category
  AP written too; the TIDE breakdown is rule tide_errors, table rows only);
- hotcoco: ``LVIS(gt)``, ``LVISResults(gt, path)``, ``LVISEval`` bbox and segm (no checks);
- lvis: the reference ``lvis`` package (0.5.3) on the smaller size only (it takes minutes and GBs at val size).

    python benchmarks/eval_speed.py [--sizes 2000 19809] [--lvis-max-images 2000] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from longtail_seg.data.lvis_categories import lvis_v1_categories

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # benchmarks/bench_common.py, when run as a script from anywhere

DETECTIONS_PER_IMAGE = 300
MEAN_INSTANCES_PER_IMAGE = 6.5
# (height, width) of COCO's photos and how often they occur (most are 640 px on the long side).
COCO_SIZES = np.array([(480, 640), (427, 640), (640, 480), (424, 640), (640, 427), (375, 500), (612, 612),
                       (500, 375), (480, 640), (360, 640)])
COCO_SIZE_WEIGHTS = np.array([0.36, 0.18, 0.1, 0.08, 0.06, 0.05, 0.04, 0.04, 0.05, 0.04])
FALSE_POSITIVE_POOL = 4000  # false-positive boxes (and masks) per image size: rasterising millions is the slow part
CACHE_DIR = Path(tempfile.gettempdir()) / "longtail_seg_eval_speed"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 19809],
                        help="image counts to measure (default: 2000 and LVIS val's 19809)")
    parser.add_argument("--lvis-max-images", type=int, default=2000,
                        help="run the lvis package only on sizes up to this (default 2000)")
    parser.add_argument("--quick", action="store_true", help="200 and 600 images, lvis on 200: under a minute")
    parser.add_argument("--cache-dir", default=str(CACHE_DIR), help=f"generated files (default {CACHE_DIR})")
    parser.add_argument("--out-dir", default=None, help="where eval_speed.json/.md go (default benchmarks/results)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of ours and hotcoco; the median is reported (lvis runs once)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.lvis_max_images, args.rounds = [200, 600], 200, 1
    return args


# ---------------------------------------------------------------- synthetic LVIS-shaped files

def octagon_polygons(boxes: np.ndarray) -> np.ndarray:
    """(N, 16) polygons: each box with its corners cut at 30% of its sides, so masks are not boxes."""
    x, y, w, h = boxes.T
    cx, cy = 0.3 * w, 0.3 * h
    points = [(x + cx, y), (x + w - cx, y), (x + w, y + cy), (x + w, y + h - cy),
              (x + w - cx, y + h), (x + cx, y + h), (x, y + h - cy), (x, y + cy)]
    return np.stack([coordinate for point in points for coordinate in point], axis=1)


def random_boxes(rng: np.random.Generator, sizes: np.ndarray) -> np.ndarray:
    """COCO-like object boxes inside images of (height, width) ``sizes``: about 40% small, 35% medium, 25% large."""
    heights, widths = sizes[:, 0].astype(float), sizes[:, 1].astype(float)
    side = np.exp(rng.normal(np.log(50), 1.0, len(sizes)))  # sqrt(area): median 50 px
    aspect = np.exp(rng.normal(0, 0.5, len(sizes)))
    w = np.clip(side * np.sqrt(aspect), 2, widths)
    h = np.clip(side / np.sqrt(aspect), 2, heights)
    x, y = rng.uniform(0, 1, len(sizes)) * (widths - w), rng.uniform(0, 1, len(sizes)) * (heights - h)
    return np.stack([x, y, w, h], axis=1)


def jitter(rng: np.random.Generator, boxes: np.ndarray, sizes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Boxes moved and resized by ``scale`` times their size (per box), kept at least 1 px and inside the image."""
    x, y, w, h = boxes.T
    noise = rng.normal(0, 1, boxes.shape) * scale[:, None]
    w2 = np.clip(w * np.exp(noise[:, 2]), 1, sizes[:, 1])
    h2 = np.clip(h * np.exp(noise[:, 3]), 1, sizes[:, 0])
    x2 = np.clip(x + noise[:, 0] * w, 0, sizes[:, 1] - w2)
    y2 = np.clip(y + noise[:, 1] * h, 0, sizes[:, 0] - h2)
    return np.stack([x2, y2, w2, h2], axis=1)


def make_ground_truth(rng: np.random.Generator, num_images: int) -> dict[str, Any]:
    """LVIS-shaped ground truth as columns: images, categories, and per-instance arrays."""
    table = lvis_v1_categories()
    category_ids = table["id"].to_numpy()
    instance_p = table["instance_count"].to_numpy() / table["instance_count"].sum()
    image_p = table["image_count"].to_numpy() / table["image_count"].sum()
    image_ids = np.sort(rng.choice(600_000, num_images, replace=False) + 1)  # sparse, like COCO's
    image_sizes = COCO_SIZES[rng.choice(len(COCO_SIZES), num_images, p=COCO_SIZE_WEIGHTS / COCO_SIZE_WEIGHTS.sum())]
    counts = np.maximum(rng.poisson(MEAN_INSTANCES_PER_IMAGE, num_images), 1)
    owner = np.repeat(np.arange(num_images), counts)  # image index of each instance
    # A few categories per image, each instance one of its image's: objects of a kind come together.
    per_image = rng.choice(category_ids, (num_images, 3), p=instance_p)
    instance_categories = per_image[owner, rng.integers(0, 3, len(owner))]
    boxes = random_boxes(rng, image_sizes[owner])
    images = []
    for index, image_id in enumerate(image_ids):
        present = set(per_image[index].tolist())
        negatives = sorted(set(rng.choice(category_ids, 6, p=image_p).tolist()) - present)
        not_exhaustive = sorted(c for c in present if rng.random() < 0.15)
        height, width = image_sizes[index]
        images.append({"id": int(image_id), "file_name": f"{image_id:012d}.jpg", "height": int(height),
                       "width": int(width), "neg_category_ids": negatives,
                       "not_exhaustive_category_ids": not_exhaustive})
    categories = [{"id": int(row.id), "name": row.name, "frequency": row.frequency,
                   "image_count": int(row.image_count), "instance_count": int(row.instance_count)}
                  for row in table.itertuples()]
    return {"images": images, "categories": categories, "image_ids": image_ids, "image_sizes": image_sizes,
            "owner": owner, "category_ids": instance_categories, "boxes": boxes, "all_category_ids": category_ids,
            "instance_p": instance_p}


def write_ground_truth(gt: dict[str, Any], path: Path) -> None:
    """LVIS JSON with octagon polygons (LVIS's ground truth is polygons)."""
    polygons = np.round(octagon_polygons(gt["boxes"]), 2)
    boxes = np.round(gt["boxes"], 2)
    areas = 0.82 * boxes[:, 2] * boxes[:, 3]  # octagon with 30% corners cut
    image_ids = gt["image_ids"][gt["owner"]]
    annotations = [{"id": index + 1, "image_id": int(image_ids[index]), "category_id": int(gt["category_ids"][index]),
                    "bbox": boxes[index].tolist(), "area": float(areas[index]),
                    "segmentation": [polygons[index].tolist()]} for index in range(len(boxes))]
    path.write_text(json.dumps({"images": gt["images"], "annotations": annotations,
                                "categories": gt["categories"]}, separators=(",", ":")))


def make_detections(rng: np.random.Generator, gt: dict[str, Any]) -> dict[str, np.ndarray]:
    """300 detections per image as columns: per ground-truth instance 4 jittered hits (a quarter of them with a
    random category), the rest false positives of random categories drawn from a pool of boxes per image size
    (``pool`` row, -1 for a hit); hits score higher on average."""
    num_images = len(gt["image_ids"])
    owner, boxes, sizes = gt["owner"], gt["boxes"], gt["image_sizes"]
    hits_per_instance = 4
    hit_owner = np.repeat(owner, hits_per_instance)
    hit_boxes = jitter(rng, np.repeat(boxes, hits_per_instance, axis=0), sizes[hit_owner],
                       rng.uniform(0.02, 0.3, len(hit_owner)))
    hit_categories = np.repeat(gt["category_ids"], hits_per_instance)
    confused = rng.random(len(hit_owner)) < 0.25
    hit_categories[confused] = rng.choice(gt["all_category_ids"], confused.sum(), p=gt["instance_p"])
    hit_scores = rng.beta(4, 2, len(hit_owner))
    fp_counts = np.maximum(DETECTIONS_PER_IMAGE - np.bincount(hit_owner, minlength=num_images), 0)
    fp_owner = np.repeat(np.arange(num_images), fp_counts)
    pool_sizes, size_of_image = np.unique(sizes, axis=0, return_inverse=True)
    pool_boxes = random_boxes(rng, np.repeat(pool_sizes, FALSE_POSITIVE_POOL, axis=0))
    fp_pick = rng.integers(0, FALSE_POSITIVE_POOL, len(fp_owner))
    fp_pool = size_of_image.ravel()[fp_owner] * FALSE_POSITIVE_POOL + fp_pick
    fp_categories = rng.choice(gt["all_category_ids"], len(fp_owner), p=gt["instance_p"])
    fp_scores = rng.beta(1, 8, len(fp_owner))
    owners = np.concatenate([hit_owner, fp_owner])
    order = np.argsort(owners, kind="stable")  # grouped by image, as inference writes them
    return {"owner": owners[order], "boxes": np.concatenate([hit_boxes, pool_boxes[fp_pool]])[order],
            "category_ids": np.concatenate([hit_categories, fp_categories])[order],
            "scores": np.concatenate([hit_scores, fp_scores])[order],
            "pool": np.concatenate([np.full(len(hit_owner), -1), fp_pool])[order],
            "pool_boxes": pool_boxes, "pool_sizes": np.repeat(pool_sizes, FALSE_POSITIVE_POOL, axis=0)}


def octagon_rles(boxes: np.ndarray, sizes: np.ndarray) -> list[str]:
    """JSON-escaped compressed RLE counts of each box's octagon in an image of (height, width) ``sizes``,
    rasterised by pycocotools one image size at a time."""
    polygons = octagon_polygons(boxes)
    counts: list[str] = [""] * len(polygons)
    for height, width in np.unique(sizes, axis=0):
        rows = np.flatnonzero((sizes[:, 0] == height) & (sizes[:, 1] == width))
        rles = mask_utils.frPyObjects(polygons[rows].tolist(), int(height), int(width))
        for row, rle in zip(rows.tolist(), rles):
            counts[row] = rle["counts"].decode("ascii").replace("\\", "\\\\")
    return counts


def encode_masks(detections: dict[str, np.ndarray], sizes: np.ndarray) -> list[str]:
    """RLE counts of every detection: hits rasterised one by one, false positives shared from the pool."""
    pool_counts = octagon_rles(detections["pool_boxes"], detections["pool_sizes"])
    hits = np.flatnonzero(detections["pool"] < 0)
    hit_counts = octagon_rles(detections["boxes"][hits], sizes[detections["owner"][hits]])
    counts = [pool_counts[row] if row >= 0 else "" for row in detections["pool"].tolist()]
    for row, value in zip(hits.tolist(), hit_counts):
        counts[row] = value
    return counts


def write_detections(detections: dict[str, np.ndarray], gt: dict[str, Any], path: Path) -> None:
    """The results JSON, formatted record by record (json.dump of millions of dicts is the slow part)."""
    counts = encode_masks(detections, gt["image_sizes"])
    image_ids = gt["image_ids"][detections["owner"]].tolist()
    sizes = gt["image_sizes"][detections["owner"]].tolist()
    boxes = np.round(detections["boxes"], 2).tolist()
    categories = detections["category_ids"].tolist()
    scores = np.round(detections["scores"], 5).tolist()
    with open(path, "w") as out:
        out.write("[")
        for index in range(len(image_ids)):
            if index:
                out.write(",")
            x, y, w, h = boxes[index]
            height, width = sizes[index]
            out.write(f'{{"image_id":{image_ids[index]},"category_id":{categories[index]},'
                      f'"bbox":[{x},{y},{w},{h}],"score":{scores[index]},'
                      f'"segmentation":{{"size":[{height},{width}],"counts":"{counts[index]}"}}}}')
        out.write("]")


def dataset_files(num_images: int, cache_dir: Path, seed: int) -> tuple[Path, Path, Path]:
    """(ground truth, results, check report) for ``num_images``, generated once and cached."""
    folder = cache_dir / f"v2_{num_images}_seed{seed}"
    gt_path, results_path, report_path = folder / "gt.json", folder / "results.json", folder / "check.json"
    if report_path.is_file():
        return gt_path, results_path, report_path
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    gt = make_ground_truth(rng, num_images)
    write_ground_truth(gt, gt_path)
    write_detections(make_detections(rng, gt), gt, results_path)
    from longtail_seg.data.check import check_dataset  # the workflow's gate, run once as the rule would
    report = check_dataset(gt_path, role="eval", require_masks=True, progress=False)
    report_path.write_text(json.dumps(report, default=str))
    print(f"generated {num_images} images in {time.perf_counter() - start:.1f}s under {folder}", flush=True)
    return gt_path, results_path, report_path


# ---------------------------------------------------------------- measuring

HOTCOCO_SNIPPET = """
import contextlib, io, sys, hotcoco
gt_path, results_path = sys.argv[1:3]
with contextlib.redirect_stdout(io.StringIO()):
    gt = hotcoco.LVIS(gt_path)
    detections = hotcoco.LVISResults(gt, results_path, max_dets=300)
    for iou_type in ("bbox", "segm"):
        evaluator = hotcoco.LVISEval(gt, detections, iou_type)
        evaluator.run()
        print(iou_type, evaluator.get_results()["AP"], file=sys.stderr)
"""

LVIS_SNIPPET = """
import logging, sys, numpy as np
np.float, np.int = float, int  # lvis 0.5.3 uses aliases NumPy 1.24 removed
import lvis
logging.disable(logging.INFO)
gt_path, results_path = sys.argv[1:3]
gt = lvis.LVIS(gt_path)
detections = lvis.LVISResults(gt, results_path, max_dets=300)
for iou_type in ("bbox", "segm"):
    evaluator = lvis.LVISEval(gt, detections, iou_type)
    evaluator.run()
    print(iou_type, evaluator.get_results()["AP"], file=sys.stderr)
"""


def evaluator_command(name: str, gt_path: Path, results_path: Path, report_path: Path, out: Path) -> list[str]:
    """The subprocess command line that evaluates bbox and segm with evaluator ``name``."""
    if name == "ours":
        return [sys.executable, str(REPO_ROOT / "workflow_scripts" / "evaluate.py"), "--annotations", str(gt_path),
                "--predictions", str(results_path), "--checked", str(report_path), "--out", str(out),
                "--out-per-category", str(out.with_name(out.stem + "_per_category.csv"))]
    snippet = {"hotcoco": HOTCOCO_SNIPPET, "lvis": LVIS_SNIPPET}[name]
    return [sys.executable, "-c", snippet, str(gt_path), str(results_path)]


def measure(command: list[str]) -> dict[str, float]:
    """Wall seconds and peak resident memory (GiB) of ``command`` run in a fresh subprocess of a fresh helper,
    so RUSAGE_CHILDREN holds that one process's peak only."""
    probe = ("import resource, subprocess, sys, time, json\n"
             "start = time.perf_counter()\n"
             "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
             "wall = time.perf_counter() - start\n"
             "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
             "print(json.dumps({'rc': done.returncode, 'wall_s': wall, 'peak_kib': peak, 'stderr': done.stderr}))\n")
    output = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True)
    result = json.loads(output.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed: {result['stderr'][-2000:]}")
    return {"wall_s": round(result["wall_s"], 2), "peak_gib": round(result["peak_kib"] / 2**20, 3),
            "stderr": result["stderr"]}


def reported_ap(name: str, stderr: str, metrics_path: Path) -> dict[str, float]:
    """Box and mask AP (percent) an evaluator reported: the same numbers from each, or the comparison is void."""
    if name == "ours":
        metrics = json.loads(metrics_path.read_text())
        return {f"AP_{iou_type}": round(metrics[iou_type]["AP"], 3) for iou_type in ("bbox", "segm")}
    lines = [line.split() for line in stderr.splitlines() if line.startswith(("bbox ", "segm "))]
    return {f"AP_{iou_type}": round(100 * float(value), 3) for iou_type, value in lines}


def run_size(num_images: int, args: argparse.Namespace, with_lvis: bool) -> list[dict[str, Any]]:
    """Measure each evaluator on the files of ``num_images`` (ours and hotcoco alternating for ``args.rounds``
    rounds, so background load hits both alike; medians); rows with ratios to bare hotcoco."""
    gt_path, results_path, report_path = dataset_files(num_images, Path(args.cache_dir), args.seed)
    runs: dict[str, list[dict[str, Any]]] = {"hotcoco": [], "ours": [], "lvis": []}
    schedule = ["hotcoco", "ours"] * args.rounds + (["lvis"] if with_lvis else [])
    with tempfile.TemporaryDirectory() as scratch:
        for name in schedule:
            metrics_path = Path(scratch) / "metrics.json"
            numbers = measure(evaluator_command(name, gt_path, results_path, report_path, metrics_path))
            numbers.update(reported_ap(name, numbers.pop("stderr"), metrics_path))
            runs[name].append(numbers)
            print(f"{num_images:6d} images  {name:8s} {numbers['wall_s']:8.2f} s  {numbers['peak_gib']:6.2f} GiB",
                  flush=True)
    rows = []
    for name, measured in runs.items():
        if not measured:
            continue
        row = {"images": num_images, "detections": num_images * DETECTIONS_PER_IMAGE, "evaluator": name,
               "rounds": len(measured), "wall_s": statistics.median(m["wall_s"] for m in measured),
               "peak_gib": statistics.median(m["peak_gib"] for m in measured),
               "wall_s_each": [m["wall_s"] for m in measured]}
        row.update({key: value for key, value in measured[0].items() if key.startswith("AP_")})
        rows.append(row)
    hotcoco = rows[0]
    for row in rows:
        row["time_vs_hotcoco"] = round(row["wall_s"] / hotcoco["wall_s"], 2)
        row["memory_vs_hotcoco"] = round(row["peak_gib"] / hotcoco["peak_gib"], 2)
        row["results_mib"] = round(results_path.stat().st_size / 2**20, 1)
    return rows


def evaluator_versions() -> dict[str, str]:
    """hotcoco's and lvis's installed versions."""
    from importlib.metadata import version

    return {package: version(package) for package in ("hotcoco", "lvis")}


def main(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.bench_common import machine, markdown_table, write_results

    rows = []
    for num_images in args.sizes:
        rows += run_size(num_images, args, with_lvis=num_images <= args.lvis_max_images)
    result = {"benchmark": "eval_speed", "detections_per_image": DETECTIONS_PER_IMAGE,
              "iou_types": ["bbox", "segm"], "rows": rows, "machine": machine(), "versions": evaluator_versions(),
              "note": "each evaluator in its own subprocess, ours and hotcoco alternating (medians of the rounds); "
                      "wall time includes starting Python, loading both files and evaluating bbox and segm; peak is "
                      "the subprocess's max RSS; lvis runs once, on the smaller sizes only"}
    columns = ["images", "evaluator", "wall_s", "peak_gib", "time_vs_hotcoco", "memory_vs_hotcoco", "AP_bbox",
               "AP_segm", "results_mib"]
    versions = ", ".join(f"{package} {number}" for package, number in result["versions"].items())
    markdown = ("Evaluation of one results file (bbox + segm, 300 detections per image) against an LVIS-shaped "
                f"ground truth; ratios against bare hotcoco measured in the same run ({versions}; ours and hotcoco "
                f"alternating, medians of {args.rounds} rounds; lvis once).\n\n" + markdown_table(rows, columns))
    write_results("eval_speed", result, markdown, args.out_dir)
    print(markdown)
    return result


if __name__ == "__main__":
    main(parse_args())
