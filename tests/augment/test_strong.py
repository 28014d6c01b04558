"""Strong augmentation of pseudo-labelled images: photometric only (targets untouched), each part switchable,
cutout greys whole squares of the configured size, and bad settings fail with the key name."""

from __future__ import annotations

import pytest
import torch

from longtail_seg.augment.strong import StrongAugment, StrongAugmentConfig, cutout

OFF = {"blur_prob": 0.0, "jitter_prob": 0.0, "cutout_prob": 0.0}


def _sample(size: int = 48):
    torch.manual_seed(0)
    image = torch.rand(3, size, size)
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 5:20, 5:20] = 1
    masks[1, 30:40, 10:44] = 1
    target = {"boxes": torch.tensor([[5.0, 5.0, 20.0, 20.0], [10.0, 30.0, 44.0, 40.0]]),
              "labels": torch.tensor([1, 2]), "masks": masks, "image_id": 7}
    return image, target


def test_everything_off_is_the_identity():
    image, target = _sample()
    out, out_target = StrongAugment(OFF)(image.clone(), target)
    assert torch.equal(out, image)
    assert out_target is target


@pytest.mark.parametrize("part", ["blur_prob", "jitter_prob", "cutout_prob"])
def test_each_part_changes_pixels_but_not_the_targets(part):
    image, target = _sample()
    boxes, masks = target["boxes"].clone(), target["masks"].clone()
    torch.manual_seed(1)
    out, out_target = StrongAugment({**OFF, part: 1.0})(image.clone(), target)
    assert out.shape == image.shape
    assert not torch.equal(out, image)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert torch.equal(out_target["boxes"], boxes) and torch.equal(out_target["masks"], masks)


def test_blur_lowers_pixel_variation():
    image, target = _sample()
    torch.manual_seed(2)
    blurred, _ = StrongAugment({**OFF, "blur_prob": 1.0, "blur_sigma": [1.0, 1.0]})(image.clone(), target)
    assert blurred.diff(dim=-1).abs().mean() < 0.5 * image.diff(dim=-1).abs().mean()


def test_cutout_greys_squares_of_the_configured_side():
    image = torch.zeros(3, 40, 40)
    torch.manual_seed(3)
    out = cutout(image, holes=(1, 1), size=(0.25, 0.25), fill=0.5)
    grey = (out == 0.5).all(dim=0)
    assert int(grey.sum()) == 100  # one 10 x 10 square
    rows, cols = torch.nonzero(grey, as_tuple=True)
    assert int(rows.max() - rows.min()) == 9 and int(cols.max() - cols.min()) == 9
    assert torch.equal(image, torch.zeros(3, 40, 40))  # the input is not modified in place


def test_same_torch_seed_same_result():
    image, target = _sample()
    augment = StrongAugment({"blur_prob": 0.5, "jitter_prob": 0.5, "cutout_prob": 0.5})
    torch.manual_seed(5)
    first, _ = augment(image.clone(), target)
    torch.manual_seed(5)
    second, _ = augment(image.clone(), target)
    assert torch.equal(first, second)


@pytest.mark.parametrize("bad, key", [({"blur_prob": 2.0}, "blur_prob"), ({"cutout_size": [0.3, 0.1]}, "cutout_size"),
                                      ({"sharpen": 1}, "sharpen"), ({"color_jitter": {"gamma": 1}}, "gamma")])
def test_bad_settings_name_the_key(bad, key):
    with pytest.raises(ValueError, match=key):
        StrongAugmentConfig.from_dict(bad)
