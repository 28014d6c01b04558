"""LVISDetectionDataset on a hand-made LVIS fixture: polygon, compressed and uncompressed RLE, crowd, empty image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from longtail_seg.data.dataset import LVISDetectionDataset, collate_detection
from longtail_seg.data.lvis_io import DatasetError
from longtail_seg.data.masks import encode_mask
from longtail_seg.sampling import UniformSampler

HEIGHT, WIDTH = 24, 32


def _blob_mask() -> np.ndarray:
    """An L-shaped mask: rows 4..11 x cols 6..9 plus rows 10..11 x cols 6..15 (tight box xyxy 6,4,16,12)."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[4:12, 6:10] = 1
    mask[10:12, 6:16] = 1
    return mask


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major run lengths starting with zeros), computed by hand."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [len(flat)]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [HEIGHT, WIDTH], "counts": counts}


@pytest.fixture()
def lvis_fixture(tmp_path):
    """Three images: 0 has a polygon + a compressed-RLE instance + a crowd; 1 is empty; 2 has an uncompressed RLE."""
    rng = np.random.default_rng(0)
    pixels = {}
    for image_id in (10, 20, 30):
        array = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        Image.fromarray(array).save(tmp_path / f"img{image_id}.png")
        pixels[image_id] = array
    blob = _blob_mask()
    second = np.zeros((HEIGHT, WIDTH), np.uint8)
    second[2:20, 20:31] = 1
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [2, 3, 10, 8], "iscrowd": 0,
         "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]]},  # rectangle polygon
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [6, 4, 10, 8], "iscrowd": 0,
         "segmentation": encode_mask(blob)},  # compressed RLE
        {"id": 3, "image_id": 10, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1,
         "segmentation": encode_mask(np.ones((HEIGHT, WIDTH), np.uint8))},
        {"id": 4, "image_id": 30, "category_id": 12, "bbox": [20, 2, 11, 18],
         "segmentation": _uncompressed_rle(second)},  # no iscrowd key: treated as 0
    ]
    data = {
        "images": [{"id": i, "file_name": f"img{i}.png", "height": HEIGHT, "width": WIDTH} for i in (10, 20, 30)],
        "categories": [{"id": 12, "name": "c"}, {"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
        "annotations": annotations,
    }
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    return path, tmp_path, pixels, {"blob": blob, "second": second}


def test_labels_are_contiguous_in_sorted_category_order(lvis_fixture):
    path, root, _, _ = lvis_fixture
    dataset = LVISDetectionDataset(path, root)
    assert dataset.category_ids == [3, 7, 12]
    assert dataset.num_classes == 3
    assert [dataset.label_of(c) for c in (3, 7, 12)] == [1, 2, 3]
    assert [dataset.category_of(label) for label in (1, 2, 3)] == [3, 7, 12]
    assert dataset.image_ids == [10, 20, 30] and len(dataset) == 3
    assert [dataset.image_category_ids(i) for i in range(3)] == [{3, 7}, set(), {12}]  # crowd ann not counted
    with pytest.raises(KeyError):
        dataset.category_of(0)


def test_image_is_float_chw_in_unit_range(lvis_fixture):
    path, root, pixels, _ = lvis_fixture
    image, target = LVISDetectionDataset(path, root)[0]
    assert image.dtype == torch.float32 and image.shape == (3, HEIGHT, WIDTH)
    expected = torch.from_numpy(pixels[10]).permute(2, 0, 1).float() / 255
    assert torch.allclose(image, expected, atol=1e-6)
    assert target["image_id"] == 10 and target["orig_size"] == (HEIGHT, WIDTH)


def test_polygon_and_compressed_rle_targets(lvis_fixture):
    path, root, _, masks = lvis_fixture
    _, target = LVISDetectionDataset(path, root)[0]
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (2, HEIGHT, WIDTH)
    assert torch.equal(target["boxes"], torch.tensor([[2.0, 3, 12, 11], [6, 4, 16, 12]]))
    assert target["labels"].tolist() == [2, 1]  # category 7 -> 2, category 3 -> 1; crowd skipped
    polygon = target["masks"][0].numpy()
    assert polygon[4:10, 3:11].all(), "rectangle interior must be inside the polygon mask"
    outside = np.ones_like(polygon, bool)
    outside[2:13, 1:14] = False
    assert not polygon[outside].any(), "nothing outside the rectangle (with a 1 px rasterisation margin)"
    assert np.array_equal(target["masks"][1].numpy(), masks["blob"])


def test_crowd_as_ignore_keeps_crowd_instances_flagged(lvis_fixture):
    path, root, _, _ = lvis_fixture
    dataset = LVISDetectionDataset(path, root, crowd_as_ignore=True)
    _, target = dataset[0]
    assert target["iscrowd"].tolist() == [False, False, True]
    assert target["labels"].tolist() == [2, 1, 1] and target["masks"].shape[0] == 3
    assert torch.equal(target["boxes"][2], torch.tensor([0.0, 0, 5, 5]))
    assert dataset.image_category_ids(0) == {3, 7}  # samplers still see only the real instances
    _, empty = dataset[1]
    assert empty["iscrowd"].shape == (0,)


def test_uncompressed_rle_and_empty_image(lvis_fixture):
    path, root, _, masks = lvis_fixture
    dataset = LVISDetectionDataset(path, root)
    _, empty = dataset[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert empty["masks"].shape == (0, HEIGHT, WIDTH)
    _, target = dataset[2]
    assert target["labels"].tolist() == [3]
    assert torch.equal(target["boxes"], torch.tensor([[20.0, 2, 31, 20]]))
    assert np.array_equal(target["masks"][0].numpy(), masks["second"])


def test_without_masks_and_explicit_category_ids(lvis_fixture):
    path, root, _, _ = lvis_fixture
    dataset = LVISDetectionDataset(path, root, category_ids=[12, 7, 5, 3], with_masks=False)
    _, target = dataset[0]
    assert "masks" not in target
    assert target["labels"].tolist() == [2, 4]  # order given: 12->1, 7->2, 5->3, 3->4
    assert dataset.num_classes == 4


def test_category_missing_from_given_ids_is_a_clear_error(lvis_fixture):
    path, root, _, _ = lvis_fixture
    with pytest.raises(DatasetError, match="annotation id 2: category_id 3"):
        LVISDetectionDataset(path, root, category_ids=[7, 12])


def test_image_size_mismatch_names_the_file(lvis_fixture):
    path, root, _, _ = lvis_fixture
    Image.fromarray(np.zeros((HEIGHT + 1, WIDTH, 3), np.uint8)).save(root / "img20.png")
    with pytest.raises(DatasetError, match="img20.png"):
        LVISDetectionDataset(path, root)[1]


def test_truncated_image_names_the_annotation_file_image_and_path(lvis_fixture):
    path, root, _, _ = lvis_fixture
    image = root / "img20.png"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    dataset = LVISDetectionDataset(path, root)
    with pytest.raises(DatasetError) as error:
        dataset[1]
    assert str(error.value).startswith(f"{path}: image id 20: cannot decode image file {image} (image file is "
                                       "truncated); re-download or re-extract the file"), str(error.value)


def test_malformed_polygon_names_the_annotation(lvis_fixture):
    path, root, _, _ = lvis_fixture
    data = json.loads(path.read_text())
    data["annotations"][0]["segmentation"] = [[2, 3, 12, 3, 12, 11, 2]]  # 7 coordinates: was dropped silently
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"train\.json: annotation id 1 \(image id 10\): segmentation: polygon 0: "
                                           r"has an odd number of coordinates \(7\); .*; fix or drop the annotation"):
        LVISDetectionDataset(path, root)[0]


def test_transforms_are_applied(lvis_fixture):
    path, root, _, _ = lvis_fixture
    calls = []

    def record(image, target):
        calls.append(target["image_id"])
        return image * 0, target

    image, _ = LVISDetectionDataset(path, root, transforms=record)[2]
    assert calls == [30] and image.abs().sum() == 0


def test_dataloader_with_collate_and_sampler(lvis_fixture):
    path, root, _, _ = lvis_fixture
    dataset = LVISDetectionDataset(path, root)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, sampler=UniformSampler(len(dataset), seed=1), collate_fn=collate_detection
    )
    batches = list(loader)
    assert [len(images) for images, _ in batches] == [2, 1]
    seen = sorted(t["image_id"] for _, targets in batches for t in targets)
    assert seen == [10, 20, 30]
    images, targets = batches[0]
    assert isinstance(images, list) and isinstance(targets, list)
