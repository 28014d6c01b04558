"""Draw instances (masks, boxes, class names, scores) on images: LVIS results or ground truth, one image per file
(``predict`` on new images) or several models side by side next to the ground truth (the prediction viewer)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from longtail_seg.data.masks import decode_segmentation  # noqa: E402
from longtail_seg.io_utils import atomic_path  # noqa: E402

MASK_ALPHA = 0.3  # light enough that the object's own colour (often part of its class) still shows
LABEL_FONTSIZE = 8
MIN_DRAWN_SIDE = 480  # small images are drawn enlarged to at least this many pixels, so labels stay readable
DPI = 100
MAX_DRAWN = 30  # at most this many instances per image (highest scores first): more only hides the image


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as a float32 [H, W, 3] array in [0, 1]."""
    with Image.open(path) as pil:
        return np.asarray(pil.convert("RGB"), dtype=np.float32) / 255.0


def instance_colours(count: int) -> np.ndarray:
    """``count`` distinct RGB colours (tab20, cycled)."""
    return plt.get_cmap("tab20")(np.arange(count) % 20)[:, :3]


def draw_instances(
    ax: plt.Axes,
    rgb: np.ndarray,
    boxes_xyxy: Sequence[Sequence[float]],
    masks: Sequence[np.ndarray | None],
    texts: Sequence[str],
    fontsize: float = LABEL_FONTSIZE,
) -> None:
    """Image with coloured mask overlays, boxes in the same colours and a text label at each box's top-left."""
    rgb = np.array(rgb, dtype=np.float32, copy=True)
    colours = instance_colours(len(texts))
    for mask, colour in zip(masks, colours):
        if mask is not None:
            rgb[mask] = (1 - MASK_ALPHA) * rgb[mask] + MASK_ALPHA * colour
    for mask, colour in zip(masks, colours):  # the outline keeps the mask's extent visible on any background
        if mask is not None:
            rgb[mask_outline(mask)] = colour
    ax.imshow(rgb, interpolation="nearest")
    height = rgb.shape[0]
    renderer = ax.figure.canvas.get_renderer()
    placed: list = []  # the labels drawn so far, in display pixels
    for (x1, y1, x2, y2), text, colour in zip(boxes_xyxy, texts, colours):
        # pixel-edge boxes: pixel i spans [i - 0.5, i + 0.5] in imshow's coordinates
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.2))
        above = y1 > 0.06 * height  # a label above a box at the top edge would leave the image: put it inside
        label = ax.text(x1 - 0.5, y1 - 0.5, text, color="white", fontsize=fontsize, va="bottom" if above else "top",
                        clip_on=True, bbox={"facecolor": colour, "alpha": 0.85, "pad": 0.6, "linewidth": 0})
        placed.append(_unoverlapped(ax, label, placed, renderer))
    ax.set_xticks([])
    ax.set_yticks([])


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of a boolean [H, W] mask with a 4-neighbour outside it (the image border counts as outside).
    Painted into the image instead of a matplotlib contour, whose paths of full-size masks took gigabytes for a
    grid of COCO-sized mosaics."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    return mask & ~inner


def _unoverlapped(ax: plt.Axes, label: Any, placed: list, renderer: Any, tries: int = 12) -> Any:
    """Shift ``label`` left into the image if it runs past the right edge, then down one line at a time until it
    overlaps no label in ``placed`` (display extents); returns its final extent. Labels are placed highest score
    first, so the best detection keeps its place."""
    extent = label.get_window_extent(renderer)
    overhang = extent.x1 - ax.get_window_extent(renderer).x1
    if overhang > 0:  # past the image's right edge: shift left, so the whole name shows
        (left, _), (right, _) = ax.transData.inverted().transform([(extent.x0, 0), (extent.x0 + overhang, 0)])
        x, y = label.get_position()
        label.set_position((x - abs(right - left), y))
        extent = label.get_window_extent(renderer)
    for _ in range(tries):
        if not any(extent.overlaps(other) for other in placed):
            break
        (_, top), (_, bottom) = ax.transData.inverted().transform([(extent.x0, extent.y1), (extent.x0, extent.y0)])
        x, y = label.get_position()
        label.set_position((x, y + abs(bottom - top) * 1.1))  # image rows grow downwards
        extent = label.get_window_extent(renderer)
    return extent


def draw_records(
    ax: plt.Axes,
    rgb: np.ndarray,
    records: Sequence[Mapping],
    category_names: Mapping[int, str],
    score_threshold: float = 0.0,
    title: str | None = None,
    max_drawn: int = MAX_DRAWN,
) -> int:
    """Draw LVIS result dicts (with ``score``) or ground-truth annotations (without) of one image: those with score
    >= ``score_threshold``, highest first, at most ``max_drawn``. Returns how many were drawn."""
    kept = [r for r in records if r.get("score", 1.0) >= score_threshold]
    kept.sort(key=lambda r: -r.get("score", 1.0))
    kept = kept[:max_drawn]
    height, width = rgb.shape[:2]
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in kept)]
    masks = [decode_segmentation(r["segmentation"], height, width).astype(bool) if r.get("segmentation") else None
             for r in kept]
    texts = [_record_text(r, category_names) for r in kept]
    draw_instances(ax, rgb, boxes, masks, texts)
    if title is not None:
        ax.set_title(title, fontsize=9)
    return len(kept)


def _record_text(record: Mapping, names: Mapping[int, str]) -> str:
    name = names.get(record["category_id"], str(record["category_id"]))
    return f"{name} {record['score']:.2f}" if "score" in record else name


def _panel_inches(height: int, width: int) -> tuple[float, float]:
    """Figure inches of one panel: the image's own pixels, enlarged so its longer side is >= MIN_DRAWN_SIDE."""
    scale = max(1.0, MIN_DRAWN_SIDE / max(height, width, 1))
    return width * scale / DPI, height * scale / DPI


def save_drawn_image(
    rgb: np.ndarray,
    records: Sequence[Mapping],
    category_names: Mapping[int, str],
    path: str | os.PathLike,
    score_threshold: float = 0.0,
) -> int:
    """One image with its instances drawn, written atomically as PNG; returns how many were drawn."""
    panel_w, panel_h = _panel_inches(*rgb.shape[:2])
    fig = plt.figure(figsize=(panel_w, panel_h), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    drawn = draw_records(ax, rgb, records, category_names, score_threshold)
    _save(fig, path)
    return drawn


def save_comparison(
    rows: Sequence[tuple[str, np.ndarray, Sequence[tuple[str, Sequence[Mapping]]]]],
    category_names: Mapping[int, str],
    path: str | os.PathLike,
    score_threshold: float = 0.0,
) -> None:
    """A grid, one row per image: ``(row title, rgb, [(panel title, records), ...])``; panels whose records carry
    scores are drawn at >= ``score_threshold`` (ground truth always in full). Written atomically as PNG."""
    if not rows:
        raise ValueError("save_comparison needs at least one image")
    columns = max(len(panels) for _, _, panels in rows)
    panel_w, panel_h = _panel_inches(*rows[0][1].shape[:2])
    title_h, margin = 0.35, 0.05  # inches: a title above each panel, a margin around the grid
    fig_w, fig_h = panel_w * columns + 2 * margin, (panel_h + title_h) * len(rows) + margin
    fig, axes = plt.subplots(len(rows), columns, figsize=(fig_w, fig_h), squeeze=False, dpi=DPI)
    # a fixed layout before drawing, so labels are placed (and kept apart) at their final size
    fig.subplots_adjust(left=margin / fig_w, right=1 - margin / fig_w, bottom=margin / fig_h,
                        top=1 - title_h / fig_h, wspace=0.02 * columns, hspace=title_h / panel_h)
    for ax in axes.flat:
        ax.axis("off")
    for axes_row, (row_title, rgb, panels) in zip(axes, rows):
        for ax, (panel_title, records) in zip(axes_row, panels):
            ax.axis("on")
            drawn = draw_records(ax, rgb, records, category_names, score_threshold)
            ax.set_title(f"{row_title}: {panel_title} ({drawn})", fontsize=9)
    _save(fig, path)


def _save(fig: plt.Figure, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
