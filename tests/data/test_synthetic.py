"""Tests of the embedded long-tail demo dataset generator."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest

from longtail_seg.data import synthetic
from longtail_seg.data.check import check_dataset
from longtail_seg.data.lvis_io import load_lvis
from longtail_seg.data.masks import decode_segmentation
from tests.conftest import load_workflow_script

TINY = dict(num_train=12, num_val=6, num_unlabeled=5)


@pytest.fixture(scope="module")
def default_plan():
    """Layouts of the default-size dataset (no pixels rendered: ~2 s)."""
    return synthetic.plan_dataset(seed=0)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return synthetic.generate_dataset(out, seed=3, **TINY)


def _groups_from_train(categories, layouts):
    image_count, _ = synthetic.category_counts(layouts["train"], len(categories))
    return np.array([synthetic.frequency_group(int(c)) for c in image_count]), image_count


def _all_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    first = synthetic.generate_dataset(tmp_path / "a", seed=5, **TINY)
    synthetic.generate_dataset(tmp_path / "b", seed=5, **TINY)
    synthetic.generate_dataset(tmp_path / "c", seed=6, **TINY)
    files = _all_files(tmp_path / "a")
    assert len(files) == 4 + sum(TINY.values())
    assert files == _all_files(tmp_path / "b")
    for rel in files:
        assert filecmp.cmp(tmp_path / "a" / rel, tmp_path / "b" / rel, shallow=False), rel
    assert first["train"].read_bytes() != (tmp_path / "c" / "annotations" / "train.json").read_bytes()


def test_default_train_split_has_lvis_like_long_tail(default_plan):
    categories, layouts = default_plan
    groups, image_count = _groups_from_train(categories, layouts)
    # Hand-computed from the profile 244 * 10**(-rank/80): ranks 0-30 exceed 100 images, ranks 31-109 hold
    # 11-100, ranks 110-191 hold 1-10; a dropped object may move a boundary category by one image.
    assert len(categories) == 192
    assert abs((groups == "f").sum() - 31) <= 3
    assert abs((groups == "c").sum() - 79) <= 3
    assert abs((groups == "r").sum() - 82) <= 3
    assert image_count.min() >= 1
    assert len(layouts["train"]) == 2200
    objects = np.array([len(layout.objects) for layout in layouts["train"]])
    assert objects.min() >= 1 and objects.max() <= synthetic.MAX_OBJECTS_PER_IMAGE
    assert 3.5 <= objects.mean() <= 4.5


def test_every_rare_category_is_a_marked_variant_of_a_more_frequent_parent(default_plan):
    categories, layouts = default_plan
    groups, image_count = _groups_from_train(categories, layouts)
    for index in np.flatnonzero(groups == "r"):
        category = categories[index]
        parent = categories[category.parent_id - 1]
        assert category.mark != "none"
        assert (parent.shape, parent.colour, parent.mark) == (category.shape, category.colour, "none")
        assert groups[parent.id - 1] in ("c", "f")
        assert image_count[parent.id - 1] > image_count[index]
    head_marked = [c for c, g in zip(categories, groups) if c.mark != "none" and g != "r"]
    assert {c.mark for c in head_marked} == {"dot", "bar", "outline"}  # every mark is learnable from many images


def test_val_and_unlabeled_are_flatter_than_train(default_plan):
    categories, layouts = default_plan
    groups, _ = _groups_from_train(categories, layouts)

    def rare_share(split):
        _, instances = synthetic.category_counts(layouts[split], len(categories))
        return instances[groups == "r"].sum() / instances.sum(), instances

    train_share, _ = rare_share("train")
    val_share, val_instances = rare_share("val")
    unlabeled_share, _ = rare_share("unlabeled")
    assert train_share < 0.06
    assert unlabeled_share > 2 * train_share
    assert val_share > 3 * train_share
    assert (val_instances[groups == "r"] >= 1).all()  # every rare category can be evaluated
    assert 300 <= val_instances[groups == "r"].sum() <= 450


def test_files_load_and_boxes_are_tight_boxes_of_visible_masks(tiny_dataset):
    root = tiny_dataset["image_root"]
    seen_image_ids = set()
    for split in ("train", "val", "unlabeled_hidden_gt"):
        data = load_lvis(tiny_dataset[split], image_root=root)
        assert [c["id"] for c in data["categories"]] == list(range(1, 193))
        masks_by_image: dict[int, list[np.ndarray]] = {}
        for ann in data["annotations"]:
            assert isinstance(ann["segmentation"]["counts"], str)
            mask = decode_segmentation(ann["segmentation"], 128, 128)
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["area"] == mask.sum() >= synthetic.MIN_VISIBLE_AREA
            masks_by_image.setdefault(ann["image_id"], []).append(mask)
        for masks in masks_by_image.values():  # occlusion: visible masks of one image never overlap
            assert np.stack(masks).sum(axis=0).max() <= 1
        ids = {image["id"] for image in data["images"]}
        if split != "unlabeled_hidden_gt":
            assert not ids & seen_image_ids
            seen_image_ids |= ids
        for image in data["images"]:
            split_folder = "unlabeled" if split == "unlabeled_hidden_gt" else split
            assert image["file_name"] == f"{split_folder}/{image['id']:06d}.png"
    assert seen_image_ids == set(range(1, TINY["num_train"] + TINY["num_val"] + 1))


def test_unlabeled_split_has_no_annotations_and_hidden_gt_covers_it(tiny_dataset):
    unlabeled = load_lvis(tiny_dataset["unlabeled"], image_root=tiny_dataset["image_root"])
    hidden = load_lvis(tiny_dataset["unlabeled_hidden_gt"])
    assert unlabeled["annotations"] == []
    assert [im["id"] for im in unlabeled["images"]] == [im["id"] for im in hidden["images"]]
    assert len(hidden["annotations"]) >= TINY["num_unlabeled"]
    first_id = TINY["num_train"] + TINY["num_val"] + 1
    assert [im["id"] for im in unlabeled["images"]] == list(range(first_id, first_id + TINY["num_unlabeled"]))


def test_every_split_passes_the_data_check(tiny_dataset):
    """The generator writes only what the data check accepts: well-formed RLEs, boxes inside, images that decode."""
    for split, role in (("train", "train"), ("val", "eval"), ("unlabeled", "eval"), ("unlabeled_hidden_gt", "eval")):
        report = check_dataset(tiny_dataset[split], tiny_dataset["image_root"], role=role, workers=1, progress=False)
        assert report["images_decoded"] == report["num_images"] > 0


def test_negative_lists_hold_exactly_the_absent_categories(tiny_dataset):
    for split in ("train", "val", "unlabeled_hidden_gt"):
        data = json.loads(Path(tiny_dataset[split]).read_text())
        present: dict[int, set[int]] = {}
        for ann in data["annotations"]:
            present.setdefault(ann["image_id"], set()).add(ann["category_id"])
        for image in data["images"]:
            here = present.get(image["id"], set())
            assert here, f"image {image['id']} has no objects"
            assert set(image["neg_category_ids"]) == set(range(1, 193)) - here
            assert set(image["not_exhaustive_category_ids"]) <= here


def test_category_records_count_train_images_and_instances(tiny_dataset):
    data = json.loads(Path(tiny_dataset["train"]).read_text())
    images_per_category: dict[int, set[int]] = {}
    instances_per_category: dict[int, int] = {}
    for ann in data["annotations"]:
        images_per_category.setdefault(ann["category_id"], set()).add(ann["image_id"])
        instances_per_category[ann["category_id"]] = instances_per_category.get(ann["category_id"], 0) + 1
    for category in data["categories"]:
        image_count = len(images_per_category.get(category["id"], ()))
        assert category["image_count"] == image_count
        assert category["instance_count"] == instances_per_category.get(category["id"], 0)
        assert category["frequency"] == ("f" if image_count > 100 else "c" if image_count > 10 else "r")
    val = json.loads(Path(tiny_dataset["val"]).read_text())
    assert val["categories"] == data["categories"]  # frequencies always come from train
    # planning already guarantees visibility, so the layout statistics equal the rendered ones
    categories, layouts = synthetic.plan_dataset(seed=3, **TINY)
    image_count, instance_count = synthetic.category_counts(layouts["train"], len(categories))
    assert [c["image_count"] for c in data["categories"]] == image_count.tolist()
    assert [c["instance_count"] for c in data["categories"]] == instance_count.tolist()


@pytest.mark.parametrize("image_size", [64, 200])
def test_other_image_sizes_scale_objects_and_keep_every_planned_instance(tmp_path, image_size):
    paths = synthetic.generate_dataset(tmp_path, image_size=image_size, num_train=10, num_val=0, num_unlabeled=0)
    data = load_lvis(paths["train"], image_root=paths["image_root"])
    _, layouts = synthetic.plan_dataset(image_size=image_size, num_train=10, num_val=0, num_unlabeled=0)
    assert len(data["annotations"]) == sum(len(layout.objects) for layout in layouts["train"])
    assert all(image["width"] == image["height"] == image_size for image in data["images"])
    longest = max(max(a["bbox"][2:]) for a in data["annotations"])
    assert longest <= synthetic.MAX_OBJECT_SIZE * image_size / synthetic.REFERENCE_IMAGE_SIZE + 1
    assert load_lvis(paths["val"])["images"] == []


def test_bad_arguments_are_rejected_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match="image_size 32 is too small"):
        synthetic.generate_dataset(tmp_path, image_size=32, num_train=2, num_val=1, num_unlabeled=1)
    with pytest.raises(ValueError, match="num_val must be >= 0"):
        synthetic.generate_dataset(tmp_path, num_train=2, num_val=-1, num_unlabeled=1)


def test_later_objects_occlude_earlier_ones_and_boxes_follow_the_visible_part():
    categories = synthetic.build_categories()
    square = next(i for i, c in enumerate(categories) if c.name == "red_square")
    layout = synthetic.ImageLayout(
        image_id=1,
        split="train",
        index=0,
        objects=(
            synthetic.PlacedObject(square, x=10, y=10, width=20, height=20),  # rows/cols 10..29
            synthetic.PlacedObject(square, x=20, y=5, width=30, height=30),  # covers cols 20..49, rows 5..34
            synthetic.PlacedObject(square, x=60, y=60, width=20, height=20),
            synthetic.PlacedObject(square, x=62, y=62, width=16, height=16),  # hides the previous one but a ring
        ),
    )
    image, instances = synthetic.render_image(layout, categories, seed=0, image_size=128)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    first_visible = instances[0][1]
    assert first_visible.sum() == 20 * 10  # columns 10..19 of rows 10..29 stay visible
    assert synthetic.tight_box(first_visible) == [10.0, 10.0, 10.0, 20.0]
    assert synthetic.tight_box(instances[1][1]) == [20.0, 5.0, 30.0, 30.0]
    ring_area = 20 * 20 - 16 * 16
    assert ring_area >= synthetic.MIN_VISIBLE_AREA
    assert [mask.sum() for _, mask in instances[2:]] == [ring_area, 16 * 16]


def test_placement_keeps_earlier_objects_and_their_marks_visible(default_plan):
    categories, layouts = default_plan
    for layout in layouts["val"][:100]:
        _, instances = synthetic.render_image(layout, categories, seed=0)
        assert len(instances) == len(layout.objects)
        for obj, (_, visible) in zip(layout.objects, instances):
            full = synthetic.shape_mask(categories[obj.category_index].shape, obj.width, obj.height)
            assert visible.sum() >= synthetic.MIN_VISIBLE_FRACTION * full.sum()


def test_marks_are_inside_the_shape_and_at_least_a_few_pixels():
    for shape in synthetic.SHAPES:
        for mark in synthetic.MARKS[1:]:
            for size in (16, 44):
                body = synthetic.shape_mask(shape, size, size)
                marks = synthetic.mark_mask(shape, mark, size, size)
                assert not (marks & ~body).any()
                assert marks.sum() >= 8, (shape, mark, size)
                assert marks.sum() <= 0.5 * body.sum(), (shape, mark, size)
        assert not synthetic.mark_mask(shape, "none", 30, 30).any()


def test_make_dataset_script_writes_the_dataset(tmp_path, capsys):
    module = load_workflow_script("make_dataset")
    out = tmp_path / "demo"
    module.main(module.parse_args(["--out-dir", str(out), "--num-train", "4", "--num-val", "2",
                                   "--num-unlabeled", "2", "--seed", "1"]))
    assert "categories" in capsys.readouterr().out
    assert len(list((out / "images" / "train").glob("*.png"))) == 4
    assert load_lvis(out / "annotations" / "val.json", image_root=out / "images")["annotations"]


def _reference_shape_mask(shape: str, width: int, height: int, supersample: int) -> np.ndarray:
    """The straightforward downsampling: a pixel is in the mask when its subpixels' mean coverage is >= 0.5."""
    from PIL import Image, ImageDraw

    s = supersample
    canvas = Image.new("L", (width * s, height * s), 0)
    draw = ImageDraw.Draw(canvas)
    w, h = width * s - 1, height * s - 1
    if shape == "circle":
        draw.ellipse([0, 0, w, h], fill=255)
    elif shape == "square":
        draw.rectangle([0, 0, w, h], fill=255)
    else:
        draw.polygon([(px * w, py * h) for px, py in synthetic._unit_polygon(shape)], fill=255)
    coverage = np.asarray(canvas, dtype=np.float64).reshape(height, s, width, s).mean(axis=(1, 3)) / 255.0
    return coverage >= 0.5


@pytest.mark.parametrize("shape", synthetic.SHAPES)
def test_shape_masks_equal_the_coverage_reference_small_and_large(shape):
    """4x supersampling up to LARGE_BOX_SIDE (every demo object), 2x above it (the lvis mode's large objects)."""
    for width, height in ((8, 8), (16, 13), (44, 44), (96, 70), (97, 60), (400, 296), (6, 301)):
        supersample = synthetic.SUPERSAMPLE if max(width, height) <= synthetic.LARGE_BOX_SIDE else 2
        mask = synthetic.shape_mask(shape, width, height)
        assert mask.shape == (height, width)
        np.testing.assert_array_equal(mask, _reference_shape_mask(shape, width, height, supersample))
        if supersample == 2:  # the coarser drawing differs from a 4x one along the outline only
            fine = _reference_shape_mask(shape, width, height, 4)
            assert (mask != fine).sum() <= 2 * (width + height)


def test_make_dataset_script_rejects_an_image_size_in_the_lvis_mode(tmp_path, capsys):
    module = load_workflow_script("make_dataset")
    with pytest.raises(SystemExit):
        module.parse_args(["--out-dir", str(tmp_path), "--mode", "lvis", "--image-size", "640"])
    assert "the lvis mode draws COCO's image sizes" in capsys.readouterr().err
    assert module.parse_args(["--out-dir", str(tmp_path), "--mode", "lvis"]).image_size is None
