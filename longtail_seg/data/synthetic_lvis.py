"""LVIS-shaped synthetic dataset, the workflow's LVIS rehearsal (``datasets.NAME.synthetic.mode: lvis``).

LVIS v1's 1203 categories (ids, names and r/c/f labels from the table shipped in ``lvis_v1_categories.csv``), each
drawn as its own shape x colour x mark by the demo generator's code (:mod:`longtail_seg.data.synthetic`), at COCO's
image sizes (mostly 640 x 480, 480 x 640, 640 x 427, ...) and object sizes (COCO's small / medium / large mix),
several objects per image, and LVIS-style records: ``coco_url`` under ``{train,val,unlabeled}2017/``, JPEG files,
sparse ``neg_category_ids`` and ``not_exhaustive_category_ids``. Accuracy is not the point: the shapes and costs of
every step at LVIS's size are.

Scaling the long tail to a split of a few hundred images: a category is in ``max(1, round(n_c * N / 100170))``
training images (n_c its LVIS v1 training image count, N the split's size), so every category exists in training,
the head keeps its order and the tail is flat at one image. The category records keep LVIS's own r/c/f labels (what
the evaluator groups APr / APc / APf by: 337 / 461 / 405); their ``image_count`` / ``instance_count`` are the
synthetic train counts, and the workflow's statistics recompute the groups from those counts as for any dataset.
Val and unlabeled draw categories from the LVIS profile flattened (``n_c ** 0.5``) at LVIS's mean number of
categories per image, with at least one category of each group, so that every table has APr, APc and APf.
"""

from __future__ import annotations

import functools
import io
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from longtail_seg.data.lvis_categories import lvis_v1_categories
from longtail_seg.data.synthetic import (
    COCO_FOLDERS,
    LVIS_MIN_VISIBLE_AREA,
    MARK_DESCRIPTIONS,
    MARKS,
    PALETTE,
    SHAPES,
    SPLIT_CODES,
    SPLITS,
    Category,
    ImageLayout,
    PlacedObject,
    PlacementCanvas,
    annotation_records,
    assign_categories,
    distinct_categories_per_image,
    place_on_canvas,
    render_image,
    shape_mask,
    write_annotation_files,
    write_bytes_atomically,
)
from longtail_seg.data.synthetic_config import LVIS_MAX_CATEGORIES_PER_IMAGE, LVIS_MIN_NUM_TRAIN

LVIS_V1_TRAIN_IMAGES = 100_170
# COCO 2017's common image sizes as (width, height) with their approximate shares; the remaining share draws a
# long side of 640 and a short side in OTHER_SHORT_SIDE, either orientation.
COCO_IMAGE_SIZES = (
    ((640, 480), 0.36), ((480, 640), 0.12), ((640, 427), 0.13), ((427, 640), 0.04), ((640, 426), 0.05),
    ((640, 428), 0.04), ((640, 424), 0.03), ((612, 612), 0.02), ((500, 375), 0.03), ((640, 360), 0.03),
    ((640, 640), 0.02),
)
OTHER_SHORT_SIDE = (360, 640)
# COCO's object size mix: shares of small (mask area < 32^2), medium (< 96^2) and large instances, and the range
# of sqrt(mask area) each band draws from (log-uniform).
COCO_AREA_SHARES = (0.41, 0.34, 0.25)
COCO_SIDE_RANGES = ((8.0, 32.0), (32.0, 96.0), (96.0, 320.0))
ASPECT_RANGE = (0.6, 1.67)  # box height / width, log-uniform (a semicircle is flatter, as in the demo)
MIN_BOX_SIDE = 6
LARGE_SIDE_STEP = 8  # box sides above 64 px are multiples of 8, so large masks are drawn (and cached) less often
# Placement tries of one object: 40 at its drawn size, then 20 at 0.6 and 20 at 0.35 of it, then it is dropped.
SHRINK_SCHEDULE = (1.0,) * 40 + (0.6,) * 20 + (0.35,) * 20
MAX_INSTANCES_PER_CATEGORY = 4  # instances of one category in an image: 1 + Poisson(LVIS instances/image - 1)
MAX_OBJECTS_PER_IMAGE = 24
SPLIT_FLATTENING = {"train": 1.0, "val": 0.5, "unlabeled": 0.5}
# Federated labels as sparse as LVIS's: each image lists about as many verified-absent categories as it holds
# (Poisson, drawn by the split's category profile), and marks each present category not exhaustive with this
# probability.
NOT_EXHAUSTIVE_PROBABILITY = 0.1
JPEG_QUALITY = 90
LVIS_STREAM = 7  # separates the lvis mode's random streams from the demo's for the same seed


def build_lvis_categories(table: pd.DataFrame) -> list[Category]:
    """One category per row of the LVIS table (its id), each a distinct shape x colour x mark of the demo's code."""
    colours = list(PALETTE)
    identities = len(SHAPES) * len(colours) * len(MARKS)
    if len(table) > identities:
        raise ValueError(f"{len(table)} categories need more than the {identities} shape x colour x mark identities")
    categories = []
    for index, category_id in enumerate(table["id"].tolist()):
        mark = MARKS[index % len(MARKS)]
        colour = colours[(index // len(MARKS)) % len(colours)]
        shape = SHAPES[index // (len(MARKS) * len(colours))]
        categories.append(Category(int(category_id), shape, colour, mark))
    return categories


def split_image_counts(table: pd.DataFrame, num_images: int, split: str, rng: np.random.Generator) -> np.ndarray:
    """Number of images of the split holding each category (indexed like ``table``).

    train: LVIS's training image counts scaled to ``num_images``, at least 1 (every category exists in training).
    val / unlabeled: LVIS's mean number of categories per image, spread over the flattened profile with random
    rounding, and at least one category of each r/c/f group.
    """
    lvis_counts = table["image_count"].to_numpy(dtype=np.float64)
    if split == "train":
        expected = lvis_counts * num_images / LVIS_V1_TRAIN_IMAGES
        return np.minimum(np.maximum(np.round(expected), 1), num_images).astype(np.int64)
    weights = lvis_counts ** SPLIT_FLATTENING[split]
    categories_per_image = lvis_counts.sum() / LVIS_V1_TRAIN_IMAGES
    expected = weights / weights.sum() * categories_per_image * num_images
    counts = np.floor(expected) + (rng.random(len(expected)) < expected - np.floor(expected))
    counts = np.minimum(counts, num_images).astype(np.int64)
    groups = table["frequency"].to_numpy()
    for group in ("r", "c", "f"):
        members = np.flatnonzero(groups == group)
        if num_images > 0 and len(members) and counts[members].sum() == 0:
            counts[rng.choice(members)] = 1
    return counts


def coco_image_sizes(num_images: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(height, width) of each image, drawn from COCO's common sizes (see COCO_IMAGE_SIZES)."""
    shares = np.array([share for _, share in COCO_IMAGE_SIZES] + [1.0 - sum(s for _, s in COCO_IMAGE_SIZES)])
    choices = rng.choice(len(shares), size=num_images, p=shares / shares.sum())
    short_sides = rng.integers(OTHER_SHORT_SIDE[0], OTHER_SHORT_SIDE[1] + 1, size=num_images)
    portrait = rng.random(num_images) < 0.3
    sizes = []
    for choice, short, tall in zip(choices.tolist(), short_sides.tolist(), portrait.tolist()):
        if choice < len(COCO_IMAGE_SIZES):
            width, height = COCO_IMAGE_SIZES[choice][0]
        else:
            width, height = (short, 640) if tall else (640, short)
        sizes.append((height, width))
    return sizes


@functools.cache
def _fill_fraction(shape: str) -> float:
    """Share of its box that a shape covers (a box holds side**2 / fill pixels for a mask area of side**2)."""
    return float(shape_mask(shape, 64, 64).mean())


def object_box_size(
    category: Category, band: int, rng: np.random.Generator, height: int, width: int, shrink: float = 1.0
) -> tuple[int, int]:
    """(width, height) of an object's box: its mask area drawn from a COCO size band (0 small, 1 medium, 2 large;
    times ``shrink`` squared), a random aspect, the box fitting the image."""
    low, high = COCO_SIDE_RANGES[band]
    side = math.exp(rng.uniform(math.log(low), math.log(high))) * shrink
    aspect = math.exp(rng.uniform(math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])))
    if category.shape == "semicircle":
        aspect *= 0.62
    box_area = side**2 / _fill_fraction(category.shape)
    box_width, box_height = math.sqrt(box_area / aspect), math.sqrt(box_area * aspect)
    return _box_side(box_width, width), _box_side(box_height, height)


def _box_side(side: float, limit: int) -> int:
    """A box side in pixels: at least MIN_BOX_SIDE, a multiple of LARGE_SIDE_STEP above 64 px, at most ``limit``."""
    pixels = max(int(round(side)), MIN_BOX_SIDE)
    if pixels > 64:
        pixels = int(round(pixels / LARGE_SIDE_STEP)) * LARGE_SIDE_STEP
    return min(pixels, limit)


def place_lvis_objects(
    category_indices: list[int], categories: list[Category], height: int, width: int, rng: np.random.Generator
) -> tuple[PlacedObject, ...]:
    """Place an image's objects on a (height, width) canvas: each draws a COCO size band, and they are painted
    large first (a scene's background objects first, small ones in front, in random order within a band), each
    shrunk when it finds no room (SHRINK_SCHEDULE)."""
    bands = rng.choice(len(COCO_AREA_SHARES), size=len(category_indices), p=COCO_AREA_SHARES)
    order = np.argsort(-bands, kind="stable")
    bands = bands[order]

    def box_size(position: int, category: Category, attempt: int) -> tuple[int, int]:
        return object_box_size(category, int(bands[position]), rng, height, width, SHRINK_SCHEDULE[attempt])

    canvas = PlacementCanvas(height, width, LVIS_MIN_VISIBLE_AREA)
    ordered = [category_indices[i] for i in order]
    return place_on_canvas(ordered, categories, canvas, rng, box_size, len(SHRINK_SCHEDULE))


def image_instances(present: list[int], ratios: np.ndarray, rng: np.random.Generator) -> list[int]:
    """Category indices of an image's objects: each present category once, then 1 + Poisson(LVIS instances per
    image - 1) in all (at most MAX_INSTANCES_PER_CATEGORY), at most MAX_OBJECTS_PER_IMAGE objects."""
    if not present:
        return []
    extra = np.minimum(rng.poisson(np.maximum(ratios[present] - 1.0, 0.0)), MAX_INSTANCES_PER_CATEGORY - 1)
    instances = list(present) + [index for index, count in zip(present, extra.tolist()) for _ in range(count)]
    return instances[:MAX_OBJECTS_PER_IMAGE]


def plan_lvis_split(
    split: str, num_images: int, first_image_id: int, table: pd.DataFrame, categories: list[Category], *, seed: int
) -> list[ImageLayout]:
    """Every image's layout for a split: its size, its categories on the split's profile, then the objects."""
    if num_images <= 0:
        return []
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], 0, LVIS_STREAM]))
    targets = split_image_counts(table, num_images, split, rng)
    mean = targets.sum() / num_images
    capacity = distinct_categories_per_image(
        int(targets.sum()), num_images, rng, max_per_image=LVIS_MAX_CATEGORIES_PER_IMAGE, spread=max(1.4, 0.5 * mean)
    )
    per_image = assign_categories(targets, capacity, rng)
    sizes = coco_image_sizes(num_images, rng)
    ratios = (table["instance_count"] / table["image_count"]).to_numpy(dtype=np.float64)
    layouts = []
    for index, (present, (height, width)) in enumerate(zip(per_image, sizes)):
        instances = image_instances(present, ratios, rng)
        order = rng.permutation(len(instances))
        objects = place_lvis_objects([instances[i] for i in order], categories, height, width, rng)
        layouts.append(
            ImageLayout(first_image_id + index, split, index, objects, size=(height, width), coco_style=True)
        )
    return layouts


def plan_lvis_dataset(
    *, seed: int = 0, num_train: int = 400, num_val: int = 8, num_unlabeled: int = 8
) -> tuple[pd.DataFrame, list[Category], dict[str, list[ImageLayout]]]:
    """The LVIS table, its categories and the layouts of all three splits; image ids run 1.. across the splits."""
    if num_train < LVIS_MIN_NUM_TRAIN:
        raise ValueError(f"num_train must be >= {LVIS_MIN_NUM_TRAIN} in the lvis mode (every one of the 1203 "
                         f"categories in a training image, at most {LVIS_MAX_CATEGORIES_PER_IMAGE} per image), "
                         f"got {num_train}")
    for name, value in (("num_val", num_val), ("num_unlabeled", num_unlabeled)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    table = lvis_v1_categories()
    categories = build_lvis_categories(table)
    sizes = {"train": num_train, "val": num_val, "unlabeled": num_unlabeled}
    layouts, next_id = {}, 1
    for split in SPLITS:
        layouts[split] = plan_lvis_split(split, sizes[split], next_id, table, categories, seed=seed)
        next_id += sizes[split]
    return table, categories, layouts


def lvis_category_records(table: pd.DataFrame, categories: list[Category], train_annotations: list[dict]) -> list[dict]:
    """LVIS category records: LVIS's id, name and r/c/f label; image and instance counts of the synthetic train."""
    image_ids: dict[int, set[int]] = {c.id: set() for c in categories}
    instance_count = dict.fromkeys(image_ids, 0)
    for ann in train_annotations:
        image_ids[ann["category_id"]].add(ann["image_id"])
        instance_count[ann["category_id"]] += 1
    records = []
    for category, name, frequency in zip(categories, table["name"].tolist(), table["frequency"].tolist()):
        records.append(
            {
                "id": category.id,
                "name": name,
                "synonyms": [name],
                "synset": f"{name}.n.01",
                "def": f"drawn as a {category.colour} {category.shape}{MARK_DESCRIPTIONS[category.mark]}",
                "frequency": frequency,
                "image_count": len(image_ids[category.id]),
                "instance_count": instance_count[category.id],
            }
        )
    return records


def lvis_image_record(
    layout: ImageLayout, present: set[int], negative_weights: np.ndarray, rng: np.random.Generator
) -> dict:
    """An LVIS v1 image record (``coco_url``, no ``file_name``) with sparse federated labels: about as many
    negative categories as present ones, drawn by ``negative_weights`` (per category index), and each present
    category not exhaustive with NOT_EXHAUSTIVE_PROBABILITY. ``present`` holds category indices."""
    height, width = layout.dimensions(0)
    absent = np.setdiff1d(np.arange(len(negative_weights)), sorted(present))
    count = min(int(rng.poisson(len(present))), len(absent))
    weights = negative_weights[absent]
    negatives = rng.choice(absent, size=count, replace=False, p=weights / weights.sum()) if count else []
    present_sorted = np.array(sorted(present), dtype=np.int64)
    not_exhaustive = present_sorted[rng.random(len(present_sorted)) < NOT_EXHAUSTIVE_PROBABILITY]
    return {
        "id": layout.image_id,
        "coco_url": f"http://images.cocodataset.org/{layout.file_name}",
        "height": height,
        "width": width,
        "neg_category_ids": sorted(int(i) + 1 for i in negatives),
        "not_exhaustive_category_ids": [int(i) + 1 for i in not_exhaustive],
    }


def _encode_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def render_lvis_split(
    layouts: list[ImageLayout],
    table: pd.DataFrame,
    categories: list[Category],
    image_dir: Path,
    *,
    seed: int,
    first_annotation_id: int,
    progress: tqdm | None = None,
) -> tuple[list[dict], list[dict]]:
    """Render and save a split's JPEGs; return its LVIS image records and annotations."""
    split = layouts[0].split if layouts else "train"
    meta_rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], 2, LVIS_STREAM]))
    negative_weights = table["image_count"].to_numpy(dtype=np.float64) ** SPLIT_FLATTENING[split]
    images, annotations = [], []
    for layout in layouts:
        pixels, instances = render_image(layout, categories, seed=seed)
        write_bytes_atomically(image_dir / layout.file_name, _encode_jpeg(pixels))
        annotations += annotation_records(layout, instances, categories, first_annotation_id + len(annotations))
        present = {index for index, _ in instances}
        images.append(lvis_image_record(layout, present, negative_weights, meta_rng))
        if progress is not None:
            progress.update(1)
    return images, annotations


def generate_lvis_dataset(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    num_train: int = 400,
    num_val: int = 8,
    num_unlabeled: int = 8,
    progress: bool = False,
) -> dict[str, Path]:
    """Generate the LVIS-shaped dataset under ``out_dir`` and return its paths (as ``generate_dataset``).

    Writes images/{train,val,unlabeled}2017/{image_id:012d}.jpg, then annotations/{train,val,unlabeled,
    unlabeled_hidden_gt}.json; byte-identical for the same arguments.
    """
    out_dir = Path(out_dir)
    table, categories, layouts = plan_lvis_dataset(
        seed=seed, num_train=num_train, num_val=num_val, num_unlabeled=num_unlabeled
    )
    rendered, next_annotation_id = {}, 1
    total = sum(len(v) for v in layouts.values())
    with tqdm(total=total, desc="rendering images", unit="img", disable=not progress) as bar:
        for split in SPLITS:
            rendered[split] = render_lvis_split(
                layouts[split], table, categories, out_dir / "images", seed=seed,
                first_annotation_id=next_annotation_id, progress=bar,
            )
            next_annotation_id += len(rendered[split][1])
    category_list = lvis_category_records(table, categories, rendered["train"][1])
    info = {
        "description": "longtail_seg LVIS-shaped synthetic dataset (the LVIS rehearsal): LVIS v1's 1203 categories "
                       "as shapes x colours x marks at COCO's image sizes",
        "seed": seed,
        "folders": COCO_FOLDERS,
    }
    return write_annotation_files(out_dir, rendered, category_list, info)
