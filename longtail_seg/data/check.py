"""The data check that gates training and evaluation: an LVIS/COCO annotation file and its images, every problem
listed in one pass.

Without it bad data surfaces late: a truncated image crashes training at some iteration with no path, an RLE of
the wrong size with a shape error, and a malformed polygon was dropped without a word. The check runs the
structural checks of :func:`lvis_io.dataset_problems` (keys, unique ids, cross references, boxes), then checks
image records (positive height and width, a file name), every segmentation (well formed and inside its image),
every box (inside its image), that a training split has annotations, and decodes every image file in full in a
thread or process pool. Problems are collected, not raised one by one; the :class:`DatasetError` names the file
and lists the first ``max_listed`` (record, what is wrong, the fix) with the count of the others.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from longtail_seg.config_keys import is_number
from longtail_seg.data.lvis_io import DatasetError, dataset_problems, image_path, load_json
from longtail_seg.data.masks import compressed_counts, counts_problem, polygon_problem
from longtail_seg.io_utils import file_sha256

ROLES = ("train", "eval")
EXECUTORS = ("thread", "process")
DEFAULT_EXECUTOR = "thread"  # benchmarks/data_check_throughput.py measures both (PIL decodes without the GIL)
MAX_LISTED = 20
TOLERANCE_PX = 1.0  # coordinates may overshoot the image by this much (COCO polygons touch x = width)
FIX_IMAGE = "re-download or re-extract the file, or remove the image record and its annotations"
FIX_ANNOTATION = "fix or drop the annotation"


@dataclass
class Problems:
    """Problems found so far: all counted, the first ``max_listed`` kept for the message."""

    max_listed: int = MAX_LISTED
    listed: list[str] = field(default_factory=list)
    count: int = 0

    def add(self, message: str) -> None:
        """Record one problem (its message kept while under the cap)."""
        self.count += 1
        if len(self.listed) < self.max_listed:
            self.listed.append(message)

    def extend(self, messages: Iterable[str]) -> None:
        """Record several problems."""
        for message in messages:
            self.add(message)

    def raise_if_any(self, path: str | os.PathLike) -> None:
        """Raise one :class:`DatasetError` naming the file and listing the problems, if there are any."""
        if not self.count:
            return
        lines = [f"{path}: the data check found {self.count} problem{'s' if self.count > 1 else ''}"
                 + (f" (the first {len(self.listed)} listed)" if self.count > len(self.listed) else "") + ":"]
        lines += [f"  - {message}" for message in self.listed]
        if self.count > len(self.listed):
            lines.append(f"  ... and {self.count - len(self.listed)} more; fix these and rerun the check")
        raise DatasetError("\n".join(lines))


def check_dataset(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    role: str = "train",
    require_masks: bool = True,
    workers: int | None = None,
    executor: str = DEFAULT_EXECUTOR,
    max_listed: int = MAX_LISTED,
    progress: bool = True,
) -> dict[str, Any]:
    """Check an annotation file (and with ``image_root`` decode its images); return a report, or raise
    :class:`DatasetError` listing every problem.

    ``role`` "train" requires annotations; "eval" allows images without any (LVIS val has some). ``require_masks``
    makes a missing segmentation a problem (training and segm evaluation need masks). ``workers`` decode images
    in parallel (default: every CPU this process may use) with a ``executor`` ("thread" or "process") pool.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    start = time.perf_counter()
    data = load_json(annotation_file)
    problems = Problems(max_listed)
    problems.extend(dataset_problems(data, require_annotations=role == "train"))
    if not _is_usable(data):  # top-level keys missing or not lists: nothing below can run
        problems.raise_if_any(annotation_file)
    images = [image for image in data["images"] if isinstance(image, dict) and "id" in image]
    annotations = [ann for ann in data.get("annotations", []) if isinstance(ann, dict)]
    if "annotations" in data or role != "train":  # a missing key is already reported
        problems.extend(split_problems(len(images), len(annotations), role))
    sizes = image_sizes(images, image_root, problems)
    for ann in annotations:
        if ann.get("image_id") in sizes:
            problems.extend(annotation_problems(ann, *sizes[ann["image_id"]], require_masks=require_masks))
    decoded, decode_seconds = 0, 0.0
    workers = workers or available_cpus()
    if image_root is not None:
        items = [(image["id"], str(image_path(image, image_root)), *sizes[image["id"]])
                 for image in images if image["id"] in sizes]
        decode_start = time.perf_counter()
        problems.extend(decode_images(items, workers, executor, progress))
        decoded, decode_seconds = len(items), time.perf_counter() - decode_start
    problems.raise_if_any(annotation_file)
    return {
        "annotation_file": str(annotation_file),
        "annotation_sha256": file_sha256(annotation_file),
        "image_root": None if image_root is None else str(image_root),
        "role": role,
        "require_masks": require_masks,
        "num_images": len(images),
        "num_annotations": len(annotations),
        "num_categories": len(data["categories"]),
        "images_decoded": decoded,
        "workers": workers,
        "executor": executor,
        "decode_seconds": round(decode_seconds, 3),
        "images_per_s": round(decoded / decode_seconds, 1) if decode_seconds > 0 else None,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _is_usable(data: Any) -> bool:
    """Whether the file has the lists the record checks walk (``images``, ``categories``, optional ``annotations``)."""
    return (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("categories"), list) and isinstance(data.get("annotations", []), list))


def image_sizes(images: list[dict], image_root: str | os.PathLike | None, problems: Problems) -> dict[Any, tuple]:
    """(height, width) by image id of the sound image records (annotations are checked against these); the
    problems of the others go to ``problems``."""
    sizes = {}
    for image in images:
        image_problems = list(image_record_problems(image, image_root))
        problems.extend(image_problems)
        if not image_problems:
            sizes[image["id"]] = (image["height"], image["width"])
    return sizes


def split_problems(num_images: int, num_annotations: int, role: str) -> Iterator[str]:
    """An empty split, or a training split without annotations (it would train on background only)."""
    if num_images == 0:
        yield "the file has no images; point the config at the split's annotation file"
    elif role == "train" and num_annotations == 0:
        yield (f"the split has {num_images} images but no annotations; a training split needs annotations (point "
               "train_json at the annotated file, not an image-info file such as image_info_unlabeled2017.json)")


def image_record_problems(image: dict, image_root: str | os.PathLike | None) -> Iterator[str]:
    """Problems of one image record: height and width not positive integers, no file name (when images are read)."""
    where = f"image id {image['id']}"
    for key in ("height", "width"):
        value = image.get(key)
        if type(value) is not int or value <= 0:
            yield f"{where}: '{key}' is {value!r}, not a positive integer; write the image's size in pixels"
    if image_root is not None and not (image.get("file_name") or image.get("coco_url")):
        yield f"{where}: record has neither 'file_name' nor 'coco_url'; add the file name relative to image_root"


def annotation_problems(ann: dict, height: int, width: int, require_masks: bool = True) -> Iterator[str]:
    """Problems of one annotation against its image's size: the box and the segmentation."""
    where = f"annotation id {ann.get('id', '?')} (image id {ann['image_id']})"
    bbox = ann.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4 and all(map(is_number, bbox)):  # else lvis_io says so
        problem = box_problem(bbox, height, width)
        if problem is not None:
            yield f"{where}: bbox {bbox} {problem}; {FIX_ANNOTATION}"
    segmentation = ann.get("segmentation")
    if segmentation is None or segmentation == [] or segmentation == {}:
        if require_masks:
            yield f"{where}: no 'segmentation'; add the mask (training and segm evaluation need one) or drop it"
        return
    problem = segmentation_problem(segmentation, height, width)
    if problem is not None:
        yield f"{where}: segmentation {problem}; {FIX_ANNOTATION}"


def box_problem(bbox: list[float], height: int, width: int, tolerance: float = TOLERANCE_PX) -> str | None:
    """What is wrong with an xywh box in a ``height`` x ``width`` image (outside it by more than ``tolerance``)."""
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return None  # lvis_io.dataset_problems reports non-positive sizes
    if x < -tolerance or y < -tolerance or x + w > width + tolerance or y + h > height + tolerance:
        return f"reaches outside the {width}x{height} image (x {x} .. {x + w}, y {y} .. {y + h})"
    return None


def segmentation_problem(segmentation: Any, height: int, width: int, tolerance: float = TOLERANCE_PX) -> str | None:
    """What is wrong with a polygon or RLE segmentation of a ``height`` x ``width`` image, or None."""
    if isinstance(segmentation, list):
        for index, polygon in enumerate(segmentation):
            problem = polygon_problem(polygon) or _polygon_bounds_problem(polygon, height, width, tolerance)
            if problem is not None:
                return f"polygon {index} {problem}"
        return None
    if isinstance(segmentation, dict):
        return rle_problem(segmentation, height, width)
    return f"is a {type(segmentation).__name__}; it must be a list of polygons or an RLE dict with size and counts"


def _polygon_bounds_problem(polygon: list[float], height: int, width: int, tolerance: float) -> str | None:
    """Whether a well-formed polygon reaches outside the image by more than ``tolerance`` pixels."""
    xs, ys = polygon[0::2], polygon[1::2]
    if min(xs) < -tolerance or min(ys) < -tolerance or max(xs) > width + tolerance or max(ys) > height + tolerance:
        return (f"reaches outside the {width}x{height} image (x {min(xs)} .. {max(xs)}, y {min(ys)} .. {max(ys)}), "
                "as if written for another image size")
    return None


def rle_problem(rle: dict, height: int, width: int) -> str | None:
    """What is wrong with an RLE dict for a ``height`` x ``width`` image: its size, or counts that do not decode."""
    size, counts = rle.get("size"), rle.get("counts")
    if (list(size) if isinstance(size, (list, tuple)) else size) != [height, width]:
        return f"is an RLE of size {size!r}, but the image record is [height, width] [{height}, {width}]"
    if isinstance(counts, list):
        problem = counts_problem(counts, height, width)
        return None if problem is None else f"is an uncompressed RLE whose {problem}"
    if not isinstance(counts, (str, bytes)):
        return f"is an RLE with counts of type {type(counts).__name__}; counts are a list or a compressed string"
    try:
        runs = compressed_counts(counts)
    except (ValueError, UnicodeEncodeError) as err:
        return f"is a compressed RLE that does not decode: {err}"
    problem = counts_problem(runs, height, width)
    return None if problem is None else f"is a compressed RLE whose decoded {problem}"


def decode_images(
    items: list[tuple[Any, str, int, int]], workers: int, executor: str = DEFAULT_EXECUTOR, progress: bool = True
) -> Iterator[str]:
    """Decode ``(image id, path, height, width)`` items in full, ``workers`` at a time; yield the problems in order."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    with tqdm(total=len(items), desc="decoding images", unit="img", disable=not progress, mininterval=2.0) as bar:
        for problem in _parallel_map(_decode_item, items, workers, executor):
            bar.update()
            if problem is not None:
                yield problem


def _parallel_map(function: Callable[[Any], Any], items: list, workers: int, executor: str) -> Iterator[Any]:
    """``map(function, items)`` in order, on a pool of ``workers`` threads or processes (in this one for 1)."""
    if workers <= 1:
        yield from map(function, items)
        return
    pool_class = ThreadPoolExecutor if executor == "thread" else ProcessPoolExecutor
    chunksize = max(1, len(items) // (8 * workers))  # processes: ~8 tasks per worker, few round trips (threads: 1)
    with pool_class(workers) as pool:
        yield from pool.map(function, items, chunksize=chunksize)


def _decode_item(item: tuple[Any, str, int, int]) -> str | None:
    """:func:`image_file_problem` of one ``(image id, path, height, width)`` item, with the record named."""
    image_id, path, height, width = item
    problem = image_file_problem(path, height, width)
    return None if problem is None else f"image id {image_id}: {problem}"


def image_file_problem(path: str | os.PathLike, height: int, width: int) -> str | None:
    """Decode an image file in full (``load()``: ``verify()`` misses truncated files); what is wrong, or None."""
    try:
        with Image.open(path) as image:
            image.load()
            file_width, file_height = image.size
    except FileNotFoundError:
        return f"image file {path} not found; check image_root in your config"
    except UnidentifiedImageError:
        return f"image file {path} is not an image PIL can read (wrong content or format); {FIX_IMAGE}"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"image file {path} does not decode ({err}); {FIX_IMAGE}"
    if (file_height, file_width) != (height, width):
        return (f"image file {path} is {file_width}x{file_height} but the record says {width}x{height}; "
                "fix the record's width and height or the file")
    return None


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
