"""The data check (longtail_seg/data/check.py, workflow_scripts/check_dataset.py) and the ground-truth check of
evaluate.py: each kind of bad data, made here on tiny files, fails naming the file, the record and the fix; every
problem is listed in one pass; a valid dataset passes with the right counts."""

from __future__ import annotations

import hashlib
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail_seg.data.check import check_dataset, compressed_counts
from longtail_seg.data.lvis_io import DatasetError
from longtail_seg.data.masks import encode_mask
from longtail_seg.pseudo_labels import pseudo_label_dataset
from tests.conftest import REPO_ROOT, box_annotation, load_workflow_script


def _edit(path: Path, edit) -> Path:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def _problems(annotations: Path, image_root: Path | None = None, **kwargs) -> str:
    """The check's error message (it must fail)."""
    with pytest.raises(DatasetError) as error:
        check_dataset(annotations, image_root, progress=False, workers=1, **kwargs)
    message = str(error.value)
    assert message.startswith(f"{annotations}: the data check found "), message
    return message


def _noise_png(path: Path, height: int = 32, width: int = 32) -> None:
    """A PNG of random pixels (incompressible: cutting its bytes cuts pixel data)."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def test_valid_dataset_passes_with_the_right_counts(small_lvis):
    annotations, image_root = small_lvis
    report = check_dataset(annotations, image_root, role="train", workers=2, progress=False)
    assert report["num_images"] == 3 and report["num_annotations"] == 4 and report["num_categories"] == 3
    assert report["images_decoded"] == 3 and report["images_per_s"] > 0 and report["workers"] == 2
    assert report["annotation_file"] == str(annotations) and report["image_root"] == str(image_root)
    assert report["annotation_sha256"] == hashlib.sha256(annotations.read_bytes()).hexdigest()
    without_images = check_dataset(annotations, None, progress=False)  # annotations only
    assert without_images["images_decoded"] == 0 and without_images["images_per_s"] is None


def test_truncated_image_names_the_file_and_record(small_lvis):
    annotations, image_root = small_lvis
    path = image_root / "000002.png"
    _noise_png(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with Image.open(path) as image:  # what the check must not rely on: the header alone looks fine
        assert image.size == (32, 32)
    message = _problems(annotations, image_root)
    assert f"image id 2: image file {path} does not decode (image file is truncated)" in message
    assert "re-download or re-extract the file" in message


def test_text_file_named_png_is_not_an_image(small_lvis):
    annotations, image_root = small_lvis
    (image_root / "000003.png").write_text("this is not an image")
    message = _problems(annotations, image_root)
    assert f"image id 3: image file {image_root / '000003.png'} is not an image PIL can read" in message


def test_missing_file_and_size_mismatch_are_named(small_lvis):
    annotations, image_root = small_lvis
    (image_root / "000001.png").unlink()
    _noise_png(image_root / "000003.png", height=30)
    message = _problems(annotations, image_root)
    assert f"image id 1: image file {image_root / '000001.png'} not found; check image_root" in message
    assert f"image id 3: image file {image_root / '000003.png'} is 32x30 but the record says 32x32" in message
    assert "found 2 problems:" in message


@pytest.mark.parametrize("segmentation, expected", [
    ({"size": [16, 32], "counts": encode_mask(np.ones((16, 32), np.uint8))["counts"]},
     "segmentation is an RLE of size [16, 32], but the image record is [height, width] [32, 32]"),
    ({"size": [32, 32], "counts": [100, 20]},
     "segmentation is an uncompressed RLE whose counts sum to 120, not height * width = 1024"),
    ({"size": [32, 32], "counts": "P1"},  # pycocotools decodes this to garbage without an error
     "segmentation is a compressed RLE whose decoded counts sum to"),
    ({"size": [32, 32], "counts": "\x7f\x7f"}, "segmentation is a compressed RLE that does not decode"),
    ([[2, 2, 10, 2, 10, 10, 2]], "segmentation polygon 0 has an odd number of coordinates (7)"),
    ([[2, 2, 10, 2, 10, 10, 2, 10], [1, 1, 5, 5]], "segmentation polygon 1 has 4 coordinates, fewer than 3 points"),
    ([[2, 2, 10, 2, "10", 10]], "segmentation polygon 0 holds '10', which is not a number"),
    ([[2, 2, 40, 2, 40, 10, 2, 10]], "segmentation polygon 0 reaches outside the 32x32 image (x 2 .. 40"),
    ([[2, -3, 10, 2, 10, 10]], "segmentation polygon 0 reaches outside the 32x32 image"),
])
def test_bad_segmentation_names_the_annotation(small_lvis, segmentation, expected):
    annotations, _ = small_lvis
    _edit(annotations, lambda d: d["annotations"][2].update(segmentation=segmentation))
    message = _problems(annotations)
    assert f"annotation id 3 (image id 2): {expected}" in message, message
    assert "fix or drop the annotation" in message


def test_polygon_on_the_image_border_is_inside_the_tolerance(small_lvis):
    annotations, _ = small_lvis
    _edit(annotations, lambda d: d["annotations"][2].update(segmentation=[[0, 0, 32.5, 0, 32.5, 32, 0, 32]]))
    check_dataset(annotations, progress=False)


def test_box_outside_the_image_and_missing_mask(small_lvis):
    annotations, _ = small_lvis
    _edit(annotations, lambda d: (d["annotations"][0].update(bbox=[20, 20, 20, 5]),
                                  d["annotations"][1].pop("segmentation")))
    message = _problems(annotations)
    assert "annotation id 1 (image id 1): bbox [20, 20, 20, 5] reaches outside the 32x32 image" in message
    assert "annotation id 2 (image id 1): no 'segmentation'" in message
    without_masks = _problems(annotations, require_masks=False)  # bbox-only evaluation: boxes still checked
    assert "found 1 problem:" in without_masks and "no 'segmentation'" not in without_masks


def test_train_split_without_annotations_fails_and_eval_passes(small_lvis):
    annotations, image_root = small_lvis
    _edit(annotations, lambda d: d.update(annotations=[]))
    message = _problems(annotations, image_root, role="train")
    assert "has 3 images but no annotations; a training split needs annotations" in message
    report = check_dataset(annotations, image_root, role="eval", progress=False)
    assert report["num_annotations"] == 0


def test_structure_problems_and_bad_records_are_all_listed(small_lvis):
    annotations, _ = small_lvis

    def breaks(data: dict) -> None:
        data["images"][0]["height"] = 0
        data["annotations"].append(box_annotation(4, 1, 9, [0, 0, 2, 2]))  # duplicate id, unknown category
        data["annotations"].append(box_annotation(8, 42, 1, [0, 0, 2, 2]))  # unknown image

    _edit(annotations, breaks)
    message = _problems(annotations)
    assert "image id 1: 'height' is 0, not a positive integer" in message
    assert "annotations id 4 appears twice" in message
    assert "annotation id 4: category_id 9 is not in 'categories'" in message
    assert "annotation id 8: image_id 42 is not in 'images'" in message


def test_many_problems_are_capped_and_counted(small_lvis):
    annotations, _ = small_lvis
    odd = [[1, 1, 5, 1, 5]]
    _edit(annotations, lambda d: d["annotations"].extend(
        {**box_annotation(100 + i, 1, 1, [1, 1, 4, 4]), "segmentation": odd} for i in range(30)))
    message = _problems(annotations, max_listed=5)
    assert "found 30 problems (the first 5 listed):" in message
    assert message.count("\n  - ") == 5 and "annotation id 104 " in message and "annotation id 105 " not in message
    assert message.endswith("... and 25 more; fix these and rerun the check")


def test_missing_and_truncated_annotation_files(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.json: annotation file not found"):
        check_dataset(tmp_path / "nope.json", progress=False)
    path = tmp_path / "train.json"
    path.write_text('{"images": [{"id": 1, "he')
    with pytest.raises(DatasetError, match=r"train\.json: invalid JSON at line 1, column \d+: .* truncated"):
        check_dataset(path, progress=False)
    path.write_text('{"images": {}, "categories": []}')
    message = _problems(path)
    assert "missing top-level key 'annotations'" in message and "'images' must be a list of records" in message


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_pools_find_the_same_problems_in_dataset_order(small_lvis, executor):
    annotations, image_root = small_lvis
    for name in ("000001.png", "000003.png"):
        (image_root / name).write_text("not an image")
    with pytest.raises(DatasetError) as error:
        check_dataset(annotations, image_root, workers=2, executor=executor, progress=False)
    lines = str(error.value).splitlines()
    assert lines[1].startswith("  - image id 1: ") and lines[2].startswith("  - image id 3: ")


def test_compressed_counts_match_pycocotools():
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = (rng.random((17, 23)) < rng.random()).astype(np.uint8)
        runs = compressed_counts(encode_mask(mask)["counts"])
        flat = np.concatenate([np.full(run, index % 2, np.uint8) for index, run in enumerate(runs)])
        np.testing.assert_array_equal(flat.reshape(23, 17).T, mask)


def test_pseudo_labels_make_a_valid_training_file(tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[2:12, 2:12] = 1
    prediction = {"image_id": 5, "category_id": 1, "score": 0.9, "bbox": [2, 2, 10, 10],
                  "segmentation": encode_mask(mask)}
    unlabeled = {"images": [{"id": 5, "file_name": "5.png", "height": 32, "width": 32}]}
    data = pseudo_label_dataset({5: [prediction]}, unlabeled, [{"id": 1, "name": "a"}],
                                ignore={5: [{**prediction, "bbox": [20, 20, 5, 5]}]})
    path = tmp_path / "pseudo.json"
    path.write_text(json.dumps(data))
    assert check_dataset(path, role="train", progress=False)["num_annotations"] == 2


# --- the scripts ---------------------------------------------------------------------------------------------------


def test_check_dataset_script_writes_the_report(small_lvis, tmp_path):
    annotations, image_root = small_lvis
    script = load_workflow_script("check_dataset")
    out = tmp_path / "checks" / "train.json"
    script.main(script.parse_args(["--annotations", str(annotations), "--image-root", str(image_root),
                                   "--role", "train", "--out", str(out), "--workers", "2", "--no-progress"]))
    report = json.loads(out.read_text())
    assert report["num_images"] == 3 and report["role"] == "train" and report["executor"] == "thread"


def test_check_dataset_script_exits_with_the_problems_and_no_report(small_lvis, tmp_path, monkeypatch):
    annotations, image_root = small_lvis
    (image_root / "000002.png").write_text("not an image")
    out = tmp_path / "report.json"
    monkeypatch.setattr(sys, "argv", ["check_dataset.py", "--annotations", str(annotations), "--image-root",
                                      str(image_root), "--out", str(out), "--no-progress"])
    with pytest.raises(SystemExit) as error:  # as `python workflow_scripts/check_dataset.py` exits
        runpy.run_path(str(REPO_ROOT / "workflow_scripts" / "check_dataset.py"), run_name="__main__")
    assert str(error.value).startswith(f"check_dataset: {annotations}: the data check found 1 problem:")
    assert "image id 2: image file" in str(error.value) and not out.exists()


def _evaluate(annotations: Path, tmp_path: Path) -> str:
    """evaluate.py's exit message for a ground-truth file (the predictions are fine)."""
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "score": 0.9,
                                        "segmentation": encode_mask(np.ones((32, 32), np.uint8))}]))
    script = load_workflow_script("evaluate")
    with pytest.raises(SystemExit) as error:
        script.main(script.parse_args(["--annotations", str(annotations), "--predictions", str(predictions),
                                       "--out", str(tmp_path / "metrics.json")]))
    assert not (tmp_path / "metrics.json").exists()
    return str(error.value)


def test_evaluate_rejects_a_truncated_ground_truth_file(small_lvis, tmp_path):
    annotations, _ = small_lvis
    annotations.write_text(annotations.read_text()[:200])
    message = _evaluate(annotations, tmp_path)
    assert message.startswith(f"evaluate: {annotations}: invalid JSON at line 1"), message
    assert "truncated or not JSON" in message


def test_evaluate_rejects_a_ground_truth_with_a_bad_segmentation(small_lvis, tmp_path):
    annotations, _ = small_lvis
    _edit(annotations, lambda d: d["annotations"][0].update(segmentation={"size": [64, 64], "counts": [4096]}))
    message = _evaluate(annotations, tmp_path)
    assert message.startswith(f"evaluate: {annotations}: the data check found 1 problem:"), message
    assert "annotation id 1 (image id 1): segmentation is an RLE of size [64, 64]" in message


def test_evaluate_trusts_a_check_report_of_this_very_ground_truth_only(small_lvis, tmp_path, monkeypatch):
    """The workflow's gate already checked the val file: evaluate.py skips its own check for a report of the same
    contents, and checks again when the file changed since the report."""
    annotations, image_root = small_lvis
    report = tmp_path / "val_check.json"
    script = load_workflow_script("check_dataset")
    script.main(script.parse_args(["--annotations", str(annotations), "--image-root", str(image_root),
                                   "--role", "eval", "--out", str(report), "--no-progress"]))
    evaluate = load_workflow_script("evaluate")
    calls = []
    monkeypatch.setattr(evaluate, "check_dataset", lambda *args, **kwargs: calls.append(args))
    evaluate.check_ground_truth(str(annotations), str(report), require_masks=True)
    assert calls == []
    _edit(annotations, lambda d: d["annotations"][0].update(bbox=[1, 1, 5, 5]))  # changed after the report
    evaluate.check_ground_truth(str(annotations), str(report), require_masks=True)
    evaluate.check_ground_truth(str(annotations), None, require_masks=True)
    assert calls == [(str(annotations),), (str(annotations),)]
