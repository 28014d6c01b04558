"""Embedded long-tail datasets of coloured shapes with small marks, written in LVIS format.

192 categories = 8 shapes x 6 colours x 4 marks (none, dark dot, short bar, thin outline). The unmarked
categories plus two per mark take the head of a log-linear long tail; every rare category is therefore a
marked variant of a more frequent parent, the fine-grained confusion that decoupled classifier retraining fixes
("data C" of the demo design notes, measured to give an LVIS-like gap). Generation runs in two stages:
:func:`plan_split` samples the layout of every image (categories, sizes, positions, occlusion checked on masks,
no pixels), and :func:`render_image` paints one planned image; both are deterministic for a seed.

The LVIS-shaped mode (:func:`generate_lvis_dataset`, the workflow's LVIS rehearsal) reuses the same planning,
placement and painting for LVIS v1's 1203 categories (the table shipped in ``lvis_v1_categories.csv``, each given a
shape x colour x mark identity) at COCO's image and object sizes, with LVIS's long tail scaled to the split size and
sparse ``neg_category_ids`` / ``not_exhaustive_category_ids``; images are COCO-style JPEGs found through ``coco_url``.
"""

from __future__ import annotations

import colorsys
import functools
import io
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from longtail_seg.data.masks import encode_mask
from longtail_seg.data.synthetic_config import DEMO_MIN_IMAGE_SIZE
from longtail_seg.io_utils import atomic_path, atomic_write_json

SHAPES = ("circle", "square", "triangle", "diamond", "hexagon", "star", "cross", "semicircle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 80, 225),
    "yellow": (235, 215, 40),
    "magenta": (205, 50, 205),
    "cyan": (40, 205, 215),
}
MARKS = ("none", "dot", "bar", "outline")


def _extended_palette() -> dict[str, tuple[int, int, int]]:
    """COLOURS plus 16 hues between them at two brightnesses: 38 colours, so that 8 shapes x 38 colours x 4 marks
    (1216 identities) give each of LVIS's 1203 categories its own look."""
    palette = dict(COLOURS)
    for step in range(16):
        hue = (step + 0.5) / 16
        for suffix, value in (("", 0.92), ("_dark", 0.55)):
            red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, value)
            palette[f"hue{round(hue * 360):03d}{suffix}"] = (round(255 * red), round(255 * green), round(255 * blue))
    return palette


PALETTE = _extended_palette()
MARK_DESCRIPTIONS = {
    "none": "",
    "dot": " with a small dark dot in its centre",
    "bar": " with a short dark bar across its centre",
    "outline": " with a thin dark outline",
}
SPLITS = ("train", "val", "unlabeled")

# Long-tail profile of the train split, fixed for the reference size of 2200 images: the category of rank k
# is in TOP_IMAGE_COUNT * 10 ** (-k / RANKS_PER_DECADE) images, giving 31 frequent (>100 images),
# 79 common (11-100) and 82 rare (1-10) categories; other sizes scale the counts by num_train / 2200.
REFERENCE_NUM_TRAIN = 2200
TOP_IMAGE_COUNT = 244.0
RANKS_PER_DECADE = 80.0
HEAD_MARKED_PER_MARK = 2
# Val and unlabeled sample categories from the train profile raised to these powers (flatter): val then holds
# ~25% rare instances (~366 at 360 images) and unlabeled ~15%, against ~4% in train.
SPLIT_FLATTENING = {"train": 1.0, "val": 0.28, "unlabeled": 0.5}
SPLIT_CODES = {"train": 1, "val": 2, "unlabeled": 3}

MIN_OBJECT_SIZE = 16  # longest object side in pixels at REFERENCE_IMAGE_SIZE; other sizes scale it
MAX_OBJECT_SIZE = 44
REFERENCE_IMAGE_SIZE = 128
MIN_IMAGE_SIZE = DEMO_MIN_IMAGE_SIZE
MAX_OBJECTS_PER_IMAGE = 6
DUPLICATE_PROBABILITY = 0.15  # chance that an image with room gets a second instance of a present category
MIN_VISIBLE_FRACTION = 0.6  # an earlier object must keep this share of its pixels when a later one lands on it
MIN_MARK_VISIBLE_FRACTION = 0.9  # ... and this share of a central mark (dot, bar), so it stays recognisable
MIN_VISIBLE_AREA = 40  # fewest visible pixels of an instance at REFERENCE_IMAGE_SIZE (scaled by area otherwise)
PLACEMENT_TRIES = 40
NOT_EXHAUSTIVE_FRACTION = 0.02
SUPERSAMPLE = 4
# Masks kept per (shape, mark, size): all of the demo's sizes, a bounded memory for the lvis mode's large objects
MASK_CACHE_SIZE = 16384
LARGE_BOX_SIDE = 96  # above this box side shape masks are drawn at 2x supersampling (the demo's objects are smaller)
# The lvis mode (synthetic_lvis.py): COCO's image folders, and the fewest visible pixels an instance keeps
COCO_FOLDERS = {"train": "train2017", "val": "val2017", "unlabeled": "unlabeled2017"}
LVIS_MIN_VISIBLE_AREA = 32


@dataclass(frozen=True)
class Category:
    """One synthetic category: a shape in a colour with a mark."""

    id: int
    shape: str
    colour: str
    mark: str

    @property
    def name(self) -> str:
        suffix = "" if self.mark == "none" else f"_{self.mark}"
        return f"{self.colour}_{self.shape}{suffix}"

    @property
    def parent_id(self) -> int:
        """Id of the unmarked category with the same shape and colour (itself when unmarked)."""
        return self.id - MARKS.index(self.mark)


@dataclass(frozen=True)
class PlacedObject:
    """An object of a planned image: category index (0-based), box origin and size in pixels."""

    category_index: int
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class ImageLayout:
    """Planned content of one image; objects are painted in order, later ones occluding earlier ones."""

    image_id: int
    split: str
    index: int  # position within its split, used to derive the render seed
    objects: tuple[PlacedObject, ...]
    size: tuple[int, int] | None = None  # (height, width); None: the demo's square image_size
    coco_style: bool = False  # COCO-style JPEG under {train,val,unlabeled}2017/ (the lvis mode)

    @property
    def file_name(self) -> str:
        if self.coco_style:
            return f"{COCO_FOLDERS[self.split]}/{self.image_id:012d}.jpg"
        return f"{self.split}/{self.image_id:06d}.png"

    def dimensions(self, image_size: int) -> tuple[int, int]:
        """(height, width) of the image: its own size, else the demo's square ``image_size``."""
        return self.size if self.size is not None else (image_size, image_size)

    def category_indices(self) -> set[int]:
        return {obj.category_index for obj in self.objects}


def build_categories() -> list[Category]:
    """All 192 categories, ids 1-based in (shape, colour, mark) order, so a parent's id is id - mark index."""
    categories = []
    for shape in SHAPES:
        for colour in COLOURS:
            for mark in MARKS:
                categories.append(Category(len(categories) + 1, shape, colour, mark))
    return categories


def frequency_ranking(categories: list[Category], rng: np.random.Generator) -> np.ndarray:
    """Category indices from most to least frequent: unmarked plus two per mark first, other marked after."""
    unmarked = [i for i, c in enumerate(categories) if c.mark == "none"]
    head, tail = list(unmarked), []
    for mark in MARKS[1:]:
        marked = np.array([i for i, c in enumerate(categories) if c.mark == mark])
        chosen = set(rng.choice(marked, size=HEAD_MARKED_PER_MARK, replace=False).tolist())
        head += sorted(chosen)
        tail += [int(i) for i in marked if i not in chosen]
    return np.concatenate([rng.permutation(head), rng.permutation(tail)]).astype(np.int64)


def target_image_counts(ranking: np.ndarray, num_images: int, flattening: float) -> np.ndarray:
    """Number of images of the split holding each category (indexed by category), on the log-linear tail."""
    profile = np.empty(len(ranking))
    profile[ranking] = TOP_IMAGE_COUNT * 10.0 ** (-np.arange(len(ranking)) / RANKS_PER_DECADE)
    reference_total = np.round(profile).sum()
    flat = profile**flattening
    expected = flat / flat.sum() * reference_total * num_images / REFERENCE_NUM_TRAIN
    return np.minimum(_largest_remainder_round(expected), num_images)


def _largest_remainder_round(values: np.ndarray) -> np.ndarray:
    """Round to integers keeping the (rounded) total: the largest fractional parts are rounded up."""
    floors = np.floor(values).astype(np.int64)
    missing = int(round(values.sum())) - int(floors.sum())
    order = np.argsort(-(values - floors), kind="stable")
    floors[order[:missing]] += 1
    return floors


def distinct_categories_per_image(
    total: int,
    num_images: int,
    rng: np.random.Generator,
    *,
    max_per_image: int = MAX_OBJECTS_PER_IMAGE,
    spread: float = 1.4,
) -> np.ndarray:
    """Number of distinct categories per image (1..max_per_image, normal around the mean with sd ``spread``)
    summing to ``total`` (capped at ``max_per_image`` per image)."""
    total = int(np.clip(total, num_images, num_images * max_per_image))
    mean = total / num_images
    counts = np.clip(np.round(rng.normal(mean, spread, size=num_images)), 1, max_per_image).astype(np.int64)
    while counts.sum() != total:
        step = 1 if counts.sum() < total else -1
        movable = np.flatnonzero((counts < max_per_image) if step > 0 else (counts > 1))
        chosen = rng.choice(movable, size=min(abs(total - counts.sum()), len(movable)), replace=False)
        counts[chosen] += step
    return counts


def assign_categories(targets: np.ndarray, capacity: np.ndarray, rng: np.random.Generator) -> list[list[int]]:
    """Give each category ``targets[k]`` distinct images, never exceeding an image's ``capacity``.

    Categories are placed from most to least frequent into the images with the most room left (random
    tie-breaking), the greedy order that keeps the assignment feasible.
    """
    remaining = capacity.astype(np.float64).copy()
    per_image: list[list[int]] = [[] for _ in range(len(capacity))]
    for category in np.argsort(-targets, kind="stable"):
        count = int(targets[category])
        if count == 0:
            continue
        key = np.where(remaining > 0, remaining + 1.5 * rng.random(len(remaining)), -np.inf)
        chosen = np.argsort(-key, kind="stable")[:count]
        chosen = chosen[remaining[chosen] > 0]
        remaining[chosen] -= 1
        for image in chosen:
            per_image[image].append(int(category))
    return per_image


@functools.lru_cache(maxsize=MASK_CACHE_SIZE)
def shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """Binary (height, width) mask of a shape filling its box, drawn supersampled with PIL and downsampled: a pixel
    is in the mask when at least half of its subpixels are (SUPERSAMPLE per side; 2 for boxes over
    LARGE_BOX_SIDE px, whose edges need less)."""
    s = SUPERSAMPLE if max(width, height) <= LARGE_BOX_SIDE else 2
    canvas = Image.new("L", (width * s, height * s), 0)
    draw = ImageDraw.Draw(canvas)
    w, h = width * s - 1, height * s - 1
    if shape == "circle":
        draw.ellipse([0, 0, w, h], fill=255)
    elif shape == "square":
        draw.rectangle([0, 0, w, h], fill=255)
    else:
        draw.polygon([(px * w, py * h) for px, py in _unit_polygon(shape)], fill=255)
    inside = (np.asarray(canvas) >> 7).reshape(height * s, width, s).sum(axis=2, dtype=np.uint8)
    mask = inside.reshape(height, s, width).sum(axis=1, dtype=np.uint8) * 2 >= s * s
    mask.setflags(write=False)
    return mask


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Polygon vertices of a shape in the unit box (x right, y down)."""
    if shape == "triangle":
        return [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if shape == "diamond":
        return [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    if shape == "hexagon":
        return [(0.25, 0.0), (0.75, 0.0), (1.0, 0.5), (0.75, 1.0), (0.25, 1.0), (0.0, 0.5)]
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 0.5, 0.24)
        points = [(0.5 + r * np.cos(a), 0.53 + r * np.sin(a) * 1.06) for r, a in zip(radii, angles)]
        return [(float(np.clip(x, 0, 1)), float(np.clip(y, 0, 1))) for x, y in points]
    if shape == "cross":
        a, b = 0.32, 0.68
        return [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    if shape == "semicircle":
        angles = np.linspace(np.pi, 2 * np.pi, 25)
        return [(float(0.5 + 0.5 * np.cos(t)), float(1.0 + np.sin(t))) for t in angles]
    raise ValueError(f"unknown shape '{shape}'; known shapes: {SHAPES}")


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary erosion with a 3x3 cross, pixels outside the array counting as background."""
    out = mask.copy()
    for _ in range(iterations):
        padded = np.pad(out, 1)
        out = (
            padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        )
    return out


@functools.lru_cache(maxsize=MASK_CACHE_SIZE)
def mark_mask(shape: str, mark: str, width: int, height: int) -> np.ndarray:
    """Binary mask of a category's mark inside its shape box (all False for 'none').

    Mark sizes scale with the object but never drop below 2 pixels, so they stay learnable at 16 px.
    """
    body = shape_mask(shape, width, height)
    short_side = min(width, height)
    if mark == "none":
        mark_pixels = np.zeros_like(body)
    elif mark == "outline":
        mark_pixels = body & ~_erode(body, max(1, int(round(0.06 * short_side))))
    else:
        ys, xs = np.nonzero(body)
        cy, cx = ys.mean(), xs.mean()
        grid_y, grid_x = np.mgrid[0:height, 0:width]
        if mark == "dot":
            radius = max(2.0, 0.14 * short_side)
            mark_pixels = (grid_y - cy) ** 2 + (grid_x - cx) ** 2 <= radius**2
        elif mark == "bar":
            half_length, half_thickness = 0.25 * width, max(1.0, 0.065 * short_side)
            mark_pixels = (np.abs(grid_x - cx) <= half_length) & (np.abs(grid_y - cy) <= half_thickness)
        else:
            raise ValueError(f"unknown mark '{mark}'; known marks: {MARKS}")
        mark_pixels &= _erode(body, 1)
    mark_pixels.setflags(write=False)
    return mark_pixels


def _object_box_size(category: Category, rng: np.random.Generator, scale: float = 1.0) -> tuple[int, int]:
    """Random (width, height) of an object: longest side in [16, 44] px times ``scale``, mild aspect jitter."""
    size = rng.uniform(MIN_OBJECT_SIZE, MAX_OBJECT_SIZE) * scale
    aspect = rng.uniform(0.85, 1.15)
    if category.shape == "semicircle":
        aspect = aspect * 0.62
    width, height = (size, size * aspect) if aspect <= 1 else (size / aspect, size)
    return max(int(round(width)), 8), max(int(round(height)), 8)


def min_visible_area(image_size: int) -> int:
    """Fewest visible pixels an instance may keep; planning guarantees it, rendering drops anything below."""
    return max(8, int(round(MIN_VISIBLE_AREA * (image_size / REFERENCE_IMAGE_SIZE) ** 2)))


class PlacementCanvas:
    """Occlusion bookkeeping while planning one image: which object owns each pixel, and which are marks."""

    def __init__(self, height: int, width: int, min_area: int):
        self.height, self.width = height, width
        self.min_area = min_area
        self.owner = np.full((height, width), -1, dtype=np.int16)
        self.is_mark = np.zeros((height, width), dtype=bool)
        self.visible: list[int] = []
        self.visible_mark: list[int] = []
        self.area: list[int] = []
        self.mark_area: list[int] = []

    def fits(self, body: np.ndarray, x: int, y: int) -> bool:
        """Whether painting ``body`` at (x, y) leaves every earlier object enough visible body and mark."""
        if body.sum() < self.min_area:
            return False
        if not self.area:
            return True
        h, w = body.shape
        owners = self.owner[y : y + h, x : x + w][body]
        covered = np.bincount(owners[owners >= 0], minlength=len(self.area))
        marks = self.is_mark[y : y + h, x : x + w][body]
        covered_marks = np.bincount(owners[(owners >= 0) & marks], minlength=len(self.area))
        visible = np.asarray(self.visible) - covered
        visible_mark = np.asarray(self.visible_mark) - covered_marks
        ok_body = (visible >= MIN_VISIBLE_FRACTION * np.asarray(self.area)) & (visible >= self.min_area)
        ok_mark = visible_mark >= MIN_MARK_VISIBLE_FRACTION * np.asarray(self.mark_area)
        return bool(np.all(ok_body & ok_mark))

    def paint(self, body: np.ndarray, marks: np.ndarray, x: int, y: int) -> None:
        h, w = body.shape
        owners = self.owner[y : y + h, x : x + w]
        covered = np.bincount(owners[body & (owners >= 0)], minlength=len(self.area))
        covered_marks = np.bincount(
            owners[body & (owners >= 0) & self.is_mark[y : y + h, x : x + w]], minlength=len(self.area)
        )
        for j in range(len(self.area)):
            self.visible[j] -= int(covered[j])
            self.visible_mark[j] -= int(covered_marks[j])
        owners[body] = len(self.area)
        self.is_mark[y : y + h, x : x + w][body] = marks[body]
        self.area.append(int(body.sum()))
        self.visible.append(self.area[-1])
        self.mark_area.append(int(marks.sum()))
        self.visible_mark.append(self.mark_area[-1])


def _protected_mark(category: Category, width: int, height: int) -> np.ndarray:
    """Mark pixels that later objects must leave visible: the central dot or bar; an outline may be cut."""
    if category.mark == "outline":
        return np.zeros_like(shape_mask(category.shape, width, height))
    return mark_mask(category.shape, category.mark, width, height)


def place_objects(
    category_indices: Iterable[int], categories: list[Category], image_size: int, rng: np.random.Generator
) -> tuple[PlacedObject, ...]:
    """Place objects in paint order; each keeps enough of its body and mark visible under later ones.

    An object that finds no position in PLACEMENT_TRIES tries is shrunk once, then dropped.
    """

    def box_size(position: int, category: Category, attempt: int) -> tuple[int, int]:
        scale = image_size / REFERENCE_IMAGE_SIZE * (1.0 if attempt < PLACEMENT_TRIES else 0.7)
        return _object_box_size(category, rng, scale)

    canvas = PlacementCanvas(image_size, image_size, min_visible_area(image_size))
    return place_on_canvas(category_indices, categories, canvas, rng, box_size, 2 * PLACEMENT_TRIES)


def place_on_canvas(
    category_indices: Iterable[int],
    categories: list[Category],
    canvas: PlacementCanvas,
    rng: np.random.Generator,
    box_size: Callable[[int, Category, int], tuple[int, int]],
    attempts: int,
) -> tuple[PlacedObject, ...]:
    """Place objects in order at random positions on ``canvas``; ``box_size(position, category, attempt)`` draws
    the box of a try (``position``: the object's place in the order), which must fit the canvas. An object with no
    admissible position in ``attempts`` tries is dropped."""
    placed = []
    for position, index in enumerate(category_indices):
        category = categories[index]
        for attempt in range(attempts):
            width, height = box_size(position, category, attempt)
            x = int(rng.integers(0, canvas.width - width + 1))
            y = int(rng.integers(0, canvas.height - height + 1))
            body = shape_mask(category.shape, width, height)
            if canvas.fits(body, x, y):
                canvas.paint(body, _protected_mark(category, width, height), x, y)
                placed.append(PlacedObject(int(index), x, y, width, height))
                break
    return tuple(placed)


def plan_split(
    split: str,
    num_images: int,
    first_image_id: int,
    ranking: np.ndarray,
    categories: list[Category],
    *,
    seed: int,
    image_size: int = 128,
) -> list[ImageLayout]:
    """Sample every image's layout for a split (no pixels): categories on the split's tail, then positions."""
    if num_images <= 0:
        return []
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], 0]))
    targets = target_image_counts(ranking, num_images, SPLIT_FLATTENING[split])
    capacity = distinct_categories_per_image(int(targets.sum()), num_images, rng)
    per_image = assign_categories(targets, capacity, rng)
    layouts = []
    for index, present in enumerate(per_image):
        instances = list(present)
        if present and len(instances) < MAX_OBJECTS_PER_IMAGE and rng.random() < DUPLICATE_PROBABILITY:
            instances.append(int(rng.choice(present)))
        order = rng.permutation(len(instances))
        objects = place_objects([instances[i] for i in order], categories, image_size, rng)
        layouts.append(ImageLayout(first_image_id + index, split, index, objects))
    return layouts


def plan_dataset(
    *, seed: int = 0, image_size: int = 128, num_train: int = 2200, num_val: int = 360, num_unlabeled: int = 600
) -> tuple[list[Category], dict[str, list[ImageLayout]]]:
    """Categories and the layouts of all three splits; image ids run 1.. across train, val, unlabeled."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size {image_size} is too small for recognisable shapes and marks; use >= {MIN_IMAGE_SIZE}"
        )
    for name, value in (("num_train", num_train), ("num_val", num_val), ("num_unlabeled", num_unlabeled)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    categories = build_categories()
    ranking = frequency_ranking(categories, np.random.default_rng(np.random.SeedSequence([seed, 0, 0])))
    sizes = {"train": num_train, "val": num_val, "unlabeled": num_unlabeled}
    layouts, next_id = {}, 1
    for split in SPLITS:
        layouts[split] = plan_split(
            split, sizes[split], next_id, ranking, categories, seed=seed, image_size=image_size
        )
        next_id += sizes[split]
    return categories, layouts


def category_counts(layouts: list[ImageLayout], num_categories: int) -> tuple[np.ndarray, np.ndarray]:
    """(image_count, instance_count) per category index of a split's layouts."""
    image_count = np.zeros(num_categories, dtype=np.int64)
    instance_count = np.zeros(num_categories, dtype=np.int64)
    for layout in layouts:
        for index in layout.category_indices():
            image_count[index] += 1
        for obj in layout.objects:
            instance_count[obj.category_index] += 1
    return image_count, instance_count


def frequency_group(image_count: int) -> str:
    """LVIS frequency group from a training image count: r (1-10), c (11-100), f (>100)."""
    if image_count > 100:
        return "f"
    return "c" if image_count > 10 else "r"


def render_image(
    layout: ImageLayout, categories: list[Category], *, seed: int, image_size: int = 128
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Paint one planned image: noisy background, grey clutter, then objects in order.

    Returns the (H, W, 3) uint8 image and, per surviving object, (category index, visible full-image mask).
    A demo image is ``image_size`` square; an lvis-mode image has its own size, its clutter scaled to it.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[layout.split], 1, layout.index]))
    height, width = layout.dimensions(image_size)
    clutter_scale = math.sqrt(height * width) / REFERENCE_IMAGE_SIZE if layout.coco_style else 1.0
    image = _background(rng, height, width, clutter_scale)
    owner = np.full((height, width), -1, dtype=np.int16)
    for number, obj in enumerate(layout.objects):
        category = categories[obj.category_index]
        body = shape_mask(category.shape, obj.width, obj.height)
        marks = mark_mask(category.shape, category.mark, obj.width, obj.height)
        region = image[obj.y : obj.y + obj.height, obj.x : obj.x + obj.width]
        region[body] = _object_pixels(category, rng, body, marks)[body]
        owner[obj.y : obj.y + obj.height, obj.x : obj.x + obj.width][body] = number
    instances = []
    min_area = min_visible_area(image_size) if not layout.coco_style else LVIS_MIN_VISIBLE_AREA
    for number, obj in enumerate(layout.objects):
        visible = owner == number
        if visible.sum() >= min_area:
            instances.append((obj.category_index, visible))
    return np.clip(image, 0, 255).astype(np.uint8), instances


def _background(rng: np.random.Generator, height: int, width: int, clutter_scale: float = 1.0) -> np.ndarray:
    """Grey-ish background with a soft gradient, pixel noise and desaturated clutter (lines, blobs).

    ``clutter_scale`` > 1 draws that many times larger pieces, and its square times as many.
    """
    base = rng.uniform(70, 170) + rng.uniform(-15, 15, size=3)
    ramp_y = np.linspace(-1, 1, height, dtype=np.float32)
    ramp_x = np.linspace(-1, 1, width, dtype=np.float32)
    gradient = rng.uniform(-20, 20) * ramp_y[:, None] + rng.uniform(-20, 20) * ramp_x[None, :]
    image = base[None, None, :] + gradient[:, :, None] + rng.normal(0, 9, size=(height, width, 3))
    image = image.astype(np.float32)
    for _ in range(int(round(int(rng.integers(4, 11)) * clutter_scale**2))):
        _draw_clutter(image, rng, clutter_scale)
    return image


def _draw_clutter(image: np.ndarray, rng: np.random.Generator, scale: float = 1.0) -> None:
    """One piece of low-saturation clutter: a thin line, a small rectangle or a small blob (sizes times ``scale``)."""
    height, width = image.shape[:2]
    grey = rng.uniform(40, 220)
    colour = grey + rng.uniform(-18, 18, size=3)
    kind = rng.integers(3)
    if kind == 0:  # thin line
        length = int(round(int(rng.integers(8, 30)) * scale))
        x0, y0 = rng.integers(0, [width, height])
        angle = rng.uniform(0, np.pi)
        t = np.linspace(0, length, 2 * length)
        xs = np.clip(np.round(x0 + t * np.cos(angle)), 0, width - 1).astype(int)
        ys = np.clip(np.round(y0 + t * np.sin(angle)), 0, height - 1).astype(int)
        image[ys, xs] = colour
    else:
        w, h = (int(round(int(v) * scale)) for v in rng.integers(3, 9, size=2))
        margin = int(round(9 * scale))
        x0, y0 = (int(v) for v in rng.integers(0, [width - margin, height - margin]))
        patch = image[y0 : y0 + h, x0 : x0 + w]
        if kind == 1:
            patch[:] = colour
        else:
            yy, xx = np.mgrid[0:h, 0:w]
            blob = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2 <= 1
            patch[blob] = colour


def _object_pixels(category: Category, rng: np.random.Generator, body: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """Fill colour of an object with brightness jitter and pixel noise; marks in a dark shade of the colour."""
    colour = np.asarray(PALETTE[category.colour], dtype=np.float32) * rng.uniform(0.85, 1.08)
    pixels = colour[None, None, :] + rng.normal(0, 7, size=body.shape + (3,)).astype(np.float32)
    pixels[marks] = colour * 0.18 + rng.normal(0, 4, size=(int(marks.sum()), 3))
    return pixels


def tight_box(mask: np.ndarray) -> list[float]:
    """[x, y, width, height] of the smallest box holding every pixel of a non-empty mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return [float(xs[0]), float(ys[0]), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1)]


def category_records(categories: list[Category], train_annotations: list[dict]) -> list[dict]:
    """LVIS category records; frequency, image_count and instance_count come from the train annotations."""
    image_ids: dict[int, set[int]] = {c.id: set() for c in categories}
    instance_count = {c.id: 0 for c in categories}
    for ann in train_annotations:
        image_ids[ann["category_id"]].add(ann["image_id"])
        instance_count[ann["category_id"]] += 1
    records = []
    for category in categories:
        image_count = len(image_ids[category.id])
        description = f"a {category.colour} {category.shape}{MARK_DESCRIPTIONS[category.mark]}"
        records.append(
            {
                "id": category.id,
                "name": category.name,
                "synonyms": [category.name],
                "synset": f"{category.name}.n.01",
                "def": description,
                "frequency": frequency_group(image_count),
                "image_count": image_count,
                "instance_count": instance_count[category.id],
                "shape": category.shape,
                "colour": category.colour,
                "mark": category.mark,
                "parent_id": category.parent_id,
            }
        )
    return records


def _image_record(
    layout: ImageLayout,
    present_ids: set[int],
    all_ids: np.ndarray,
    image_size: int,
    rng: np.random.Generator,
    with_negatives: bool,
) -> dict:
    """LVIS image record; every category absent from the image is listed as negative (federated labels)."""
    negatives: list[int] = []
    not_exhaustive: list[int] = []
    if with_negatives:
        negatives = [int(c) for c in all_ids if int(c) not in present_ids]
        if present_ids and rng.random() < NOT_EXHAUSTIVE_FRACTION:
            not_exhaustive = [int(rng.choice(sorted(present_ids)))]
    return {
        "id": layout.image_id,
        "file_name": layout.file_name,
        "height": image_size,
        "width": image_size,
        "neg_category_ids": negatives,
        "not_exhaustive_category_ids": not_exhaustive,
    }


def annotation_records(
    layout: ImageLayout, instances: list[tuple[int, np.ndarray]], categories: list[Category], first_id: int
) -> list[dict]:
    """LVIS annotations of a rendered image's visible instances (RLE, tight box, area), ids from ``first_id``."""
    return [
        {
            "id": first_id + number,
            "image_id": layout.image_id,
            "category_id": categories[category_index].id,
            "segmentation": encode_mask(visible),
            "bbox": tight_box(visible),
            "area": float(visible.sum()),
        }
        for number, (category_index, visible) in enumerate(instances)
    ]


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def write_bytes_atomically(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def render_split(
    layouts: list[ImageLayout],
    categories: list[Category],
    image_dir: Path,
    *,
    seed: int,
    image_size: int,
    first_annotation_id: int,
    progress: tqdm | None = None,
) -> tuple[list[dict], list[dict]]:
    """Render and save a split's images; return its LVIS image records and annotations."""
    all_ids = np.array([c.id for c in categories], dtype=np.int64)
    split = layouts[0].split if layouts else "train"
    meta_rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], 2]))
    images, annotations = [], []
    for layout in layouts:
        pixels, instances = render_image(layout, categories, seed=seed, image_size=image_size)
        write_bytes_atomically(image_dir / layout.file_name, _encode_png(pixels))
        annotations += annotation_records(layout, instances, categories, first_annotation_id + len(annotations))
        present = {categories[index].id for index, _ in instances}
        images.append(_image_record(layout, present, all_ids, image_size, meta_rng, with_negatives=True))
        if progress is not None:
            progress.update(1)
    return images, annotations


def generate_dataset(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    image_size: int = 128,
    num_train: int = 2200,
    num_val: int = 360,
    num_unlabeled: int = 600,
    progress: bool = False,
) -> dict[str, Path]:
    """Generate the demo dataset under ``out_dir`` and return its paths.

    Writes images/{split}/{image_id:06d}.png, then annotations/{train,val,unlabeled,unlabeled_hidden_gt}.json
    (LVIS format; unlabeled has no annotations, its hidden ground truth only serves to measure pseudo-label
    precision). Output is byte-identical for the same arguments.
    """
    out_dir = Path(out_dir)
    image_root = out_dir / "images"
    categories, layouts = plan_dataset(
        seed=seed, image_size=image_size, num_train=num_train, num_val=num_val, num_unlabeled=num_unlabeled
    )
    rendered, next_annotation_id = {}, 1
    total = sum(len(v) for v in layouts.values())
    with tqdm(total=total, desc="rendering images", unit="img", disable=not progress) as bar:
        for split in SPLITS:
            rendered[split] = render_split(
                layouts[split], categories, image_root, seed=seed, image_size=image_size,
                first_annotation_id=next_annotation_id, progress=bar,
            )
            next_annotation_id += len(rendered[split][1])
    category_list = category_records(categories, rendered["train"][1])
    info = {
        "description": "longtail_seg synthetic long-tail demo: 8 shapes x 6 colours x 4 marks",
        "seed": seed,
        "image_size": image_size,
    }
    return write_annotation_files(out_dir, rendered, category_list, info)


def write_annotation_files(
    out_dir: Path, rendered: dict[str, tuple[list[dict], list[dict]]], category_list: list[dict], info: dict
) -> dict[str, Path]:
    """Write the four LVIS JSON files; unlabeled.json keeps the images only, its truth goes to the hidden file."""
    annotation_dir = out_dir / "annotations"
    contents = {}
    for split, (images, split_annotations) in rendered.items():
        contents[split] = {"info": info, "licenses": [], "images": images, "annotations": split_annotations,
                           "categories": category_list}
    contents["unlabeled_hidden_gt"] = contents["unlabeled"]
    unlabeled_images = [
        {**image, "neg_category_ids": [], "not_exhaustive_category_ids": []} for image in rendered["unlabeled"][0]
    ]
    contents["unlabeled"] = {**contents["unlabeled"], "images": unlabeled_images, "annotations": []}
    paths = {}
    for name in ("train", "val", "unlabeled", "unlabeled_hidden_gt"):
        paths[name] = annotation_dir / f"{name}.json"
        atomic_write_json(paths[name], contents[name])
    paths["image_root"] = out_dir / "images"
    return paths
