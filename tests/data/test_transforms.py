"""Transforms keep boxes, masks and image consistent: boxes stay the masks' tight boxes after resize and flip."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longtail_seg.data.transforms import (
    RandomHorizontalFlip,
    RandomShortSideResize,
    build_test_transforms,
    build_train_transforms,
    resized_size,
)


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """xyxy boxes (x2/y2 exclusive pixel edges) enclosing each mask's foreground."""
    boxes = []
    for mask in masks:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


@st.composite
def samples(draw, min_object: int = 1):
    """A random image with 1-4 objects, each a union of two rectangles of side >= ``min_object``."""
    height = draw(st.integers(16, 80))
    width = draw(st.integers(16, 80))
    count = draw(st.integers(1, 4))
    masks = torch.zeros((count, height, width), dtype=torch.uint8)
    for mask in masks:
        for _ in range(2):
            h = draw(st.integers(min_object, height))
            w = draw(st.integers(min_object, width))
            y = draw(st.integers(0, height - h))
            x = draw(st.integers(0, width - w))
            mask[y : y + h, x : x + w] = 1
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    target = {"boxes": tight_boxes(masks), "labels": torch.arange(1, count + 1), "masks": masks, "image_id": 1}
    return image, target


@settings(max_examples=60, deadline=None)
@given(samples(min_object=8), st.integers(24, 48), st.integers(0, 24), st.integers(0, 2**31 - 1))
def test_resize_keeps_boxes_tight_within_one_pixel(sample, low, span, seed):
    image, target = sample
    torch.manual_seed(seed)
    new_image, new_target = RandomShortSideResize((low, low + span), max_size=96)(image, target)
    height, width = image.shape[-2:]
    new_height, new_width = new_image.shape[-2:]
    short_side, long_side = min(new_height, new_width), max(new_height, new_width)
    assert long_side <= 96
    assert low <= short_side <= low + span or long_side == 96  # short side drawn from the range unless capped
    assert abs(new_width / width - new_height / height) <= 0.5 / width + 0.5 / height + 1e-9  # aspect kept
    assert new_target["masks"].shape == (len(target["masks"]), new_height, new_width)
    assert new_target["masks"].dtype == torch.uint8 and set(new_target["masks"].unique().tolist()) <= {0, 1}
    assert (new_target["boxes"] - tight_boxes(new_target["masks"])).abs().max() <= 1.0
    assert torch.equal(new_target["labels"], target["labels"]) and new_target["image_id"] == 1
    assert new_image.dtype == torch.float32 and 0 <= new_image.min() and new_image.max() <= 1


@settings(max_examples=40, deadline=None)
@given(samples())
def test_flip_keeps_boxes_exactly_tight_and_is_an_involution(sample):
    image, target = sample
    flip = RandomHorizontalFlip(p=1.0)
    flipped_image, flipped = flip(image, target)
    assert torch.equal(flipped["boxes"], tight_boxes(flipped["masks"]))
    assert torch.equal(flipped_image[..., 0], image[..., -1])
    back_image, back = flip(flipped_image, flipped)
    assert torch.equal(back_image, image) and torch.equal(back["masks"], target["masks"])
    assert torch.equal(back["boxes"], target["boxes"])


def test_flip_probability_zero_and_rate():
    image, target = torch.rand(3, 4, 6), {"boxes": torch.tensor([[0.0, 0, 2, 2]])}
    assert RandomHorizontalFlip(p=0.0)(image, target)[1]["boxes"][0, 0] == 0
    torch.manual_seed(0)
    flips = sum(RandomHorizontalFlip(p=0.3)(image, target)[1]["boxes"][0, 0].item() == 4 for _ in range(2000))
    assert abs(flips / 2000 - 0.3) < 4 * (0.3 * 0.7 / 2000) ** 0.5


def test_train_transforms_are_deterministic_given_torch_seed_and_multiscale():
    transforms = build_train_transforms([32, 64], max_size=128, flip_prob=0.5)
    image = torch.rand(3, 40, 60)
    target = {"boxes": torch.tensor([[1.0, 2, 30, 20]]), "masks": torch.zeros(1, 40, 60, dtype=torch.uint8)}

    def run(seed):
        torch.manual_seed(seed)
        return [transforms(image, target) for _ in range(20)]

    first, again = run(3), run(3)
    for (a_img, a_tgt), (b_img, b_tgt) in zip(first, again):
        assert torch.equal(a_img, b_img) and torch.equal(a_tgt["boxes"], b_tgt["boxes"])
    short_sides = {min(img.shape[-2:]) for img, _ in first}
    assert len(short_sides) > 3 and min(short_sides) >= 32 and max(short_sides) <= 64


def test_test_transforms_resize_deterministically_and_cap_long_side():
    transforms = build_test_transforms(50, max_size=80)
    out, target = transforms(torch.rand(3, 20, 40), {"boxes": torch.tensor([[0.0, 0, 40, 20]]), "masks":
                                                     torch.ones(1, 20, 40, dtype=torch.uint8)})
    assert out.shape[-2:] == (40, 80)  # 50/20 would make the long side 100 > 80: capped at scale 2
    assert torch.equal(target["boxes"], torch.tensor([[0.0, 0, 80, 40]]))
    assert target["masks"].all()
    assert resized_size(100, 50, 25, 1000) == (50, 25)


def test_empty_targets_and_bad_arguments():
    image = torch.rand(3, 10, 20)
    target = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 10, 20, dtype=torch.uint8)}
    out, resized = RandomShortSideResize(20, 100)(image, target)
    assert out.shape == (3, 20, 40) and resized["boxes"].shape == (0, 4) and resized["masks"].shape == (0, 20, 40)
    _, flipped = RandomHorizontalFlip(1.0)(out, resized)
    assert flipped["boxes"].shape == (0, 4)
    with pytest.raises(ValueError):
        RandomShortSideResize((64, 32), 100)
    with pytest.raises(ValueError):
        RandomShortSideResize(64, 32)
    with pytest.raises(ValueError):
        RandomHorizontalFlip(1.5)


def test_short_side_covers_the_inclusive_range_uniformly():
    resize = RandomShortSideResize((30, 32), max_size=200)
    torch.manual_seed(0)
    draws = [min(resize(torch.rand(3, 10, 12), {})[0].shape[-2:]) for _ in range(300)]
    counts = [draws.count(size) for size in (30, 31, 32)]
    assert sum(counts) == 300
    assert all(abs(c - 100) < 4 * (300 * (1 / 3) * (2 / 3)) ** 0.5 for c in counts), counts
