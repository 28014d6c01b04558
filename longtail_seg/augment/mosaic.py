"""Balanced mosaic (the report's Section 2, Algorithm 1): mosaic augmentation whose partner images are drawn with the
repeat-factor probabilities p_i = r_i / sum_j r_j, so tail-category images fill the mosaics more often.

For sample x_0 (dataset index i): draw 3 partners with ``Generator.choice(n, 3, p)``; draw a scale factor s from
``scale_range`` and let the tile box be x_0's size times s; resize every image to fit that box keeping its aspect
ratio (x_0 fills it exactly; mmdet ``Mosaic`` semantics); place the four tiles on a canvas twice the tile box, each in
one quadrant touching a random centre (drawn from ``center_range`` x tile box) and clipped to the canvas; then the
post-transforms of Algorithm 1: a random crop window of ``output_size`` times a zoom z drawn from ``crop_range``
(shrunk to fit the canvas if larger), always containing the centre so the four tiles can show, resized to
``output_size`` (no resampling when z = 1); a horizontal flip; a colour jitter. Objects thus end up at s / z times
their original size (scale_range picks the multi-scale training scale, crop_range an extra zoom). With probability
``1 - prob`` the base sample skips the mosaic and goes through the same post-transforms alone (no pre-resize; the
crop window then lies anywhere in the image).

Masks follow the image exactly: the nearest-neighbour maps of every resize and the integer placements and crops are
composed into one row map and one column map per tile, so each output mask is read straight from its source mask
(the same pixels as resizing, pasting, cropping and resizing again, without building full-size canvases of masks).
Instances cut below ``min_visible_area`` output pixels (or ``min_box_size`` pixels of width or height) are dropped,
and boxes are RECOMPUTED as the tight box of the visible mask, xyxy with pixel-edge coordinates (a mask covering
columns 3..7 gives x1=3, x2=8), the convention of LVISDetectionDataset's boxes (COCO ``[x, y, w, h]`` ->
``[x, y, x+w, y+h]``). Without masks, boxes are mapped by the same geometry and clipped to their tile.

Plain torch/numpy rather than torchvision's v2 transforms for the geometry: v2's crop and resize act on whole
images and masks, which here would mean materialising a 2x-size canvas of every mask (60 x 2048^2 bytes for a
1024 px LVIS mosaic); v2 also draws from torch's global RNG, while every draw here comes from a numpy generator
seeded by (seed, epoch, index) so DataLoader workers are reproducible. The colour jitter uses
``torchvision.transforms.v2.functional`` with factors from that generator. Wrap a dataset WITHOUT its own transforms
(``LVISDetectionDataset(..., transforms=None)``): the mosaic replaces the resize/flip pipeline.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from longtail_seg.config_keys import reject_unknown_keys
from longtail_seg.data.lvis_io import DatasetError
from longtail_seg.data.transforms import horizontal_flip

Target = dict[str, Any]
Sample = tuple[torch.Tensor, Target]

NUM_PARTNERS = 3
# Grey of the canvas where no tile lands (YOLO / mmdet pad value 114 of 255).
DEFAULT_FILL = 114.0 / 255.0
# No hue by default: its RGB<->HSV round trip costs ~100 ms on a 1024 px image, more than the whole mosaic.
DEFAULT_COLOR_JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.0}
JITTER_KEYS = ("brightness", "contrast", "saturation", "hue")
# Per-instance target keys carried along with the instances (besides boxes / masks, which are recomputed).
INSTANCE_KEYS = ("labels", "iscrowd", "scores")
# What an instance of a source without the key gets when another source of the mosaic has it (e.g. a training
# image next to a pseudo-labelled one with ignore regions): not crowd, certain.
INSTANCE_KEY_DEFAULTS = {"iscrowd": False, "scores": 1.0}
# Separates this module's random streams from the samplers' (seed, epoch) streams.
_STREAM_TAG = 0x4D05


@dataclass(frozen=True)
class Tile:
    """One source image on the canvas: its size before/after the pre-resize, the visible rectangle on the canvas
    (x0, y0, x1, y1; may be empty) and the tile pixel (x, y) drawn at that rectangle's top-left corner."""

    source_size: tuple[int, int]
    tile_size: tuple[int, int]
    canvas_box: tuple[int, int, int, int]
    tile_origin: tuple[int, int]


@dataclass(frozen=True)
class Window:
    """The crop window on the canvas (integer pixels)."""

    x0: int
    y0: int
    width: int
    height: int


class BalancedMosaic(torch.utils.data.Dataset):
    """Dataset wrapper applying balanced mosaic to ``dataset[i]`` (see the module docstring for the steps).

    Output: ``(image [3,H,W] float, target)`` with ``target`` holding the base keys (``boxes`` float32 xyxy,
    ``labels`` int64, ``masks`` uint8 when the base has them, ``image_id`` and ``orig_size`` of x_0, ...) plus
    ``mosaic_image_ids`` (image ids of the sources, x_0 first, tile order top-left, top-right, bottom-left,
    bottom-right; one id when the mosaic was skipped) and ``mosaic_tiles`` (int64 [K,4] xyxy output region showing
    each source; zeros for a source cropped away). ``__getitem__`` depends only on (seed, epoch, index).
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        sampling_prob: Sequence[float],
        *,
        prob: float = 1.0,
        output_size: int | Sequence[int] | None = None,
        scale_range: Sequence[float] = (0.5, 1.0),
        center_range: Sequence[float] = (0.5, 1.5),
        crop_range: Sequence[float] = (1.0, 1.0),
        min_visible_area: int = 16,
        min_box_size: int = 1,
        flip_prob: float = 0.5,
        color_jitter: Mapping[str, float] | None = None,
        fill_value: float = DEFAULT_FILL,
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        self.sampling_prob = _normalised_probabilities(sampling_prob, len(dataset))
        self.prob = _check_unit("prob", prob)
        self.output_size = _output_size(output_size)
        self.scale_range = _check_range("scale_range", scale_range, low=0.0, high=math.inf, open_low=True)
        self.center_range = _check_range("center_range", center_range, low=0.0, high=2.0)
        self.crop_range = _check_range("crop_range", crop_range, low=0.0, high=math.inf, open_low=True)
        if min_visible_area < 0 or min_box_size < 0:
            raise ValueError(f"min_visible_area and min_box_size must be >= 0, got {min_visible_area}, {min_box_size}")
        self.min_visible_area = int(min_visible_area)
        self.min_box_size = int(min_box_size)
        self.flip_prob = _check_unit("flip_prob", flip_prob)
        self.color_jitter = _check_jitter(DEFAULT_COLOR_JITTER if color_jitter is None else color_jitter)
        self.fill_value = float(fill_value)
        self.seed = int(seed)
        self.epoch = 0

    @classmethod
    def from_stats_csv(
        cls, dataset: torch.utils.data.Dataset, csv_path: str | os.PathLike, **kwargs: Any
    ) -> BalancedMosaic:
        """Build with probabilities from ``image_repeat_factors.csv`` (``sampling_prob``, else ``repeat_factor``)
        aligned to ``dataset.image_ids`` and renormalised over the dataset's images."""
        return cls(dataset, read_sampling_probabilities(csv_path, _image_ids_of(dataset)), **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random stream (call before each epoch, like ``DistributedSampler.set_epoch``).

        DataLoader workers copy the dataset when an iterator starts: with ``persistent_workers=True`` the new
        epoch never reaches them, so keep persistent workers off or recreate the loader.
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def partner_indices(self, index: int) -> np.ndarray:
        """The 3 partner dataset indices drawn for ``index`` this epoch (drawn whether or not the mosaic applies)."""
        _, partners = self._draw_partners(self._rng(index))
        return partners

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        rng = self._rng(index)
        use_mosaic, partners = self._draw_partners(rng)
        indices = [index, *partners.tolist()] if use_mosaic else [index]
        samples = [_checked_sample(self.dataset[j], j) for j in indices]
        sizes = [tuple(image.shape[-2:]) for image, _ in samples]
        out_size = self.output_size or sizes[0]
        if use_mosaic:
            tiles, canvas_size, centre = mosaic_layout(sizes, rng, self.scale_range, self.center_range)
        else:
            tiles, canvas_size, centre = single_layout(sizes[0]), sizes[0], None
        window = draw_window(canvas_size, out_size, rng, self.crop_range, centre)
        image = render_image([image for image, _ in samples], tiles, window, out_size, self.fill_value)
        target = self._render_target(samples, tiles, window, out_size)
        if rng.random() < self.flip_prob:  # drawn even when flip_prob is 0, so later draws do not depend on it
            image, target = flip_sample(image, target)
        image = color_jitter(image, self.color_jitter, rng)
        return image, target

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index), _STREAM_TAG])

    def _draw_partners(self, rng: np.random.Generator) -> tuple[bool, np.ndarray]:
        use_mosaic = bool(rng.random() < self.prob)
        partners = rng.choice(len(self.sampling_prob), NUM_PARTNERS, p=self.sampling_prob)
        return use_mosaic, partners

    def _render_target(
        self, samples: list[Sample], tiles: list[Tile], window: Window, out_size: tuple[int, int]
    ) -> Target:
        base = samples[0][1]
        pieces = [
            place_instances(target, tile, window, out_size, self.min_visible_area, self.min_box_size)
            for (_, target), tile in zip(samples, tiles)
        ]
        target = {key: value for key, value in base.items() if key not in ("boxes", "masks", "area", *INSTANCE_KEYS)}
        target["boxes"] = torch.cat([piece["boxes"] for piece in pieces])
        for key in INSTANCE_KEYS:
            if key in base or any(key in piece for piece in pieces):
                target[key] = _concat_instance_key(key, pieces)
        if "masks" in base:
            target["masks"] = paste_masks(pieces, out_size, base["masks"].dtype)
        if "area" in base:
            target["area"] = torch.cat([piece["area"] for piece in pieces]).to(base["area"].dtype)
        target["mosaic_image_ids"] = [int(t["image_id"]) for _, t in samples]
        target["mosaic_tiles"] = torch.tensor([piece["region"] for piece in pieces], dtype=torch.int64).reshape(-1, 4)
        return target

    def __repr__(self) -> str:
        return (
            f"BalancedMosaic(n={len(self)}, prob={self.prob}, output_size={self.output_size}, "
            f"scale_range={self.scale_range}, crop_range={self.crop_range}, seed={self.seed})"
        )


# ---------------------------------------------------------------------------------------------- probabilities


def read_sampling_probabilities(path: str | os.PathLike, image_ids: Sequence[int]) -> np.ndarray:
    """Partner probabilities from ``image_repeat_factors.csv`` in ``image_ids`` order (column ``sampling_prob``, or
    ``repeat_factor`` when absent), renormalised to sum to 1; errors name the file and the missing image id."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: image repeat factor file not found; run the dataset statistics step first")
    table = pd.read_csv(path)
    column = "sampling_prob" if "sampling_prob" in table.columns else "repeat_factor"
    if "image_id" not in table.columns or column not in table.columns:
        raise DatasetError(f"{path}: expected columns image_id and sampling_prob (or repeat_factor), "
                           f"found {list(table.columns)}")
    duplicated = table["image_id"][table["image_id"].duplicated()]
    if len(duplicated):
        raise DatasetError(f"{path}: image id {duplicated.iloc[0]} appears twice; regenerate the statistics")
    value_of = pd.Series(table[column].to_numpy(np.float64), index=table["image_id"].to_numpy(np.int64))
    wanted = np.asarray(image_ids, dtype=np.int64)
    missing = ~np.isin(wanted, value_of.index.to_numpy())
    if missing.any():
        raise DatasetError(
            f"{path}: image id {wanted[missing][0]} of the dataset has no {column} ({int(missing.sum())} images "
            "missing); the statistics belong to another annotation file: rerun the statistics step on this one"
        )
    return _normalised_probabilities(value_of.loc[wanted].to_numpy(np.float64), len(wanted), source=str(path))


def _normalised_probabilities(values: Sequence[float], num_images: int, source: str = "sampling_prob") -> np.ndarray:
    probs = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(probs) != num_images:
        raise ValueError(f"{source}: {len(probs)} probabilities for a dataset of {num_images} images")
    bad = np.flatnonzero(~np.isfinite(probs) | (probs < 0))
    if len(bad):
        raise ValueError(f"{source}: probabilities must be finite and >= 0; index {bad[0]} has {probs[bad[0]]}")
    total = probs.sum()
    if total <= 0:
        raise ValueError(f"{source}: probabilities sum to {total}; at least one image needs a positive weight")
    return probs / total


def _image_ids_of(dataset: torch.utils.data.Dataset) -> list[int]:
    if not hasattr(dataset, "image_ids"):
        raise TypeError(f"{type(dataset).__name__} has no image_ids; pass sampling_prob in dataset order instead")
    return list(dataset.image_ids)


# ------------------------------------------------------------------------------------------------- geometry


def mosaic_layout(
    sizes: Sequence[tuple[int, int]],
    rng: np.random.Generator,
    scale_range: tuple[float, float],
    center_range: tuple[float, float],
) -> tuple[list[Tile], tuple[int, int], tuple[int, int]]:
    """Tiles of up to four images around a random centre; returns (tiles, canvas (H, W), centre (x, y)).

    The tile box is x_0's size times a factor from ``scale_range``; each image is resized to fit it (aspect kept),
    the canvas is twice the box, and tile k sits in quadrant k (TL, TR, BL, BR) with a corner on the centre.
    """
    factor = rng.uniform(*scale_range)
    box_h, box_w = (max(1, round(side * factor)) for side in sizes[0])
    canvas_h, canvas_w = 2 * box_h, 2 * box_w
    cx = int(round(rng.uniform(*center_range) * box_w))
    cy = int(round(rng.uniform(*center_range) * box_h))
    tiles = []
    for quadrant, (height, width) in enumerate(sizes):
        ratio = min(box_h / height, box_w / width)
        tile_h, tile_w = max(1, round(height * ratio)), max(1, round(width * ratio))
        x_start = cx - tile_w if quadrant in (0, 2) else cx
        y_start = cy - tile_h if quadrant in (0, 1) else cy
        x0, y0 = max(x_start, 0), max(y_start, 0)
        x1, y1 = min(x_start + tile_w, canvas_w), min(y_start + tile_h, canvas_h)
        tiles.append(Tile((height, width), (tile_h, tile_w), (x0, y0, max(x0, x1), max(y0, y1)),
                          (x0 - x_start, y0 - y_start)))
    return tiles, (canvas_h, canvas_w), (cx, cy)


def single_layout(size: tuple[int, int]) -> list[Tile]:
    """The pass-through layout: the image itself is the canvas."""
    height, width = size
    return [Tile((height, width), (height, width), (0, 0, width, height), (0, 0))]


def draw_window(
    canvas_size: tuple[int, int],
    out_size: tuple[int, int],
    rng: np.random.Generator,
    crop_range: tuple[float, float],
    centre: tuple[int, int] | None = None,
) -> Window:
    """Random crop: ``out_size`` times a zoom from ``crop_range``, shrunk (aspect kept) to fit the canvas, placed
    uniformly (among positions containing ``centre`` when given)."""
    canvas_h, canvas_w = canvas_size
    out_h, out_w = out_size
    zoom = rng.uniform(*crop_range)
    zoom = min(zoom, canvas_h / out_h, canvas_w / out_w)
    height = min(canvas_h, max(1, round(out_h * zoom)))
    width = min(canvas_w, max(1, round(out_w * zoom)))
    if centre is None:
        x_lo, x_hi, y_lo, y_hi = 0, canvas_w - width, 0, canvas_h - height
    else:
        cx, cy = centre
        x_lo, x_hi = max(0, cx - width), min(canvas_w - width, cx)
        y_lo, y_hi = max(0, cy - height), min(canvas_h - height, cy)
    return Window(int(rng.integers(x_lo, x_hi + 1)), int(rng.integers(y_lo, y_hi + 1)), width, height)


def _nearest_source(out_len: int, in_len: int) -> np.ndarray:
    """Source index of each output index under a nearest-exact resize from ``in_len`` to ``out_len``."""
    index = np.floor((np.arange(out_len) + 0.5) * (in_len / out_len)).astype(np.int64)
    return np.minimum(index, in_len - 1)


@dataclass(frozen=True)
class _AxisMap:
    """Along one axis: output pixels [start, stop) show the tile, reading source pixels ``source``."""

    start: int
    stop: int
    source: np.ndarray


def _axis_map(
    out_len: int, win_start: int, win_len: int, box_start: int, box_stop: int, origin: int, tile_len: int, src_len: int
) -> _AxisMap:
    """Compose output -> window -> canvas -> tile -> source pixel maps along one axis (all nearest-exact)."""
    canvas = win_start + _nearest_source(out_len, win_len)
    start, stop = (int(v) for v in np.searchsorted(canvas, [box_start, box_stop], side="left"))
    tile = canvas[start:stop] - box_start + origin
    source = np.minimum(np.floor((tile + 0.5) * (src_len / tile_len)).astype(np.int64), src_len - 1)
    return _AxisMap(start, stop, source)


def tile_maps(tile: Tile, window: Window, out_size: tuple[int, int]) -> tuple[_AxisMap, _AxisMap]:
    """Row and column maps of one tile in the output."""
    (src_h, src_w), (tile_h, tile_w) = tile.source_size, tile.tile_size
    x0, y0, x1, y1 = tile.canvas_box
    rows = _axis_map(out_size[0], window.y0, window.height, y0, y1, tile.tile_origin[1], tile_h, src_h)
    cols = _axis_map(out_size[1], window.x0, window.width, x0, x1, tile.tile_origin[0], tile_w, src_w)
    return rows, cols


# ---------------------------------------------------------------------------------------------- rendering


def render_image(
    images: Sequence[torch.Tensor], tiles: Sequence[Tile], window: Window, out_size: tuple[int, int], fill: float
) -> torch.Tensor:
    """Resize each image to its tile (bilinear, antialiased), paste its part inside the crop window on a grey
    canvas, and resize the window to ``out_size``."""
    canvas = images[0].new_full((images[0].shape[0], window.height, window.width), fill)
    for image, tile in zip(images, tiles):
        x0, y0 = max(tile.canvas_box[0], window.x0), max(tile.canvas_box[1], window.y0)
        x1 = min(tile.canvas_box[2], window.x0 + window.width)
        y1 = min(tile.canvas_box[3], window.y0 + window.height)
        if x1 <= x0 or y1 <= y0:
            continue
        tx = x0 - tile.canvas_box[0] + tile.tile_origin[0]
        ty = y0 - tile.canvas_box[1] + tile.tile_origin[1]
        resized = _resize_image(image, tile.tile_size)
        canvas[:, y0 - window.y0 : y1 - window.y0, x0 - window.x0 : x1 - window.x0] = (
            resized[:, ty : ty + (y1 - y0), tx : tx + (x1 - x0)]
        )
    return _resize_image(canvas, out_size).clamp_(0.0, 1.0)


def _resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]


def place_instances(
    target: Target, tile: Tile, window: Window, out_size: tuple[int, int], min_area: int, min_box_size: int
) -> dict[str, Any]:
    """The instances of one source as they appear in the output: cropped mask patches (or clipped boxes), tight
    boxes, areas and carried keys, with instances below ``min_area`` / ``min_box_size`` dropped."""
    rows, cols = tile_maps(tile, window, out_size)
    region = (cols.start, rows.start, cols.stop, rows.stop) if rows.stop > rows.start and cols.stop > cols.start \
        else (0, 0, 0, 0)
    if "masks" in target:
        patch = _read_patch(target["masks"], rows, cols)
        boxes, area = _tight_boxes(patch)
        boxes += torch.tensor([cols.start, rows.start] * 2, dtype=boxes.dtype)
    else:
        patch = None
        boxes = _map_boxes(target["boxes"], tile, window, out_size, region)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    sides_ok = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= max(min_box_size, 1e-6)
    keep = (area >= max(min_area, 1e-6)) & sides_ok
    piece = {"boxes": boxes[keep], "area": area[keep].float(), "region": region, "rows": rows, "cols": cols}
    piece["patch"] = patch[keep] if patch is not None else None
    for key in INSTANCE_KEYS:
        if key in target:
            piece[key] = target[key][keep]
    return piece


def _concat_instance_key(key: str, pieces: Sequence[dict[str, Any]]) -> torch.Tensor:
    """One per-instance key over all pieces; pieces whose source lacks it get INSTANCE_KEY_DEFAULTS[key]."""
    present = next(piece[key] for piece in pieces if key in piece)
    if key not in INSTANCE_KEY_DEFAULTS and not all(key in piece for piece in pieces):
        raise KeyError(f"mosaic: target key {key!r} is in some sources and not others, and has no default")
    return torch.cat([
        piece[key] if key in piece else torch.full((len(piece["boxes"]),), INSTANCE_KEY_DEFAULTS[key],
                                                   dtype=present.dtype)
        for piece in pieces
    ])


def _read_patch(masks: torch.Tensor, rows: _AxisMap, cols: _AxisMap) -> torch.Tensor:
    """The output-window patch of every mask: source pixels gathered through the composed nearest maps."""
    if len(rows.source) == 0 or len(cols.source) == 0:
        return masks.new_zeros((masks.shape[0], len(rows.source), len(cols.source)))
    picked = masks.index_select(1, torch.from_numpy(rows.source))
    # gather with an expanded index: ~5x faster on CPU than index_select along the last dimension
    columns = torch.from_numpy(cols.source).view(1, 1, -1).expand(picked.shape[0], picked.shape[1], -1)
    return torch.gather(picked, 2, columns)


def _tight_boxes(patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight xyxy boxes (pixel edges: x2 = last column + 1) and pixel areas of binary masks [N,h,w]."""
    count = patch.shape[0]
    if count == 0 or patch.shape[1] == 0 or patch.shape[2] == 0:
        return torch.zeros((count, 4), dtype=torch.float32), torch.zeros(count, dtype=torch.int64)
    rows_any, cols_any = patch.any(dim=2), patch.any(dim=1)
    # numpy sums uint8 into a wide accumulator ~15x faster than torch's uint8 sum on CPU
    area = torch.from_numpy(np.count_nonzero(patch.reshape(count, -1).numpy(), axis=1).astype(np.int64))
    y1 = rows_any.int().argmax(dim=1)
    x1 = cols_any.int().argmax(dim=1)
    y2 = rows_any.shape[1] - rows_any.flip(1).int().argmax(dim=1)
    x2 = cols_any.shape[1] - cols_any.flip(1).int().argmax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    boxes[area == 0] = 0.0
    return boxes, area


def _map_boxes(
    boxes: torch.Tensor, tile: Tile, window: Window, out_size: tuple[int, int], region: tuple[int, int, int, int]
) -> torch.Tensor:
    """Mask-free path: map source boxes through resize, placement, crop and resize, clipped to the tile region."""
    (src_h, src_w), (tile_h, tile_w) = tile.source_size, tile.tile_size
    scale_x, scale_y = out_size[1] / window.width, out_size[0] / window.height
    shift_x = tile.canvas_box[0] - tile.tile_origin[0] - window.x0
    shift_y = tile.canvas_box[1] - tile.tile_origin[1] - window.y0
    mapped = boxes.double().clone()
    mapped[:, 0::2] = (mapped[:, 0::2] * (tile_w / src_w) + shift_x) * scale_x
    mapped[:, 1::2] = (mapped[:, 1::2] * (tile_h / src_h) + shift_y) * scale_y
    mapped[:, 0::2] = mapped[:, 0::2].clamp(region[0], region[2])
    mapped[:, 1::2] = mapped[:, 1::2].clamp(region[1], region[3])
    return mapped.float()


def paste_masks(pieces: Sequence[dict[str, Any]], out_size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """Full-size output masks [N,H,W]: each piece's patches written at its tile's output region."""
    total = sum(piece["patch"].shape[0] for piece in pieces)
    masks = torch.zeros((total, *out_size), dtype=dtype)
    start = 0
    for piece in pieces:
        patch, rows, cols = piece["patch"], piece["rows"], piece["cols"]
        masks[start : start + patch.shape[0], rows.start : rows.stop, cols.start : cols.stop] = patch.to(dtype)
        start += patch.shape[0]
    return masks


# --------------------------------------------------------------------------------------------- post-transforms


def flip_sample(image: torch.Tensor, target: Target) -> Sample:
    """Horizontal flip of image, masks, boxes and the recorded tile regions (x -> W - x)."""
    image, target = horizontal_flip(image, target)
    if "mosaic_tiles" in target:
        tiles = target["mosaic_tiles"].clone()
        visible = tiles[:, 2] > tiles[:, 0]
        width = image.shape[-1]
        tiles[visible, 0], tiles[visible, 2] = width - tiles[visible, 2], width - tiles[visible, 0]
        target["mosaic_tiles"] = tiles
    return image, target


def color_jitter(image: torch.Tensor, params: Mapping[str, float], rng: np.random.Generator) -> torch.Tensor:
    """torchvision's ColorJitter (random order of brightness, contrast, saturation, hue) with factors drawn from
    ``rng`` instead of torch's global generator; a strength of 0 skips that operation."""
    if not any(params.values()):
        return image
    for name in (JITTER_KEYS[i] for i in rng.permutation(len(JITTER_KEYS))):
        strength = params[name]
        if strength == 0:
            continue
        if name == "hue":
            image = TF.adjust_hue(image, float(rng.uniform(-strength, strength)))
        else:
            factor = float(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))
            adjust = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
                      "saturation": TF.adjust_saturation}[name]
            image = adjust(image, factor)
    return image.clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------------------------- validation


def _checked_sample(sample: Sample, index: int) -> Sample:
    image, target = sample
    if not (isinstance(image, torch.Tensor) and image.ndim == 3 and image.is_floating_point()):
        raise TypeError(f"dataset[{index}]: expected a float image tensor [C,H,W] in [0, 1], got "
                        f"{type(image).__name__}; wrap a dataset whose transforms keep float images")
    if "masks" in target and tuple(target["masks"].shape[-2:]) != tuple(image.shape[-2:]):
        raise ValueError(f"dataset[{index}] (image id {target.get('image_id')}): masks are "
                         f"{tuple(target['masks'].shape[-2:])} but the image is {tuple(image.shape[-2:])}; "
                         "wrap the dataset without resizing transforms")
    return image, target


def _check_unit(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def _check_range(
    name: str, values: Sequence[float], low: float, high: float, open_low: bool = False
) -> tuple[float, float]:
    pair = tuple(float(v) for v in values)
    valid = len(pair) == 2 and pair[0] <= pair[1] <= high and (pair[0] > low if open_low else pair[0] >= low)
    if not valid:
        bound = "(" if open_low else "["
        raise ValueError(f"{name} must be a (lo, hi) pair with lo <= hi inside {bound}{low}, {high}], got {values}")
    return pair  # type: ignore[return-value]


def _output_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(v) for v in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"output_size must be a positive int or (height, width), got {size}")
    return pair  # type: ignore[return-value]


def _check_jitter(params: Mapping[str, float]) -> dict[str, float]:
    reject_unknown_keys("color_jitter", params, JITTER_KEYS)
    checked = {key: float(params.get(key, 0.0)) for key in JITTER_KEYS}
    if min(checked.values()) < 0 or checked["hue"] > 0.5:
        raise ValueError(f"color_jitter strengths must be >= 0 (hue <= 0.5), got {dict(params)}")
    return checked
