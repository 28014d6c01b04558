"""Box-crop RLE encoding: exactly the RLEs of torchvision's paste_masks_in_image + threshold + pycocotools encode,
on random and hand-made boxes (borders, outside the image, zero and tiny sizes, 1 x N images, 2400 px)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import expand_boxes, paste_masks_in_image

from longtail_seg.inference.mask_rle import encode_box_masks


def reference_counts(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                     threshold: float = 0.5) -> list[str]:
    """Paste every mask into the full image with torchvision, threshold, encode with pycocotools. torchvision cannot
    paste a box that lies wholly outside the image (its slices go negative), so those masks are empty by definition."""
    height, width = image_size
    x0, y0, x1, y1 = expand_boxes(boxes, (masks.shape[-1] + 2) / masks.shape[-1]).to(torch.int64).unbind(1)
    outside = (x1 + 1 <= 0) | (y1 + 1 <= 0) | (x0 >= width) | (y0 >= height)
    full = torch.zeros((len(boxes), height, width), dtype=torch.bool)
    inside = torch.nonzero(~outside).flatten()
    if len(inside):
        full[inside] = paste_masks_in_image(masks[inside], boxes[inside], (height, width), padding=1)[:, 0] >= threshold
    stack = np.asfortranarray(full.permute(1, 2, 0).numpy().astype(np.uint8))
    return [rle["counts"].decode("ascii") for rle in mask_utils.encode(stack)] if len(boxes) else []


def counts(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], threshold: float = 0.5) -> list:
    rles = encode_box_masks(masks, boxes, image_size, threshold)
    assert all(rle["size"] == list(image_size) for rle in rles)
    return [rle["counts"] for rle in rles]


def random_boxes(gen: torch.Generator, num: int, height: int, width: int) -> torch.Tensor:
    """Boxes of every kind: inside, across the borders, partly and wholly outside, zero-width / -height, tiny."""
    centre = torch.rand(num, 2, generator=gen) * torch.tensor([1.6 * width, 1.6 * height]) - torch.tensor(
        [0.3 * width, 0.3 * height])
    size = torch.rand(num, 2, generator=gen) ** 2 * torch.tensor([width, height]) * 1.2
    size[0::7, 0] = 0  # zero width
    size[3::7, 1] = 0  # zero height
    size[5::7] = torch.rand(len(size[5::7]), 2, generator=gen) * 0.8  # under a pixel
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def random_masks(gen: torch.Generator, num: int, side: int = 28) -> torch.Tensor:
    """Mask probabilities: noisy, smooth blobs, all foreground, all background."""
    noisy = torch.rand(num, 1, side, side, generator=gen)
    coarse = torch.rand(num, 1, 4, 4, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    masks = torch.where(torch.arange(num)[:, None, None, None] % 2 == 0, noisy, smooth)
    masks[2::9] = 1.0
    masks[4::9] = 0.0
    return masks


@pytest.mark.parametrize("height, width", [(1, 37), (29, 1), (1, 1), (23, 41), (64, 48), (90, 2400), (2400, 40)])
def test_random_boxes_give_exactly_the_pasted_rles(height: int, width: int) -> None:
    gen = torch.Generator().manual_seed(height * 10007 + width)
    for _ in range(4):
        num = int(torch.randint(1, 40, (1,), generator=gen))
        boxes, masks = random_boxes(gen, num, height, width), random_masks(gen, num)
        expected = reference_counts(masks, boxes, (height, width))
        assert counts(masks, boxes, (height, width)) == expected
    assert any(c != f"{height * width}" for c in expected) or height * width == 1


def test_hand_made_boxes_at_the_edges() -> None:
    height, width = 30, 40
    boxes = torch.tensor([
        [0.0, 0.0, 40.0, 30.0],  # the whole image
        [0.0, 0.0, 0.0, 0.0],  # zero-size at the corner
        [39.9, 29.9, 40.0, 30.0],  # tiny at the far corner
        [-5.0, 3.0, 4.0, 9.0],  # across the left border
        [35.0, -2.0, 48.0, 12.0],  # across the top and right borders
        [-20.0, -20.0, -1.5, -1.5],  # wholly outside, up-left (torchvision cannot paste it)
        [41.0, 5.0, 60.0, 9.0],  # wholly outside, right
        [5.0, 31.0, 9.0, 45.0],  # wholly outside, below
        [10.0, 10.0, 10.0, 20.0],  # zero width
        [10.0, 12.0, 25.0, 12.0],  # zero height
        [-1000.0, -1000.0, 2400.0, 2400.0],  # far beyond the image on every side
    ])
    masks = torch.ones(len(boxes), 1, 28, 28)
    masks[3:5] = random_masks(torch.Generator().manual_seed(0), 2)
    result = counts(masks, boxes, (height, width))
    assert result == reference_counts(masks, boxes, (height, width))
    decoded = [mask_utils.decode({"size": [height, width], "counts": c.encode()}) for c in result]
    # a full mask over the whole image (its corners blend with the zero padding): runs spanning the columns
    assert decoded[0][1:-1].all() and decoded[0].sum() > 0.95 * height * width
    assert all(decoded[i].sum() == 0 for i in (5, 6, 7))
    all_foreground = mask_utils.encode(np.ones((height, width, 1), np.uint8, order="F"))[0]["counts"].decode()
    assert result[10] == all_foreground  # counts [0, H * W]: no trailing empty run


def test_runs_that_span_whole_columns_join_across_columns_and_masks() -> None:
    # Full-height crops of neighbouring masks: a run must neither leak into the next mask nor break at a column.
    height, width = 12, 20
    boxes = torch.tensor([[2.0, -3.0, 8.0, 15.0], [8.0, -3.0, 14.0, 15.0], [3.0, 0.0, 17.0, 12.0]])
    masks = torch.ones(3, 1, 14, 14)
    masks[1, :, :7] = 0.2  # top half below the threshold
    masks[2, :, :, 5] = 0.0  # a background column inside
    assert counts(masks, boxes, (height, width)) == reference_counts(masks, boxes, (height, width))


def test_threshold_is_inclusive_and_other_thresholds_match() -> None:
    gen = torch.Generator().manual_seed(5)
    boxes = random_boxes(gen, 30, 50, 60)
    masks = (random_masks(gen, 30) * 4).round() / 4  # many values exactly at 0.25, 0.5, 0.75
    for threshold in (0.25, 0.5, 0.75, 1.0):
        assert counts(masks, boxes, (50, 60), threshold) == reference_counts(masks, boxes, (50, 60), threshold)


def test_other_mask_sizes_and_float64() -> None:
    gen = torch.Generator().manual_seed(7)
    for side in (1, 2, 14):
        boxes, masks = random_boxes(gen, 20, 33, 27), random_masks(gen, 20, side)
        assert counts(masks, boxes, (33, 27)) == reference_counts(masks, boxes, (33, 27))
    boxes, masks = random_boxes(gen, 20, 33, 27).double(), random_masks(gen, 20).double()
    assert counts(masks, boxes, (33, 27)) == reference_counts(masks, boxes, (33, 27))


def test_no_detections_and_bad_input() -> None:
    assert encode_box_masks(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (10, 12)) == []
    with pytest.raises(ValueError, match="2 masks for 1 boxes"):
        encode_box_masks(torch.zeros(2, 1, 28, 28), torch.zeros(1, 4), (10, 12))
    with pytest.raises(ValueError, match="mask_threshold in \\(0, 1\\]"):
        encode_box_masks(torch.zeros(1, 1, 28, 28), torch.zeros(1, 4), (10, 12), threshold=0.0)
