"""Predict on new images: results for readable images, bad files skipped by name, refused inputs, no partial
outputs, test sizes from the config, the console script."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from PIL import Image

from longtail_seg.inference import new_images
from longtail_seg.inference.predict_cli import main, parse_args, test_config_from_args
from longtail_seg.models.detector import build_detector, save_checkpoint
from tests.engine.fake_data import TEST_MODEL_CFG

REPO_ROOT = Path(__file__).resolve().parents[2]
CATEGORY_IDS = [11, 12, 1203]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny detector (3 classes, names stored as training stores them): it scores every class, so
    every image gets detections."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model_final.pth"
    save_checkpoint(path, build_detector(TEST_MODEL_CFG, num_classes=3), TEST_MODEL_CFG, CATEGORY_IDS,
                    extra={"category_names": ["red square", "green disc", "blue ring"]})
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Two readable images of different sizes, a truncated PNG, a text file and a hidden file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / "b_wide.png")
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).convert("L").save(folder / "d_grey.jpg")
    good = (folder / "b_wide.png").read_bytes()
    (folder / "a_broken.png").write_bytes(good[: len(good) // 2])
    (folder / "c_notes.txt").write_text("not an image\n")
    (folder / ".hidden.png").write_bytes(good)
    return folder


def _run(checkpoint, images, out, *extra) -> dict:
    return main(["--model", str(checkpoint), "--images", *map(str, images), "--out", str(out),
                 "--min-size", "48", "--max-size", "96", "--max-dets", "20", "--device", "cpu",
                 "--score-threshold", "0.0", *extra])


def test_predict_writes_results_images_json_and_drawings_and_skips_bad_files(checkpoint, image_folder, tmp_path,
                                                                              capsys):
    out = tmp_path / "out"
    summary = _run(checkpoint, [image_folder], out)
    err = capsys.readouterr().err
    assert f"skipped {image_folder / 'a_broken.png'}: cannot decode it" in err
    assert f"skipped {image_folder / 'c_notes.txt'}: not an image file PIL can read" in err
    info = json.loads((out / "images.json").read_text())
    # ids are positions in the sorted folder listing (hidden files left out), bad files included
    assert info["images"] == [
        {"id": 2, "file_name": str(image_folder / "b_wide.png"), "height": 40, "width": 56},
        {"id": 4, "file_name": str(image_folder / "d_grey.jpg"), "height": 48, "width": 48},
    ]
    assert [s["file_name"] for s in info["skipped"]] == [str(image_folder / "a_broken.png"),
                                                         str(image_folder / "c_notes.txt")]
    assert info["categories"] == [{"id": 11, "name": "red square"}, {"id": 12, "name": "green disc"},
                                  {"id": 1203, "name": "blue ring"}]
    results = json.loads((out / "results.json").read_text())
    assert summary["detections"] == len(results) and summary["images"] == 2 and summary["skipped"] == 2
    sizes = {image["id"]: [image["height"], image["width"]] for image in info["images"]}
    assert {r["image_id"] for r in results} == {2, 4}
    for result in results:
        assert result["category_id"] in CATEGORY_IDS
        assert result["segmentation"]["size"] == sizes[result["image_id"]]
        x, y, w, h = result["bbox"]
        height, width = sizes[result["image_id"]]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= width + 0.01 and y + h <= height + 0.01
    per_image = [sum(r["image_id"] == i for r in results) for i in (2, 4)]
    assert all(0 < n <= 20 for n in per_image)  # --max-dets
    drawn = sorted(p.name for p in (out / "drawn").iterdir())
    assert drawn == ["000002_b_wide.png", "000004_d_grey.png"]
    with Image.open(out / "drawn" / "000002_b_wide.png") as pil:  # 56 x 40 enlarged to a 480 px long side
        assert pil.size[0] == 480 and abs(pil.size[1] - 480 * 40 / 56) <= 1
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_same_inputs_give_the_same_ids_and_results(checkpoint, image_folder, tmp_path):
    _run(checkpoint, [image_folder / "d_grey.jpg", image_folder], tmp_path / "one", "--no-draw")
    _run(checkpoint, [image_folder / "d_grey.jpg", image_folder], tmp_path / "two", "--no-draw")
    one, two = ((tmp_path / name / "results.json").read_text() for name in ("one", "two"))
    assert one == two
    images = json.loads((tmp_path / "one" / "images.json").read_text())["images"]
    assert [(i["id"], Path(i["file_name"]).name) for i in images] == [(1, "d_grey.jpg"), (3, "b_wide.png")]
    assert not (tmp_path / "one" / "drawn").exists()


def test_a_multi_scale_test_entry_runs_test_time_augmentation(checkpoint, image_folder, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("tests:\n  single: {min_size: 48, max_size: 96, max_dets: 20}\n"
                      "  multi: {from: single, scales: [40, 56], flip: true, merge: soft_nms, mask_voting: true}\n")
    out = tmp_path / "out"
    summary = main(["--model", str(checkpoint), "--images", str(image_folder / "b_wide.png"), "--out", str(out),
                    "--test", "multi", "--config", str(config), "--device", "cpu", "--no-draw"])
    results = json.loads((out / "results.json").read_text())
    assert summary["detections"] == len(results) and 0 < len(results) <= 20
    assert {r["image_id"] for r in results} == {1}
    assert all(r["segmentation"]["size"] == [40, 56] for r in results)


def _refusal(*args) -> str:
    with pytest.raises(SystemExit) as error:
        _run(*args)
    return str(error.value.code)


@pytest.mark.parametrize("kind", ["text", "dict", "tensor", "missing_weights"])
def test_a_file_that_is_no_detector_is_refused_naming_it(checkpoint, image_folder, tmp_path, kind):
    bad = tmp_path / "not_a_model.pth"
    if kind == "text":
        bad.write_text("hello\n")
    elif kind == "dict":
        torch.save({"weights": torch.zeros(2), "epoch": 3}, bad)
    elif kind == "tensor":
        torch.save(torch.zeros(3), bad)
    else:
        payload = torch.load(checkpoint, weights_only=False)
        payload["model"].pop(next(iter(payload["model"])))
        torch.save(payload, bad)
    out = tmp_path / "out"
    message = _refusal(bad, [image_folder], out)
    assert message.startswith(f"predict: --model {bad} is not a detector checkpoint (")
    assert "pass a model_final.pth written by training" in message
    assert "delete it" not in message  # the loader's advice is about the workflow's own files, not the user's
    assert not out.exists()


def test_a_missing_model_and_no_readable_image_are_refused(checkpoint, image_folder, tmp_path):
    assert _refusal(tmp_path / "nope.pth", [image_folder], tmp_path / "o").startswith(
        f"predict: --model {tmp_path / 'nope.pth'}: no such file")
    message = _refusal(checkpoint, [image_folder / "c_notes.txt", tmp_path / "gone.png"], tmp_path / "o")
    assert message.startswith("predict: none of the 2 files under --images is a readable image "
                              f"({image_folder / 'c_notes.txt'}: not an image file PIL can read")
    assert _refusal(checkpoint, [tmp_path / "o"], tmp_path / "o2").startswith(
        "predict: none of the 1 files")  # a path that does not exist is reported, not a crash
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no files found" in _refusal(checkpoint, [empty], tmp_path / "o")


def test_an_output_that_would_overwrite_an_input_is_refused(checkpoint, image_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    categories = out / "images.json"  # e.g. a previous run's images.json, reused for its category names
    categories.write_text(json.dumps({"categories": [{"id": 11, "name": "x"}]}))
    message = _refusal(checkpoint, [image_folder], out, "--categories", str(categories))
    assert message == (f"predict: {categories} would overwrite the input {categories}; choose another --out folder "
                       "(predict never writes over its inputs)")
    results_named_image = out / "results.json"  # an image file that happens to be named like the output
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(results_named_image, format="PNG")
    message = _refusal(checkpoint, [results_named_image], out)
    assert message.startswith(f"predict: {results_named_image} would overwrite the input {results_named_image}")
    assert json.loads(categories.read_text())["categories"][0]["name"] == "x"  # untouched


def test_an_interrupted_run_leaves_no_output(checkpoint, image_folder, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(new_images, "draw_results", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _run(checkpoint, [image_folder], out)
    assert not (out / "results.json").exists() and not (out / "images.json").exists()
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True


def test_category_names_come_from_a_categories_file_then_the_checkpoint_then_the_ids(tmp_path):
    meta = {"category_ids": [5, 7], "extra": {"category_names": ["five", "seven"]}}
    assert new_images.category_names(meta) == {5: "five", 7: "seven"}
    assert new_images.category_names({"category_ids": [5, 7], "extra": {}}) == {5: "5", 7: "7"}
    lvis = tmp_path / "train.json"
    lvis.write_text(json.dumps({"categories": [{"id": 7, "name": "dog"}, {"id": 9, "name": "cat"}]}))
    assert new_images.category_names(meta, lvis) == {5: "5", 7: "dog"}
    lvis.write_text(json.dumps([1, 2]))
    with pytest.raises(new_images.PredictInputError, match="not an LVIS-format file with a 'categories' list"):
        new_images.category_names(meta, lvis)


def test_test_sizes_come_from_a_tests_entry_with_the_flags_on_top(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("tests:\n  base: {min_size: 128, max_size: 240, max_dets: 100}\n"
                      "  wide: {from: base, max_size: 300}\n")
    args = parse_args(["--model", "m", "--images", "x", "--out", "o", "--test", "wide", "--config", str(config)])
    cfg = test_config_from_args(args)
    assert (cfg.min_size, cfg.max_size, cfg.max_dets, cfg.multi_scale) == (128, 300, 100, False)
    args = parse_args(["--model", "m", "--images", "x", "--out", "o", "--test", "wide", "--config", str(config),
                       "--min-size", "64"])
    assert test_config_from_args(args).min_size == 64
    args = parse_args(["--model", "m", "--images", "x", "--out", "o", "--test", "nope", "--config", str(config)])
    with pytest.raises(ValueError, match=r"tests: no entry 'nope' \(defined: \['base', 'wide'\]\)"):
        test_config_from_args(args)


def test_the_console_script_and_the_workflow_script_call_the_same_main():
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["longtail-predict"] == "longtail_seg.inference.predict_cli:main"
    assert "from longtail_seg.inference.predict_cli import main" in (
        REPO_ROOT / "workflow_scripts" / "predict.py").read_text()
