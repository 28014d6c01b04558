"""Tests of the LVIS-shaped synthetic dataset (the LVIS rehearsal's data, ``synthetic.mode: lvis``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from longtail_seg.data import synthetic, synthetic_lvis
from longtail_seg.data.check import check_dataset
from longtail_seg.data.lvis_categories import LVIS_V1_NUM_CATEGORIES, lvis_v1_categories
from longtail_seg.data.lvis_io import image_path, load_lvis
from longtail_seg.data.masks import decode_segmentation
from longtail_seg.data.synthetic_config import (
    LVIS_MAX_CATEGORIES_PER_IMAGE,
    LVIS_MIN_NUM_TRAIN,
    LVIS_NUM_CATEGORIES,
)

SIZES = dict(num_train=LVIS_MIN_NUM_TRAIN, num_val=3, num_unlabeled=2)


@pytest.fixture(scope="module")
def lvis_dataset(tmp_path_factory):
    """The smallest lvis-mode dataset that holds every category (~10 s: 125 images of COCO size)."""
    return synthetic_lvis.generate_lvis_dataset(tmp_path_factory.mktemp("lvis"), seed=0, **SIZES)


@pytest.fixture(scope="module")
def train(lvis_dataset):
    return json.loads(Path(lvis_dataset["train"]).read_text())


def _present(data: dict) -> dict[int, set[int]]:
    present: dict[int, set[int]] = {image["id"]: set() for image in data["images"]}
    for ann in data["annotations"]:
        present[ann["image_id"]].add(ann["category_id"])
    return present


def test_category_table_constants_agree():
    assert LVIS_NUM_CATEGORIES == LVIS_V1_NUM_CATEGORIES == len(lvis_v1_categories())


def test_train_counts_are_lvis_counts_scaled_to_the_split_with_one_image_at_least():
    table = pd.DataFrame({"image_count": [100170, 50085, 25042, 10, 1], "frequency": ["f", "f", "f", "r", "r"]})
    counts = synthetic_lvis.split_image_counts(table, 4, "train", np.random.default_rng(0))
    # by hand: round(n * 4 / 100170) = 4, 2, 1 (0.99999), 0 -> 1, 0 -> 1
    assert counts.tolist() == [4, 2, 1, 1, 1]
    assert synthetic_lvis.split_image_counts(table, 2, "train", np.random.default_rng(0)).tolist() == [2, 1, 1, 1, 1]


def test_val_counts_hold_every_frequency_group_and_lvis_categories_per_image():
    table = lvis_v1_categories()
    per_image = table["image_count"].sum() / synthetic_lvis.LVIS_V1_TRAIN_IMAGES
    for seed in range(5):
        counts = synthetic_lvis.split_image_counts(table, 1, "val", np.random.default_rng(seed))
        assert counts.max() <= 1
        assert set(table["frequency"][counts > 0]) == {"r", "c", "f"}
    counts = synthetic_lvis.split_image_counts(table, 2000, "val", np.random.default_rng(0))
    assert counts.sum() / 2000 == pytest.approx(per_image, rel=0.02)  # LVIS's 3.6 categories per image


def test_min_num_train_is_the_smallest_split_with_room_for_every_category_plus_a_margin():
    counts = lvis_v1_categories()["image_count"].to_numpy()

    def needed(num_train: int) -> int:
        return int(np.maximum(np.round(counts * num_train / synthetic_lvis.LVIS_V1_TRAIN_IMAGES), 1).sum())

    assert needed(110) > LVIS_MAX_CATEGORIES_PER_IMAGE * 110
    for num_train in range(LVIS_MIN_NUM_TRAIN, 3000, 17):
        assert needed(num_train) <= LVIS_MAX_CATEGORIES_PER_IMAGE * num_train, num_train


def test_every_lvis_category_is_in_training_with_its_lvis_label(train):
    table = lvis_v1_categories()
    categories = train["categories"]
    assert [c["id"] for c in categories] == table["id"].tolist()
    assert [c["name"] for c in categories] == table["name"].tolist()
    assert [c["frequency"] for c in categories] == table["frequency"].tolist()
    image_counts = np.array([c["image_count"] for c in categories])
    assert image_counts.min() >= 1  # all 1203 in training
    targets = np.maximum(np.round(table["image_count"] * SIZES["num_train"] / 100170), 1).to_numpy()
    assert (image_counts == targets).mean() > 0.98  # the scaled long tail (an object may rarely find no room)
    per_category = Counter(ann["category_id"] for ann in train["annotations"])
    assert [c["instance_count"] for c in categories] == [per_category[c["id"]] for c in categories]
    assert len({(c["def"]) for c in categories}) == LVIS_NUM_CATEGORIES  # a look of its own for each category


def test_images_have_coco_sizes_and_several_objects(train):
    sizes = Counter((image["width"], image["height"]) for image in train["images"])
    assert sizes.most_common(1)[0][0] == (640, 480)
    assert 0.3 <= (sizes[(640, 480)] + sizes[(480, 640)]) / len(train["images"]) <= 0.7
    assert len(sizes) >= 5 and all(max(size) <= 640 and min(size) >= 360 for size in sizes)
    objects = np.array([len(ids) for ids in _per_image_annotations(train).values()])
    assert objects.min() >= 1 and objects.max() <= synthetic_lvis.MAX_OBJECTS_PER_IMAGE
    assert objects.mean() >= 8


def _per_image_annotations(data: dict) -> dict[int, list[dict]]:
    per_image: dict[int, list[dict]] = {image["id"]: [] for image in data["images"]}
    for ann in data["annotations"]:
        per_image[ann["image_id"]].append(ann)
    return per_image


def test_object_sizes_follow_cocos_small_medium_large_mix(train):
    areas = np.array([ann["area"] for ann in train["annotations"]])
    shares = [(areas < 32**2).mean(), ((areas >= 32**2) & (areas < 96**2)).mean(), (areas >= 96**2).mean()]
    assert shares == pytest.approx(synthetic_lvis.COCO_AREA_SHARES, abs=0.06)
    assert areas.min() >= synthetic.LVIS_MIN_VISIBLE_AREA


def test_masks_boxes_and_files_are_consistent_and_pass_the_data_check(lvis_dataset, train):
    root = lvis_dataset["image_root"]
    for image in train["images"][:5]:
        assert "file_name" not in image  # LVIS v1 records: the file is found through coco_url
        path = image_path(image, root)
        assert path.parent.name == "train2017" and path.name == f"{image['id']:012d}.jpg" and path.is_file()
    for ann in train["annotations"][:200]:
        image = next(i for i in train["images"] if i["id"] == ann["image_id"])
        mask = decode_segmentation(ann["segmentation"], image["height"], image["width"])
        assert synthetic.tight_box(mask) == ann["bbox"] and mask.sum() == ann["area"]
    for split, role in (("train", "train"), ("val", "eval"), ("unlabeled", "eval"), ("unlabeled_hidden_gt", "eval")):
        report = check_dataset(lvis_dataset[split], root, role=role, workers=1, progress=False)
        assert report["images_decoded"] == report["num_images"] > 0


def test_federated_lists_are_sparse_and_consistent(lvis_dataset, train):
    for split in ("train", "val", "unlabeled_hidden_gt"):
        data = json.loads(Path(lvis_dataset[split]).read_text())
        present = _present(data)
        negatives = []
        for image in data["images"]:
            assert not set(image["neg_category_ids"]) & present[image["id"]]
            assert set(image["not_exhaustive_category_ids"]) <= present[image["id"]]
            assert image["neg_category_ids"] == sorted(set(image["neg_category_ids"]))
            negatives.append(len(image["neg_category_ids"]))
        if split == "train":  # about as many negatives as present categories (the demo lists all 1199 absent)
            categories_per_image = np.mean([len(ids) for ids in present.values()])
            assert 0.7 * categories_per_image <= np.mean(negatives) <= 1.3 * categories_per_image
            assert 0 < sum(len(i["not_exhaustive_category_ids"]) for i in data["images"]) < sum(
                len(ids) for ids in present.values()) * 0.2
    unlabeled = load_lvis(lvis_dataset["unlabeled"])
    assert unlabeled["annotations"] == [] and all(not i["neg_category_ids"] for i in unlabeled["images"])


def test_val_holds_every_frequency_group(lvis_dataset):
    val = json.loads(Path(lvis_dataset["val"]).read_text())
    groups = {c["id"]: c["frequency"] for c in val["categories"]}
    assert {groups[ann["category_id"]] for ann in val["annotations"]} == {"r", "c", "f"}


def test_planning_is_deterministic_for_a_seed():
    table = lvis_v1_categories()
    categories = synthetic_lvis.build_lvis_categories(table)

    def plan(seed):
        return synthetic_lvis.plan_lvis_split("val", 3, 1, table, categories, seed=seed)

    assert plan(4) == plan(4)
    assert plan(4) != plan(5)


def test_too_small_a_train_split_is_rejected_naming_the_minimum(tmp_path):
    with pytest.raises(ValueError, match=f"num_train must be >= {LVIS_MIN_NUM_TRAIN}"):
        synthetic_lvis.generate_lvis_dataset(tmp_path, num_train=LVIS_MIN_NUM_TRAIN - 1)
