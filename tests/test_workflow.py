"""The Snakemake workflow: lint, formatting, dry runs, and the tiny config run to the stats target."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import REPO_ROOT

WORKFLOW_FILES = ("Snakefile", "rules", "schemas", "workflow_scripts", "config.yaml", "configs", "profiles",
                  "envs", "longtail_seg")


def _snakemake(*args: str, cwd: Path = REPO_ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workflow_copy(tmp_path: Path) -> Path:
    """A copy of the workflow in a temporary folder, as a fresh clone would have it."""
    for name in WORKFLOW_FILES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)
    return tmp_path


def test_snakemake_lint_passes():
    result = _snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_snakefmt_check_passes():
    result = subprocess.run(["snakefmt", "--check", "."], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("extra", [[], ["--configfile", "configs/tiny.yaml"]], ids=["default", "tiny"])
def test_dry_run_builds_the_dag(workflow_copy, extra):
    result = _snakemake("-n", *extra, cwd=workflow_copy)
    assert result.returncode == 0, result.stderr
    for rule in ("make_dataset", "dataset_stats", "ablation_table"):
        assert rule in result.stdout


@pytest.mark.parametrize("target", ["stats", "table1", "table2", "table3", "controls"])
def test_named_targets_exist(workflow_copy, target):
    result = _snakemake("-n", target, "--configfile", "configs/tiny.yaml", cwd=workflow_copy)
    assert result.returncode == 0, result.stderr


def test_invalid_config_is_rejected_with_the_key(workflow_copy):
    bad = workflow_copy / "bad.yaml"
    bad.write_text("stats:\n  rfs_threshold: -1\n  bgs_bins: [10, 100]\n")
    result = _snakemake("-n", "--configfile", str(bad), cwd=workflow_copy)
    assert result.returncode != 0
    assert "rfs_threshold" in result.stderr + result.stdout


def test_lvis_config_builds_the_gpu_dag_from_files_on_disk(workflow_copy):
    """configs/lvis_v1.yaml: the real-data DAG (no generated dataset, no hidden-truth precision), stage 1 under
    torchrun on 4 GPUs with the report's schedule; the annotation files only need to exist for a dry run."""
    for path in ("datasets/lvis/lvis_v1_train.json", "datasets/lvis/lvis_v1_val.json",
                 "datasets/coco/annotations/image_info_unlabeled2017.json"):
        (workflow_copy / path).parent.mkdir(parents=True, exist_ok=True)
        (workflow_copy / path).write_text("{}")
    result = _snakemake("-n", "--configfile", "configs/lvis_v1.yaml", cwd=workflow_copy)
    assert result.returncode == 0, result.stderr
    assert "make_dataset" not in result.stdout and "pseudo_label_precision" not in result.stdout
    assert "torchrun --standalone --nproc_per_node=4" in result.stdout
    train_cfg = json.loads(re.search(r"train\.py .*?--train-cfg '([^']*)'", result.stdout, re.S).group(1))
    assert train_cfg["optimizer"] == "sgd" and train_cfg["max_iterations"] is None
    assert train_cfg["lr_schedule"][-1] == [27, 3e-05] and train_cfg["min_size_range"] == [600, 1000]
    assert "--rfs-threshold 0.001" in result.stdout


def test_lvis_model_config_builds_a_1203_class_detector():
    from longtail_seg.models.detector import build_detector

    model_cfg = dict(yaml.safe_load((REPO_ROOT / "configs" / "lvis_v1.yaml").read_text())["model"])
    model_cfg["pretrained_backbone"] = False  # no download in tests
    model = build_detector(model_cfg, num_classes=1203).eval()
    assert model.roi_heads.box_predictor.classifier.cls_score.out_features == 1204
    assert model.rpn.anchor_generator.num_anchors_per_location() == [3] * 5  # one anchor size per FPN level
    with torch.no_grad():
        detections = model([torch.rand(3, 160, 192)])
    assert set(detections[0]) >= {"boxes", "labels", "scores", "masks"}


@pytest.mark.parametrize("base, problem", [("missing", "names 'missing', which is not a key of 'tests'"),
                                           ("multi_scale_mask", "which is part of a cycle")])
def test_test_entry_inheriting_from_a_bad_base_is_rejected(workflow_copy, base, problem):
    bad = workflow_copy / "bad.yaml"
    bad.write_text(f"tests:\n  multi_scale_box:\n    from: {base}\n")
    result = _snakemake("-n", "--configfile", str(bad), cwd=workflow_copy)
    assert result.returncode != 0
    assert problem in result.stderr + result.stdout


def test_default_table_that_is_not_a_table_is_rejected(workflow_copy):
    bad = workflow_copy / "bad.yaml"
    bad.write_text("default_tables: [table1, tabel2]\n")
    result = _snakemake("-n", "--configfile", str(bad), cwd=workflow_copy)
    assert result.returncode != 0
    assert "['tabel2']" in result.stderr + result.stdout and "default_tables" in result.stderr + result.stdout


@pytest.mark.slow
def test_tiny_config_runs_to_stats(workflow_copy):
    result = _snakemake("--cores", "2", "stats", "--configfile", "configs/tiny.yaml", cwd=workflow_copy)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stats_dir = workflow_copy / "results" / "tiny" / "stats"
    categories = pd.read_csv(stats_dir / "category_stats.csv")
    assert list(categories.columns) == ["category_id", "name", "frequency", "image_count", "instance_count",
                                        "repeat_factor", "bgs_group"]
    images = pd.read_csv(stats_dir / "image_repeat_factors.csv")
    assert abs(images["sampling_prob"].sum() - 1.0) < 1e-9
    assert (images["repeat_factor"] >= 1.0).all()
    train = json.loads((workflow_copy / "data" / "tiny" / "annotations" / "train.json").read_text())
    assert len(images) == len(train["images"])
    assert categories["instance_count"].sum() == len(train["annotations"])
    summary = json.loads((stats_dir / "summary.json").read_text())
    assert summary["images"] == len(train["images"])
    assert (stats_dir / "long_tail.png").stat().st_size > 0
    assert (workflow_copy / "logs" / "tiny" / "dataset_stats.log").exists()
    assert (workflow_copy / "benchmarks" / "out" / "tiny" / "dataset_stats.tsv").exists()


@pytest.mark.slow
def test_tiny_config_runs_the_whole_dag_to_the_tables(workflow_copy):
    result = _snakemake("--cores", "2", "--configfile", "configs/tiny.yaml", cwd=workflow_copy)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = workflow_copy / "results" / "tiny"
    metrics = json.loads((results / "eval" / "representation" / "single_scale" / "metrics.json").read_text())
    assert set(metrics) >= {"bbox", "segm"}
    for table in ("table1", "table2", "table3"):
        frame = pd.read_csv(results / "tables" / f"{table}.csv")
        assert list(frame.columns)[:5] == ["model", "AP", "APr", "APc", "APf"]
        assert "bbox_AP" in frame.columns
    table1 = pd.read_csv(results / "tables" / "table1.csv")
    assert table1["model"].tolist() == ["Representation learning", "+BGS retraining", "+double classifier",
                                        "+balanced mosaic", "+unlabeled (pseudo labels)"]
    assert table1.loc[0, "AP"] == pytest.approx(metrics["segm"]["AP"], abs=0.05)
    table2 = pd.read_csv(results / "tables" / "table2.csv")
    assert table2["model"].tolist() == ["Challenge baseline", "+multi-scale box", "+soft-NMS", "+scale-adaptive",
                                        "+multi-scale mask"]
    assert table2.loc[0, "AP"] == table1.loc[4, "AP"]  # the same model and test as Table 1's last row
    voted = json.loads((results / "predictions" / "pseudo_double" / "multi_scale_mask.json").read_text())
    assert voted and all("segmentation" in p for p in voted)
    log = (workflow_copy / "logs" / "tiny" / "infer" / "pseudo_double" / "multi_scale_mask.log").read_text()
    assert "4 views" in log
    predictions = json.loads((results / "predictions" / "representation" / "single_scale.json").read_text())
    assert all({"image_id", "category_id", "bbox", "score", "segmentation"} <= set(p) for p in predictions)
    # pseudo labels: a non-empty LVIS file, its summary, and the precision against the hidden ground truth
    pseudo = json.loads((results / "pseudo" / "pseudo_labels.json").read_text())
    summary = json.loads((results / "pseudo" / "summary.json").read_text())
    assert summary["images_kept"] == len(pseudo["images"]) > 0
    precision = json.loads((results / "pseudo" / "precision.json").read_text())
    assert precision["labels"]["all"] == len(pseudo["annotations"])
    log = (workflow_copy / "logs" / "tiny" / "retrain_classifier" / "bgs_pseudo.log").read_text()
    assert f"({len(pseudo['images'])} pseudo-labelled)" in log and "mosaic on" in log
    assert (results / "figures" / "mosaic_samples.png").stat().st_size > 0
    # A second run finds everything up to date: nothing is retrained.
    again = _snakemake("-n", "--configfile", "configs/tiny.yaml", cwd=workflow_copy)
    assert "Nothing to be done" in again.stdout + again.stderr
    # The control table is outside the default target: built on request, it retrains only the control models.
    assert not (results / "models" / "double_long").exists()
    controls = _snakemake("-n", "controls", "--configfile", "configs/tiny.yaml", cwd=workflow_copy)
    assert controls.returncode == 0, controls.stderr
    assert set(re.findall(r"output: results/tiny/models/([A-Za-z0-9_]+)/model_final.pth", controls.stdout)) == {
        "bgs_long", "bgs_class_aware_long", "double_long"}
    # Changing one row's settings reruns only what depends on them.
    assert _models_to_rebuild(workflow_copy, "pseudo_labels:\n  score_threshold: 0.1\n") == {
        "bgs_pseudo", "bgs_class_aware_pseudo", "pseudo_double"}
    assert _models_to_rebuild(workflow_copy, "augment:\n  mosaic:\n    prob: 0.5\n") == {
        "bgs_mosaic", "bgs_class_aware_mosaic", "mosaic_double", "bgs_pseudo", "bgs_class_aware_pseudo",
        "pseudo_double"}


def _models_to_rebuild(workflow_copy: Path, override: str) -> set[str]:
    """Models whose model_final.pth a dry run with tiny.yaml plus ``override`` (YAML text) would rebuild."""
    extra = workflow_copy / "override.yaml"
    extra.write_text(override)
    result = _snakemake("-n", "--configfile", "configs/tiny.yaml", str(extra), cwd=workflow_copy)
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"output: results/tiny/models/([A-Za-z0-9_]+)/model_final.pth", result.stdout))
