"""Predict on new images (no annotations): a trained detector over image files or folders -> LVIS results JSON, an
images.json of the image ids, file names and sizes, and each image drawn with its detections.

The images become an annotation-free LVIS file in a temporary folder, so the workflow's own inference
(``inference/run.py``: single-scale or multi-scale as the test settings say) runs unchanged. Unreadable or
non-image files are reported by name and skipped. Every output is written atomically; ``results.json`` is written
last, so its presence means the run completed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from longtail_seg.inference.config import TestConfig
from longtail_seg.inference.run import predict_with_detector
from longtail_seg.io_utils import CorruptFileError, atomic_write_json, load_json_file

RESULTS_NAME = "results.json"
IMAGES_NAME = "images.json"
DRAWN_DIR = "drawn"


class PredictInputError(ValueError):
    """A refused input (not a detector checkpoint, no readable image, an output that would overwrite an input);
    the message names the file and the fix."""


@dataclass
class ImageRecords:
    """Readable images as LVIS image records (id, file_name, height, width), and the files skipped, with why."""

    images: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def collect_image_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The files to predict on, in a fixed order: each folder's non-hidden files sorted by name (not recursive),
    each file as given; a file named twice is kept once. A path that does not exist is kept (reported later)."""
    files: list[Path] = []
    seen: set[str] = set()
    for item in inputs:
        path = Path(item)
        listed = (sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
                  if path.is_dir() else [path])
        for file in listed:
            key = os.path.realpath(file)
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files


def read_image_records(files: Sequence[Path], report: Callable[[str], None] | None = None) -> ImageRecords:
    """Decode every file in full; image ids are 1-based positions in ``files`` (so an id does not depend on which
    other files are readable). A missing, unreadable or non-image file is reported by name and skipped."""
    records = ImageRecords()
    for image_id, file in enumerate(tqdm(files, desc="reading images", unit="image"), start=1):
        try:
            with Image.open(file) as pil:
                width, height = pil.convert("RGB").size
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            reason = _short_reason(error)
            records.skipped.append({"file_name": str(file), "reason": reason})
            if report is not None:
                report(f"skipped {file}: {reason}")
            continue
        records.images.append({"id": image_id, "file_name": str(file), "height": height, "width": width})
    return records


def _short_reason(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError | PermissionError):
        return type(error).__name__
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image file PIL can read"
    return f"cannot decode it ({' '.join(str(error).split())[:160]})"


def load_detector_or_refuse(checkpoint: str | os.PathLike, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """``load_detector``; anything that is not a detector checkpoint raises ``PredictInputError`` naming the file."""
    from longtail_seg.models.detector import load_detector

    if not Path(checkpoint).is_file():
        raise PredictInputError(f"--model {checkpoint}: no such file; pass a model_final.pth written by training "
                                "(results/{dataset}/models/{model}/model_final.pth)")
    try:
        return load_detector(checkpoint, map_location=device)
    except (CorruptFileError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise PredictInputError(
            f"--model {checkpoint} is not a detector checkpoint ({_what_is_wrong(error, checkpoint)}); pass a "
            "model_final.pth written by training (results/{dataset}/models/{model}/model_final.pth)"
        ) from None


def _what_is_wrong(error: BaseException, checkpoint: str | os.PathLike) -> str:
    """The loader's finding without its file name and its advice (which is about the workflow's own files)."""
    text = " ".join(str(error).split())
    for prefix in (f"{checkpoint}: ", f"{checkpoint} "):
        text = text.removeprefix(prefix)
    for advice in ("; the file is", "; use a model_final", "; training-state", "; delete it"):
        text = text.split(advice)[0]
    return text[:300]


def category_names(meta: Mapping[str, Any], categories_file: str | os.PathLike | None = None) -> dict[int, str]:
    """Category id -> name: from ``categories_file`` (an LVIS-format JSON with ``categories``) when given, else from
    the checkpoint's ``extra.category_names`` (training stores them), else the id itself as text."""
    ids = [int(c) for c in meta["category_ids"]]
    if categories_file is not None:
        data = load_json_file(categories_file, "categories file", "pass an LVIS-format annotation file")
        if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
            raise PredictInputError(f"--categories {categories_file}: not an LVIS-format file with a 'categories' "
                                    "list; pass the training annotations the model was trained on")
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"] if "id" in c}
        return {cid: names.get(cid, str(cid)) for cid in ids}
    stored = (meta.get("extra") or {}).get("category_names")
    if isinstance(stored, Sequence) and len(stored) == len(ids):
        return {cid: str(name) for cid, name in zip(ids, stored)}
    return {cid: str(cid) for cid in ids}


def output_paths(out_dir: str | os.PathLike, images: Sequence[dict], draw: bool) -> dict[str, Any]:
    """Where each output goes: ``results``, ``images`` and, per image id, its drawn PNG."""
    out = Path(out_dir)
    drawn = {image["id"]: out / DRAWN_DIR / f"{image['id']:06d}_{Path(image['file_name']).stem}.png"
             for image in images} if draw else {}
    return {"results": out / RESULTS_NAME, "images": out / IMAGES_NAME, "drawn": drawn}


def refuse_overwriting_inputs(outputs: Iterable[Path], inputs: Iterable[str | os.PathLike]) -> None:
    """Raise ``PredictInputError`` naming an output that is one of the inputs (same file after resolving links)."""
    input_keys = {os.path.realpath(path): str(path) for path in inputs}
    for output in outputs:
        if os.path.realpath(output) in input_keys:
            raise PredictInputError(
                f"{output} would overwrite the input {input_keys[os.path.realpath(output)]}; choose another --out "
                "folder (predict never writes over its inputs)")


def predict_new_images(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    cfg: TestConfig,
    device: str | torch.device = "cpu",
    draw_threshold: float = 0.5,
    draw: bool = True,
    categories_file: str | os.PathLike | None = None,
    report: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> dict[str, Any]:
    """Predict on image files and folders; write ``results.json`` (LVIS results), ``images.json`` (images and
    skipped files, categories) and ``drawn/*.png`` (detections with score >= ``draw_threshold``) under ``out_dir``.
    Returns a summary (counts, paths, seconds)."""
    device = torch.device(device)
    files = collect_image_files(inputs)
    if not files:
        raise PredictInputError(f"--images {' '.join(map(str, inputs))}: no files found; pass image files or "
                                "folders holding them")
    model, meta = load_detector_or_refuse(checkpoint, device)
    names = category_names(meta, categories_file)
    records = read_image_records(files, report)
    if not records.images:
        raise PredictInputError(f"none of the {len(files)} files under --images is a readable image "
                                f"({records.skipped[0]['file_name']}: {records.skipped[0]['reason']}, ...)")
    paths = output_paths(out_dir, records.images, draw)
    refuse_overwriting_inputs([paths["results"], paths["images"], *paths["drawn"].values()],
                              [checkpoint, *(image["file_name"] for image in records.images),
                               *([categories_file] if categories_file else [])])
    categories = [{"id": cid, "name": name} for cid, name in names.items()]
    with tempfile.TemporaryDirectory(prefix="predict_") as tmp:
        annotation_file = Path(tmp) / "images.json"
        absolute = [dict(image, file_name=os.path.abspath(image["file_name"])) for image in records.images]
        atomic_write_json(annotation_file, {"images": absolute, "categories": categories})
        results, _, elapsed = predict_with_detector(model, meta, annotation_file, "/", cfg, device)
    if draw:
        draw_results(records.images, results, names, paths["drawn"], draw_threshold)
    atomic_write_json(paths["images"], {"images": records.images, "skipped": records.skipped,
                                        "categories": categories, "checkpoint": str(checkpoint)}, indent=1)
    atomic_write_json(paths["results"], results)
    return {"images": len(records.images), "skipped": len(records.skipped), "detections": len(results),
            "seconds": elapsed, "results": str(paths["results"]), "images_json": str(paths["images"])}


def draw_results(
    images: Sequence[dict],
    results: Sequence[dict],
    names: Mapping[int, str],
    paths: Mapping[int, Path],
    score_threshold: float,
) -> None:
    """Each image with its detections of score >= ``score_threshold`` drawn, one PNG per image id in ``paths``."""
    from longtail_seg.visualize import load_rgb, save_drawn_image

    by_image: dict[int, list[dict]] = {image["id"]: [] for image in images}
    for result in results:
        by_image[result["image_id"]].append(result)
    for image in tqdm(images, desc="drawing", unit="image"):
        save_drawn_image(load_rgb(image["file_name"]), by_image[image["id"]], names, paths[image["id"]],
                         score_threshold)
