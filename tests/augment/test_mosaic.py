"""Balanced mosaic: exact mask/box geometry, no leaks across tiles, partner frequencies, flip, dropping, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from longtail_seg.augment.mosaic import BalancedMosaic, Tile, Window, place_instances
from longtail_seg.augment.visualize import save_augmented_grid
from longtail_seg.data.lvis_io import DatasetError

NO_JITTER = {"brightness": 0.0}
WHITE = 1.0
# Sizes (H, W) of the synthetic source images: non-square so that every resize has its own ratios.
SIZES = [(64, 80), (72, 56), (60, 60), (90, 70), (50, 84), (66, 66)]


class InMemoryDataset(torch.utils.data.Dataset):
    """LVISDetectionDataset-like list of samples (image float [3,H,W], target with boxes/labels/masks)."""

    def __init__(self, samples: list, image_ids: list[int]) -> None:
        self.samples = samples
        self.image_ids = image_ids

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return self.samples[index]


def rectangle_mask(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def ellipse_mask(height: int, width: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return ((((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2) <= 1).astype(np.uint8)


def tight_box(mask: np.ndarray) -> list[float]:
    """Reference tight box, pixel edges: x2 = last column + 1."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def make_sample(image_id: int, size: tuple[int, int], labels: list[int], rng: np.random.Generator,
                with_masks: bool = True):
    """Image of a distinct colour per image, objects (rectangles and ellipses) painted white."""
    height, width = size
    masks = []
    for k in range(len(labels)):
        w, h = int(rng.integers(8, width // 2)), int(rng.integers(8, height // 2))
        x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        if k % 2 == 0:
            masks.append(rectangle_mask(height, width, x0, y0, x0 + w, y0 + h))
        else:
            masks.append(ellipse_mask(height, width, x0 + w / 2, y0 + h / 2, w / 2, h / 2))
    image = colour_of(image_id)[:, None, None].repeat(1, height, width)
    stacked = np.stack(masks)
    image[:, torch.from_numpy(stacked.any(0))] = WHITE
    target = {
        "boxes": torch.tensor([tight_box(m) for m in stacked], dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "image_id": image_id,
        "orig_size": (height, width),
    }
    if with_masks:
        target["masks"] = torch.from_numpy(stacked)
    return image, target


# Background colours: none is a mix of another with white, or with the canvas grey.
COLOURS = [(0.8, 0.1, 0.1), (0.1, 0.8, 0.1), (0.1, 0.1, 0.8), (0.8, 0.8, 0.1), (0.8, 0.1, 0.8), (0.1, 0.8, 0.8)]


def colour_of(image_id: int) -> torch.Tensor:
    return torch.tensor(COLOURS[image_id % len(COLOURS)])


def make_dataset(with_masks: bool = True, sizes=SIZES) -> InMemoryDataset:
    """Image ``k`` (id 100 + k) holds labels 10k+1..10k+3 only, so every label names its source image."""
    rng = np.random.default_rng(7)
    image_ids = [100 + k for k in range(len(sizes))]
    samples = [make_sample(image_id, size, [10 * k + 1, 10 * k + 2, 10 * k + 3], rng, with_masks)
               for k, (image_id, size) in enumerate(zip(image_ids, sizes))]
    return InMemoryDataset(samples, image_ids)


def source_image_id(label: int) -> int:
    return 100 + (label - 1) // 10


def outputs(mosaic: BalancedMosaic, epochs=(0, 1), indices=None):
    for epoch in epochs:
        mosaic.set_epoch(epoch)
        for index in indices if indices is not None else range(len(mosaic)):
            yield mosaic[index]


def test_boxes_are_tight_boxes_of_binary_nonempty_masks():
    dataset = make_dataset()
    mosaic = BalancedMosaic(dataset, np.ones(len(dataset)), output_size=(80, 96), crop_range=(0.6, 1.4),
                            min_visible_area=6, seed=3)
    seen = 0
    for image, target in outputs(mosaic, epochs=range(4)):
        masks = target["masks"].numpy()
        assert image.shape == (3, 80, 96) and image.dtype == torch.float32
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert masks.dtype == np.uint8 and masks.shape[1:] == (80, 96)
        assert len(masks) == len(target["boxes"]) == len(target["labels"])
        assert set(np.unique(masks)) <= {0, 1}
        assert np.all(masks.reshape(len(masks), -1).sum(1) >= 6)
        for mask, box in zip(masks, target["boxes"].tolist()):
            assert box == tight_box(mask)
        allowed = {label for i in target["mosaic_image_ids"] for label in dataset[i - 100][1]["labels"].tolist()}
        assert set(target["labels"].tolist()) <= allowed
        assert len(target["mosaic_image_ids"]) == 4 and target["image_id"] == target["mosaic_image_ids"][0]
        seen += len(masks)
    assert seen > 100  # the geometry was exercised on many instances


def test_instances_stay_inside_their_source_tile_and_on_their_pixels():
    dataset = make_dataset()
    mosaic = BalancedMosaic(dataset, np.ones(len(dataset)), output_size=96, crop_range=(0.7, 1.3),
                            color_jitter=NO_JITTER, min_visible_area=30, seed=5)
    checked = 0
    for image, target in outputs(mosaic, epochs=range(3)):
        tiles = target["mosaic_tiles"]
        ids = target["mosaic_image_ids"]
        for mask, label in zip(target["masks"], target["labels"].tolist()):
            tile = ids.index(source_image_id(label))  # partners can repeat; the first copy of the image is enough
            candidates = [k for k, i in enumerate(ids) if i == ids[tile]]
            inside = [_outside_region(mask, tiles[k]) == 0 for k in candidates]
            assert any(inside), f"label {label} leaks outside the tiles of image {ids[tile]}"
            # the mask sits on the white object pixels (backgrounds have a 0.1 channel; resizes blur the edges)
            assert image.min(dim=0).values[mask.bool()].mean() > 0.75
            checked += 1
        for k, image_id in enumerate(ids):
            _assert_tile_shows_image(image, target, k, image_id)
    assert checked > 50


def _outside_region(mask: torch.Tensor, region: torch.Tensor) -> int:
    x0, y0, x1, y1 = region.tolist()
    inside = torch.zeros_like(mask, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    return int(mask.bool()[~inside].sum())


def _assert_tile_shows_image(image: torch.Tensor, target: dict, k: int, image_id: int) -> None:
    """Inside tile k's region (2 px from its border), every pixel mixes the image's colour with white (its objects,
    blurred at their edges by the resizes) and nothing else: no other image and no canvas grey."""
    x0, y0, x1, y1 = target["mosaic_tiles"][k].tolist()
    if x1 - x0 <= 4 or y1 - y0 <= 4:
        return
    pixels = image[:, y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].reshape(3, -1).T
    colour = colour_of(image_id)
    direction = torch.ones(3) - colour
    weight = (pixels - colour) @ direction / direction.dot(direction)
    residual = (pixels - colour - weight[:, None] * direction).abs().amax(1)
    assert residual.max() < 0.02, f"tile {k} shows something other than image {image_id}"
    assert weight.min() > -0.02 and weight.max() < 1.02


def test_partner_frequencies_follow_sampling_probabilities():
    weights = np.array([40.0, 25.0, 15.0, 10.0, 7.0, 3.0])  # unnormalised: the mosaic normalises
    dataset = make_dataset()
    mosaic = BalancedMosaic(dataset, weights, seed=11)
    counts = np.zeros(len(weights))
    draws = 0
    for epoch in range(500):
        mosaic.set_epoch(epoch)
        for index in range(len(dataset)):
            np.add.at(counts, mosaic.partner_indices(index), 1)
            draws += 3
    expected = draws * weights / weights.sum()
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 20.52  # chi-square, 5 degrees of freedom, p = 0.001
    # the samples use exactly these partners
    mosaic.set_epoch(3)
    partners = mosaic.partner_indices(2)
    _, target = mosaic[2]
    assert target["mosaic_image_ids"] == [102, *(100 + int(p) for p in partners)]


@pytest.mark.parametrize("zoom, side", [(1.0, 5), (0.5, 10)])
def test_objects_end_up_at_scale_over_zoom(zoom: float, side: int):
    """Hand-computed: 40x40 images with a 10x10 square; scale 0.5 gives 20x20 tiles on a 40x40 canvas (squares 5x5),
    a crop zoom of 0.5 takes a 20x20 window and doubles it to the 40x40 output (squares 10x10)."""
    square = rectangle_mask(40, 40, 15, 15, 25, 25)
    samples = [(torch.full((3, 40, 40), 0.5), {"boxes": torch.tensor([[15.0, 15.0, 25.0, 25.0]]),
                "labels": torch.tensor([k + 1]), "masks": torch.from_numpy(square[None]), "image_id": k})
               for k in range(4)]
    mosaic = BalancedMosaic(InMemoryDataset(samples, [0, 1, 2, 3]), np.ones(4), scale_range=(0.5, 0.5),
                            crop_range=(zoom, zoom), min_visible_area=1, output_size=40)
    sides = []
    for image, target in outputs(mosaic, epochs=range(5)):
        assert image.shape == (3, 40, 40)
        boxes = target["boxes"]
        sides += torch.cat([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]]).tolist()
    assert max(sides) == side and sides.count(side) > len(sides) // 4


def test_flip_maps_image_masks_boxes_and_tiles_consistently():
    dataset = make_dataset()
    kwargs = dict(output_size=(72, 88), seed=2)
    plain = BalancedMosaic(dataset, np.ones(len(dataset)), flip_prob=0.0, **kwargs)
    flipped = BalancedMosaic(dataset, np.ones(len(dataset)), flip_prob=1.0, **kwargs)
    for index in range(len(dataset)):
        (image, target), (image_f, target_f) = plain[index], flipped[index]
        width = image.shape[-1]
        assert torch.allclose(image_f, image.flip(-1), atol=1e-5)
        assert torch.equal(target_f["masks"], target["masks"].flip(-1))
        boxes = target["boxes"]
        expected = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        assert torch.equal(target_f["boxes"], expected)
        for mask, box in zip(target_f["masks"].numpy(), target_f["boxes"].tolist()):
            assert box == tight_box(mask)
        for region, region_f in zip(target["mosaic_tiles"].tolist(), target_f["mosaic_tiles"].tolist()):
            if region[2] > region[0]:
                assert region_f == [width - region[2], region[1], width - region[0], region[3]]


def test_place_instances_drops_instances_cropped_below_min_visible_area():
    """Hand-computed: a 10x10 square at the top-left of a 20x20 image, window starting at x=8 keeps 2x10 pixels."""
    masks = torch.from_numpy(np.stack([rectangle_mask(20, 20, 0, 0, 10, 10), rectangle_mask(20, 20, 12, 5, 18, 15)]))
    target = {"boxes": torch.zeros((2, 4)), "labels": torch.tensor([1, 2]), "masks": masks}
    tile = Tile((20, 20), (20, 20), (0, 0, 20, 20), (0, 0))
    window = Window(x0=8, y0=0, width=12, height=20)
    kept = place_instances(target, tile, window, (20, 12), min_area=20, min_box_size=1)
    assert kept["labels"].tolist() == [1, 2]
    assert kept["boxes"].tolist() == [[0.0, 0.0, 2.0, 10.0], [4.0, 5.0, 10.0, 15.0]]
    assert kept["area"].tolist() == [20.0, 60.0]
    dropped = place_instances(target, tile, window, (20, 12), min_area=21, min_box_size=1)
    assert dropped["labels"].tolist() == [2]
    thin = place_instances(target, tile, window, (20, 12), min_area=1, min_box_size=3)
    assert thin["labels"].tolist() == [2]


def test_mosaic_drops_small_instances_end_to_end():
    """An object of 9 pixels in a pass-through sample is dropped at min_visible_area=10 and kept at 9."""
    rng = np.random.default_rng(0)
    image, target = make_sample(100, (40, 40), [1], rng)
    small = torch.from_numpy(rectangle_mask(40, 40, 30, 30, 33, 33))[None]
    target["masks"] = torch.cat([target["masks"], small])
    target["labels"] = torch.tensor([1, 2])
    dataset = InMemoryDataset([(image, target)], [100])
    common = dict(prob=0.0, crop_range=(1.0, 1.0), flip_prob=0.0, color_jitter=NO_JITTER)
    assert BalancedMosaic(dataset, [1.0], min_visible_area=10, **common)[0][1]["labels"].tolist() == [1]
    assert BalancedMosaic(dataset, [1.0], min_visible_area=9, **common)[0][1]["labels"].tolist() == [1, 2]


def test_crowd_flags_follow_their_instances_and_default_to_false_for_sources_without_them():
    dataset = make_dataset()
    for k in (1, 3):  # two sources carry ignore regions: their third instance is a crowd
        dataset.samples[k][1]["iscrowd"] = torch.tensor([False, False, True])
    mosaic = BalancedMosaic(dataset, np.ones(len(dataset)), output_size=(160, 160), seed=3)
    saw_crowd = saw_mixed = False
    for _, target in outputs(mosaic):
        assert "iscrowd" in target or not any(k in (101, 103) for k in target["mosaic_image_ids"])
        if "iscrowd" not in target:
            continue
        assert target["iscrowd"].dtype == torch.bool and len(target["iscrowd"]) == len(target["labels"])
        for label, crowd in zip(target["labels"].tolist(), target["iscrowd"].tolist()):
            k = (label - 1) // 10
            assert crowd == (k in (1, 3) and label % 10 == 3)
        saw_crowd |= bool(target["iscrowd"].any())
        saw_mixed |= any(source_image_id(label) not in (101, 103) for label in target["labels"].tolist())
    assert saw_crowd and saw_mixed


def test_prob_zero_passes_the_base_sample_through_post_transforms():
    dataset = make_dataset()
    identity = BalancedMosaic(dataset, np.ones(len(dataset)), prob=0.0, crop_range=(1.0, 1.0), flip_prob=0.0,
                              color_jitter=NO_JITTER, min_visible_area=1)
    for index in range(len(dataset)):
        (image, target), (base_image, base) = identity[index], dataset[index]
        assert torch.equal(image, base_image)
        assert torch.equal(target["masks"], base["masks"]) and torch.equal(target["labels"], base["labels"])
        assert torch.equal(target["boxes"], base["boxes"])
        assert target["mosaic_image_ids"] == [base["image_id"]] and target["orig_size"] == base["orig_size"]
    flipped = BalancedMosaic(dataset, np.ones(len(dataset)), prob=0.0, crop_range=(1.0, 1.0), flip_prob=1.0,
                             color_jitter=NO_JITTER, min_visible_area=1)
    image, target = flipped[0]
    assert torch.equal(image, dataset[0][0].flip(-1)) and torch.equal(target["masks"], dataset[0][1]["masks"].flip(-1))
    cropped = BalancedMosaic(dataset, np.ones(len(dataset)), prob=0.0, crop_range=(0.5, 0.8), output_size=32)
    for image, target in outputs(cropped, epochs=(0,)):
        assert image.shape == (3, 32, 32) and len(target["mosaic_image_ids"]) == 1
        for mask, box in zip(target["masks"].numpy(), target["boxes"].tolist()):
            assert box == tight_box(mask)


def test_same_seed_epoch_index_gives_identical_output_and_epochs_differ():
    dataset = make_dataset()
    first = BalancedMosaic(dataset, np.ones(len(dataset)), output_size=64, seed=9)
    second = BalancedMosaic(dataset, np.ones(len(dataset)), output_size=64, seed=9)  # e.g. another worker
    for mosaic in (first, second):
        mosaic.set_epoch(4)
    torch.manual_seed(0)
    image_a, target_a = first[3]
    torch.manual_seed(1)  # torch's global RNG plays no part
    image_b, target_b = second[3]
    assert torch.equal(image_a, image_b)
    for key in ("boxes", "labels", "masks", "mosaic_tiles"):
        assert torch.equal(target_a[key], target_b[key])
    assert target_a["mosaic_image_ids"] == target_b["mosaic_image_ids"]
    second.set_epoch(5)
    image_c, _ = second[3]
    assert not torch.equal(image_a, image_c)


def test_without_masks_boxes_follow_the_same_geometry():
    """Mask-free datasets: mapped, clipped boxes agree with the tight boxes of the masked run to within a pixel."""
    kwargs = dict(output_size=80, seed=4, min_visible_area=40, min_box_size=4)
    with_masks = BalancedMosaic(make_dataset(), np.ones(len(SIZES)), **kwargs)
    without = BalancedMosaic(make_dataset(with_masks=False), np.ones(len(SIZES)), **kwargs)
    compared = 0
    for (_, masked), (_, boxed) in zip(outputs(with_masks), outputs(without)):
        assert "masks" not in boxed
        common = set(masked["labels"].tolist()) & set(boxed["labels"].tolist())
        for label in common:
            if masked["labels"].tolist().count(label) == 1 and boxed["labels"].tolist().count(label) == 1:
                a = masked["boxes"][masked["labels"] == label][0]
                b = boxed["boxes"][boxed["labels"] == label][0]
                assert torch.allclose(a, b, atol=1.5), (a, b)
                compared += 1
    assert compared > 20


def test_from_stats_csv_aligns_to_dataset_order_and_names_missing_ids(tmp_path: Path):
    dataset = make_dataset()
    factors = {100: 1.0, 101: 2.0, 102: 3.0, 103: 4.0, 104: 5.0, 105: 5.0, 999: 50.0}  # 999: not in the dataset
    table = pd.DataFrame({"image_id": list(factors)[::-1], "repeat_factor": list(factors.values())[::-1]})
    table["sampling_prob"] = table["repeat_factor"] / table["repeat_factor"].sum()
    csv = tmp_path / "image_repeat_factors.csv"
    table.to_csv(csv, index=False)
    mosaic = BalancedMosaic.from_stats_csv(dataset, csv, output_size=32)
    assert np.allclose(mosaic.sampling_prob, np.array([1, 2, 3, 4, 5, 5]) / 20)
    table[table["image_id"] != 103].to_csv(csv, index=False)
    with pytest.raises(DatasetError, match=r"image_repeat_factors\.csv.*image id 103"):
        BalancedMosaic.from_stats_csv(dataset, csv)


def test_bad_arguments_are_rejected_with_clear_errors():
    dataset = make_dataset()
    with pytest.raises(ValueError, match="6 images"):
        BalancedMosaic(dataset, [1.0, 2.0])
    with pytest.raises(ValueError, match="crop_range"):
        BalancedMosaic(dataset, np.ones(6), crop_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="unknown key"):
        BalancedMosaic(dataset, np.ones(6), color_jitter={"blur": 1.0})


def test_save_augmented_grid_writes_a_png(tmp_path: Path):
    dataset = make_dataset()
    mosaic = BalancedMosaic(dataset, np.ones(len(dataset)), output_size=64)
    path = tmp_path / "grid" / "samples.png"
    save_augmented_grid(mosaic, path, num=4, category_names={1: "one"})
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] > 100
    samples = [mosaic[i] for i in range(3)]
    save_augmented_grid(samples, tmp_path / "list.png", num=16, category_names=[f"c{i}" for i in range(60)])
    assert (tmp_path / "list.png").stat().st_size > 1000
    assert not list(tmp_path.glob("**/*.tmp*"))
