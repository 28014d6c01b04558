"""The training pipeline: plain vs mosaic datasets, train + pseudo-labelled images with strong augmentation on the
pseudo part only, repeat factors recomputed over the union, and the errors for missing inputs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from longtail_seg.augment.mosaic import BalancedMosaic
from longtail_seg.augment.pipeline import build_mosaic, build_training_data
from longtail_seg.data.dataset import ConcatDetectionDataset, LVISDetectionDataset
from longtail_seg.data.lvis_io import DatasetError, annotation_arrays, load_json
from longtail_seg.stats import compute_dataset_stats, repeat_factors_of_images
from tests.conftest import box_annotation, write_lvis


def _cfg(**overrides):
    base = dict(min_size_range=[32, 32], max_size=64, flip_prob=0.0, seed=0, mosaic=False, sampler="repeat_factor")
    base.update(overrides)
    return SimpleNamespace(**base)


def _repeat_csv(tmp_path: Path, annotations: Path, threshold: float = 0.9) -> Path:
    stats = compute_dataset_stats(annotation_arrays(load_json(annotations)), rfs_threshold=threshold)
    path = tmp_path / "image_repeat_factors.csv"
    stats.images.to_csv(path, index=False)
    return path


@pytest.fixture
def pseudo_file(small_lvis) -> Path:
    """Two pseudo-labelled 32x32 white images (ids 101, 102) in images/unlabeled/, categories of small_lvis."""
    annotations, image_root = small_lvis
    folder = image_root / "unlabeled"
    folder.mkdir()
    images = []
    for image_id in (101, 102):
        Image.fromarray(np.full((32, 32, 3), 255, dtype=np.uint8)).save(folder / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"unlabeled/{image_id}.png", "height": 32, "width": 32})
    categories = load_json(annotations)["categories"]
    anns = [box_annotation(1, 101, 3, [4, 4, 10, 10]), box_annotation(2, 102, 3, [8, 8, 10, 12])]
    return write_lvis(annotations.parent / "pseudo.json", images, anns, categories)


def test_plain_pipeline_resizes_and_reads_repeat_factors(small_lvis, tmp_path):
    annotations, image_root = small_lvis
    csv = _repeat_csv(tmp_path, annotations)
    data = build_training_data(annotations, image_root, _cfg(), repeat_factor_csv=csv)
    assert isinstance(data.base, LVISDetectionDataset) and data.dataset is data.base
    image, _ = data.dataset[0]
    assert image.shape[-2:] == (32, 32)
    expected = compute_dataset_stats(annotation_arrays(load_json(annotations)), rfs_threshold=0.9).images
    np.testing.assert_allclose(data.repeat_factors, expected["repeat_factor"].to_numpy())


def test_uniform_plain_pipeline_needs_no_repeat_factors(small_lvis):
    annotations, image_root = small_lvis
    data = build_training_data(annotations, image_root, _cfg(sampler="uniform"))
    assert data.repeat_factors is None


def test_mosaic_pipeline_wraps_unresized_images_with_rfs_probabilities(small_lvis, tmp_path):
    annotations, image_root = small_lvis
    csv = _repeat_csv(tmp_path, annotations)
    data = build_training_data(annotations, image_root, _cfg(mosaic=True, sampler="uniform"), repeat_factor_csv=csv,
                               mosaic_cfg={"scale_range": [1.0, 1.0]})
    assert isinstance(data.dataset, BalancedMosaic)
    assert data.base.transforms is None
    np.testing.assert_allclose(data.dataset.sampling_prob, data.repeat_factors / data.repeat_factors.sum())
    image, target = data.dataset[0]
    assert image.shape == (3, 32, 32)
    assert len(target["mosaic_image_ids"]) == 4
    assert target["masks"].shape[-2:] == (32, 32)


def test_mosaic_needs_repeat_factors_and_known_keys(small_lvis, tmp_path):
    annotations, image_root = small_lvis
    with pytest.raises(ValueError, match="image_repeat_factors.csv"):
        build_training_data(annotations, image_root, _cfg(mosaic=True, sampler="uniform"))
    csv = _repeat_csv(tmp_path, annotations)
    with pytest.raises(ValueError, match="unknown key.*scale"):
        build_training_data(annotations, image_root, _cfg(mosaic=True), repeat_factor_csv=csv,
                            mosaic_cfg={"scale": [1, 1]})


def test_pseudo_images_join_with_strong_augmentation_on_them_only(small_lvis, pseudo_file):
    annotations, image_root = small_lvis
    strong = {"blur_prob": 0.0, "jitter_prob": 0.0, "cutout_prob": 1.0, "cutout_holes": [1, 1],
              "cutout_size": [0.5, 0.5], "fill_value": 0.0}
    data = build_training_data(annotations, image_root, _cfg(), pseudo_annotations=pseudo_file, strong_cfg=strong,
                               rfs_threshold=0.9, with_masks=False)
    assert isinstance(data.base, ConcatDetectionDataset)
    assert data.num_pseudo_images == 2 and len(data.dataset) == 5
    assert data.base.image_ids == [1, 2, 3, 101, 102]
    train_image, _ = data.dataset[0]   # uniform grey 40/255: no cutout
    assert torch.allclose(train_image, torch.full_like(train_image, 40 / 255), atol=1e-6)
    pseudo_image, target = data.dataset[3]  # white with one black 16 x 16 hole
    assert int((pseudo_image == 0).all(dim=0).sum()) == 256
    assert target["image_id"] == 101 and target["labels"].tolist() == [3]
    # repeat factors of the union: category 3 only appears in the pseudo images
    union = [data.base.image_category_ids(i) for i in range(5)]
    np.testing.assert_allclose(data.repeat_factors, repeat_factors_of_images(union, 0.9))


def test_pseudo_images_need_the_rfs_threshold(small_lvis, pseudo_file):
    annotations, image_root = small_lvis
    with pytest.raises(ValueError, match="RFS threshold"):
        build_training_data(annotations, image_root, _cfg(), pseudo_annotations=pseudo_file)


def test_concat_refuses_duplicate_image_ids_and_other_categories(small_lvis, tmp_path):
    annotations, image_root = small_lvis
    train = LVISDetectionDataset(annotations, image_root)
    with pytest.raises(DatasetError, match="image id 1 is in both"):
        ConcatDetectionDataset([train, LVISDetectionDataset(annotations, image_root)])
    with pytest.raises(DatasetError, match="category ids differ"):
        ConcatDetectionDataset([train, LVISDetectionDataset(annotations, image_root, category_ids=[3, 2, 1])])


def test_build_mosaic_passes_settings(small_lvis):
    annotations, image_root = small_lvis
    dataset = LVISDetectionDataset(annotations, image_root)
    mosaic = build_mosaic(dataset, np.array([1.0, 2.0, 1.0]), {"prob": 0.0, "output_size": 24}, seed=3)
    assert mosaic.prob == 0.0 and mosaic.output_size == (24, 24) and mosaic.seed == 3
    image, target = mosaic[1]
    assert image.shape == (3, 24, 24) and target["mosaic_image_ids"] == [2]

