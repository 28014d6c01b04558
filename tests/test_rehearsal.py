"""The LVIS rehearsal (configs/lvis_rehearsal.yaml): its DAG at LVIS settings, its config checks, and the small
variant (configs/lvis_rehearsal_tiny.yaml) run end to end: every table from 1203-category data at COCO's sizes."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from tests.test_workflow import _argument, _shell_commands, _snakemake

REHEARSAL = ("--configfile", "configs/lvis_rehearsal.yaml")
TINY_REHEARSAL = ("--configfile", "configs/lvis_rehearsal.yaml", "configs/lvis_rehearsal_tiny.yaml")
TABLES = ("table1", "table2", "table3", "controls")


def test_rehearsal_dag_runs_every_table_at_lvis_settings(shared_workflow_copy):
    result = _snakemake("-n", *REHEARSAL, cwd=shared_workflow_copy)
    assert result.returncode == 0, result.stderr
    commands = _shell_commands(result.stdout)
    for table in TABLES:
        assert f"results/lvis_rehearsal/tables/{table}.csv" in commands
    make = commands["data/lvis_rehearsal/annotations/train.json"]
    assert "--mode lvis" in make and "--image-size" not in make
    train = commands["results/lvis_rehearsal/models/representation/model_final.pth"]
    model = json.loads(_argument(train, "--model-cfg"))
    assert model["backbone"] == "resnet50" and model["roi_feature_levels"] == ["0", "1", "2", "3"]
    assert model["rpn_post_nms_top_n_test"] == 1000 and model["box_detections_per_img"] == 300
    assert json.loads(_argument(train, "--train-cfg"))["min_size_range"] == [640, 800]
    single = json.loads(_argument(commands["results/lvis_rehearsal/predictions/bgs/single_scale.json"], "--test-cfg"))
    assert (single["min_size"], single["max_size"], single["max_dets"]) == (800, 1333, 300)
    multi = json.loads(_argument(
        commands["results/lvis_rehearsal/predictions/pseudo_double/multi_scale_mask.json"], "--test-cfg"))
    assert multi["scales"] == [800, 1000, 1200, 1400, 1600] and multi["flip"] and multi["mask_voting"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("datasets:\n  lvis_rehearsal:\n    synthetic: {image_size: 640}\n",
         "datasets.lvis_rehearsal.synthetic.image_size: the lvis mode draws COCO's image sizes"),
        ("datasets:\n  lvis_rehearsal:\n    synthetic: {num_train: 50}\n",
         "datasets.lvis_rehearsal.synthetic.num_train: the lvis mode puts every one of the 1203 LVIS categories"),
        ("datasets:\n  lvis_rehearsal:\n    synthetic: {mode: coco}\n", "datasets.lvis_rehearsal.synthetic.mode"),
    ],
    ids=["image-size", "too-small", "mode"],
)
def test_bad_generator_settings_fail_the_dry_run_naming_the_key(shared_workflow_copy, override, message):
    bad = shared_workflow_copy / "bad_synthetic.yaml"
    bad.write_text(override)
    result = _snakemake("-n", "--configfile", "configs/lvis_rehearsal.yaml", str(bad), cwd=shared_workflow_copy)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout


def test_stating_the_default_mode_keeps_generated_demo_data(workflow_copy):
    """config.yaml now states `mode: demo`; a dataset generated before the key existed is not generated again."""
    result = _snakemake("--cores", "1", "data/tiny/annotations/train.json", "--configfile", "configs/tiny.yaml",
                        cwd=workflow_copy)
    assert result.returncode == 0, result.stderr[-3000:]
    explicit = workflow_copy / "explicit_mode.yaml"
    explicit.write_text("datasets:\n  tiny:\n    synthetic: {mode: demo}\n")
    again = _snakemake("-n", "data/tiny/annotations/train.json", "--configfile", "configs/tiny.yaml", str(explicit),
                       cwd=workflow_copy)
    assert again.returncode == 0, again.stderr
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_tiny_rehearsal_builds_every_table_from_1203_categories(workflow_copy):
    result = _snakemake("--cores", "2", *TINY_REHEARSAL, cwd=workflow_copy)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = workflow_copy / "results" / "lvis_rehearsal_tiny"
    stats = pd.read_csv(results / "stats" / "category_stats.csv")
    assert len(stats) == 1203 and (stats["image_count"] >= 1).all()
    val = json.loads((workflow_copy / "data" / "lvis_rehearsal_tiny" / "annotations" / "val.json").read_text())
    assert {(image["width"], image["height"]) for image in val["images"]} <= {
        (w, h) for w in range(360, 641) for h in range(360, 641)}
    rows = 0
    for table in TABLES:
        frame = pd.read_csv(results / "tables" / f"{table}.csv")
        assert list(frame.columns)[:5] == ["model", "AP", "APr", "APc", "APf"] and len(frame) >= 2
        assert (results / "tables" / f"{table}.md").stat().st_size > 0
        rows += len(frame)
    metrics = sorted(results.glob("eval/*/*/metrics.json"))
    assert len(metrics) == 10 and rows == 15  # every (model, test) row evaluated once
    for path in metrics:
        assert set(json.loads(path.read_text())) >= {"bbox", "segm"}
    for path in results.glob("predictions/*/*.json"):
        per_image: dict[int, int] = {}
        for prediction in json.loads(path.read_text()):
            per_image[prediction["image_id"]] = per_image.get(prediction["image_id"], 0) + 1
            assert 1 <= prediction["category_id"] <= 1203
        assert max(per_image.values(), default=0) <= 300, path
    assert json.loads((results / "pseudo" / "precision.json").read_text())["labels"]["all"] >= 0
    assert (results / "figures" / "mosaic_samples.png").stat().st_size > 0
    benchmarks = workflow_copy / "benchmarks" / "out" / "lvis_rehearsal_tiny"
    assert len(list(benchmarks.rglob("*.tsv"))) >= 40  # per-rule times of every job
    log = (workflow_copy / "logs" / "lvis_rehearsal_tiny" / "infer" / "pseudo_double" / "multi_scale_mask.log")
    assert re.search(r"\b4 views\b", log.read_text())
