"""Drawing instances: the mask outline painted into the image (hand-made masks) and a drawn image on disk."""

from __future__ import annotations

import numpy as np
from PIL import Image

from longtail_seg.visualize import instance_colours, mask_outline, save_drawn_image


def test_outline_of_a_square_is_its_ring() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:4, 1:4] = True
    expected = mask.copy()
    expected[2, 2] = False
    assert np.array_equal(mask_outline(mask), expected)


def test_outline_at_the_image_border_single_pixels_and_empty_masks() -> None:
    full = np.ones((4, 3), dtype=bool)  # the border counts as outside: the outline is the image's edge
    expected = full.copy()
    expected[1:3, 1] = False
    assert np.array_equal(mask_outline(full), expected)
    dot = np.zeros((3, 3), dtype=bool)
    dot[1, 1] = True
    assert np.array_equal(mask_outline(dot), dot)
    assert not mask_outline(np.zeros((2, 2), dtype=bool)).any()


def test_drawn_image_carries_the_outline_colour_at_its_size(tmp_path) -> None:
    """A 480 x 480 image with one square mask: the PNG has the image's size and the first colour on the ring."""
    rgb = np.zeros((480, 480, 3), dtype=np.float32)
    polygon = [[100.0, 100.0, 300.0, 100.0, 300.0, 300.0, 100.0, 300.0]]
    # the box is larger than the mask, so its edge (at x = 50) does not fall on the mask's outline (x = 100)
    record = {"category_id": 7, "bbox": [50.0, 50.0, 250.0, 250.0], "score": 0.9, "segmentation": polygon}
    path = tmp_path / "drawn.png"
    assert save_drawn_image(rgb, [record], {7: "cat"}, path) == 1
    drawn = np.asarray(Image.open(path).convert("RGB"))
    assert drawn.shape == (480, 480, 3)
    colour = np.round(instance_colours(1)[0] * 255)
    ring_row = drawn[200, 97:104]  # across the left edge of the mask, away from the label and the box
    assert np.any(np.abs(ring_row.astype(float) - colour).max(axis=1) <= 2)
