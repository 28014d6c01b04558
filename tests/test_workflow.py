"""The Snakemake workflow: lint, formatting, dry runs, and the tiny config run to the stats target."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import REPO_ROOT, box_annotation, write_lvis


def _snakemake(*args: str, cwd: Path = REPO_ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _model(dataset: str, model: str) -> str:
    """The checkpoint of a model."""
    return f"results/{dataset}/models/{model}/model_final.pth"


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


@pytest.mark.parametrize("target", ["stats", "table1", "table2", "table3", "controls", "table_methods"])
def test_named_targets_exist(workflow_copy, target):
    result = _snakemake("-n", target, "--configfile", "configs/tiny.yaml", cwd=workflow_copy)
    assert result.returncode == 0, result.stderr


# The methods table (table_methods): model -> (rule that builds it, its classifier type or None for a double model)
METHODS_MODELS = {
    "representation": ("train_representation", "softmax"), "rfs_short": ("train_representation", "softmax"),
    "seesaw": ("train_representation", "seesaw"), "eqlv2": ("train_representation", "eqlv2"),
    "federated": ("train_representation", "federated"), "crt": ("retrain_classifier", "softmax"),
    "softmax_rfs": ("retrain_classifier", "softmax"), "bgs": ("retrain_classifier", "bgs"),
    "bgs_class_aware": ("retrain_classifier", "bgs"), "seesaw_retrain": ("retrain_classifier", "seesaw"),
    "eqlv2_retrain": ("retrain_classifier", "eqlv2"), "double": ("combine_classifiers", None),
}


def test_methods_table_dag_trains_each_method_once_on_the_shared_representation(shared_workflow_copy):
    """Every method's job is in the DAG of table_methods, each retraining starts from the one `representation`
    checkpoint, whose job is the one Table 1 runs; each loss model trains with its own classifier; every row is
    evaluated under challenge2021 and NorCal reads the statistics."""
    result = _snakemake("-n", "table_methods", "--configfile", "configs/tiny.yaml", cwd=shared_workflow_copy)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    blocks, commands = _job_blocks(result.stdout), _shell_commands(result.stdout)
    models = {output.split("/")[3]: block for output, block in blocks.items() if output.endswith("model_final.pth")}
    assert set(models) == set(METHODS_MODELS)
    for model, (rule, classifier) in METHODS_MODELS.items():
        command = commands[_model("tiny", model)]
        assert f"rule {rule}:" in models[model], model
        if rule == "train_representation":
            assert json.loads(_argument(command, "--model-cfg"))["classifier"]["type"] == classifier, model
            assert ("--category-stats" in command) == (classifier == "federated"), model
        elif rule == "retrain_classifier":
            assert json.loads(_argument(command, "--classifier-cfg"))["type"] == classifier, model
            assert _argument(command, "--checkpoint") == _model("tiny", "representation"), model
    short = [json.loads(_argument(commands[_model("tiny", m)], "--train-cfg"))
             for m in ("rfs_short", "seesaw", "eqlv2", "federated")]
    assert all(cfg == short[0] for cfg in short)  # the loss rows differ from their reference in the loss only
    table1 = _snakemake("-n", "table1", "--configfile", "configs/tiny.yaml", cwd=shared_workflow_copy)
    shared = _model("tiny", "representation")
    assert _shell_commands(table1.stdout)[shared] == commands[shared]
    table = pd.DataFrame(json.loads(_argument(commands["results/tiny/tables/table_methods.csv"], "--rows")))
    assert len(table) == 12 and set(table["model"]) == set(METHODS_MODELS) - {"bgs_class_aware"}
    evaluations = {o: c for o, c in commands.items()
                   if o.startswith("results/tiny/eval/") and o.endswith("metrics.json")}
    assert len(evaluations) == 12
    assert all(_argument(c, "--protocol") == "challenge2021" for c in evaluations.values())
    norcal = commands["results/tiny/predictions/representation/methods_norcal.json"]
    assert json.loads(_argument(norcal, "--test-cfg"))["norcal_gamma"] == 0.6
    assert _argument(norcal, "--category-stats") == "results/tiny/stats/category_stats.csv"


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
    train_cfg = json.loads(_argument(_shell_commands(result.stdout)[_model("lvis_v1", "representation")],
                                     "--train-cfg"))
    assert train_cfg["optimizer"] == "sgd" and train_cfg["max_iterations"] is None and train_cfg["momentum"] == 0.9
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


# A typo anywhere fails the dry run within seconds, before any job, naming the key's full path and the keys allowed
# there (longtail_seg/workflow_config.py; tests/test_workflow_config.py covers every section).
FAST_FAILURES = {
    "retrain": ("retrain:\n  smapler: class_aware\n",
                ["retrain.smapler (did you mean 'sampler'?)", "retrain allows: amp, batch_size,"]),
    "model-retrain": ("models:\n  bgs_class_aware:\n    retrain: {images_per_categroy: 3}\n",
                      ["models.bgs_class_aware.retrain.images_per_categroy (did you mean 'images_per_category'?)",
                       "models.bgs_class_aware.retrain allows: amp, batch_size,"]),
    "stage": ("models:\n  bgs:\n    train: {lr: 0.1}\n",
              ["models.bgs.train: only representation models take 'train'", "models.bgs.retrain"]),
    "test": ("tests:\n  multi_scale_adaptive:\n    scale_ranges: [[0, 10]]\n",
             ["tests.multi_scale_adaptive", "scale_ranges needs one [min, max] per scale"]),
    # a wrong type or range: the schema's message with the key's full path, or the code's where the schema is blind
    "retrain-type": ('retrain: {batch_size: "4"}\n',
                     ["retrain.batch_size: '4' is not of type 'integer' (a string: write the number without quotes)"]),
    "model-retrain-range": ("models:\n  bgs:\n    retrain: {batch_size: -1}\n",
                            ["models.bgs.retrain.batch_size: -1 is less than the minimum of 1"]),
    "model-retrain-code": ("models:\n  bgs:\n    retrain: {min_size_range: [144, 112], lr: .nan}\n",
                           ["models.bgs.retrain.lr must be a number > 0, got nan"]),
    # a table row naming a model that does not exist: an error, not "Nothing to be done" beside an old table
    "table-row-model": ("tables:\n  table1:\n    - {label: x, model: representaton, test: single_scale}\n",
                        ["tables.table1[0].model: 'representaton' is not a key of 'models'"]),
}


@pytest.mark.parametrize("case", FAST_FAILURES)
def test_a_config_error_fails_the_dry_run_fast_with_its_path(workflow_copy, case):
    override, expected = FAST_FAILURES[case]
    bad = workflow_copy / "bad.yaml"
    bad.write_text(override)
    start = time.perf_counter()
    result = _snakemake("-n", "--configfile", str(bad), cwd=workflow_copy)
    elapsed = time.perf_counter() - start
    assert result.returncode != 0
    for part in expected:  # on stderr, even in a dry run (which logs to stdout)
        assert part in result.stderr, result.stderr
    assert "Building DAG of jobs" not in result.stdout + result.stderr  # failed before any job was considered
    assert elapsed < 20, f"took {elapsed:.1f}s"


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


# Each job's parameters hold only what the job reads: one changed key changes the command line (every parameter is
# on it) of exactly the jobs that read it, so Snakemake's params trigger reruns exactly those.
DEMO_TABLES = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())["tables"]
PARAM_CHANGES = {
    "retrain.images_per_category": ("retrain:\n  images_per_category: 7\n", {
        _model("demo", m) for m in ("bgs_class_aware", "bgs_class_aware_mosaic", "bgs_class_aware_pseudo",
                                    "bgs_class_aware_long")}),
    "augment.mosaic.prob": ("augment:\n  mosaic:\n    prob: 0.5\n", {
        "results/demo/figures/mosaic_samples.png",
        *(_model("demo", m)
          for m in ("bgs_mosaic", "bgs_class_aware_mosaic", "bgs_pseudo", "bgs_class_aware_pseudo"))}),
    "tests.multi_scale_box.flip": ("tests:\n  multi_scale_box:\n    flip: false\n", {
        f"results/demo/predictions/pseudo_double/{t}.json"
        for t in ("multi_scale_box", "multi_scale_soft_nms", "multi_scale_adaptive", "multi_scale_mask")}),
    "retrain.momentum": ("retrain:\n  momentum: 0.5\n", set()),  # adamw: no job reads it
    # boundary AP changes the evaluations of single_scale and the tests inheriting from it, not their inference
    "tests.single_scale.protocol": ("tests:\n  single_scale:\n    protocol: boundary\n", {
        *(f"results/demo/eval/{m}/single_scale/metrics.json"
          for m in ("representation", "bgs", "double", "mosaic_double", "pseudo_double", "double_long")),
        *(f"results/demo/eval/pseudo_double/{t}/metrics.json"
          for t in ("multi_scale_box", "multi_scale_soft_nms", "multi_scale_adaptive", "multi_scale_mask"))}),
    "analysis.top_changes": ("analysis:\n  top_changes: 5\n", {
        f"results/demo/analysis/tables/{t}/category_changes.csv" for t in ("table1", "table2", "table3", "controls")}),
    "analysis.confusion_min_score": ("analysis:\n  confusion_min_score: 0.5\n", {
        f"results/demo/eval/{row['model']}/{row['test']}/errors.json"
        for table in ("table1", "table2", "table3", "controls") for row in DEMO_TABLES[table]}),
}


@pytest.fixture(scope="module")
def base_commands(shared_workflow_copy: Path) -> dict[str, str]:
    return _job_commands(shared_workflow_copy, "")


@pytest.mark.parametrize("key", PARAM_CHANGES)
def test_one_changed_key_changes_only_the_jobs_that_read_it(shared_workflow_copy, base_commands, key):
    override, expected = PARAM_CHANGES[key]
    changed = _job_commands(shared_workflow_copy, override)
    assert set(changed) == set(base_commands)  # the same jobs
    assert {output for output, command in changed.items() if command != base_commands[output]} == expected


def test_table_labels_with_quotes_pass_safely(workflow_copy):
    """A label with quotes, $(...), backticks and shell operators reaches the table verbatim and runs nothing."""
    labels = ["it's", 'say "hi"', "$(touch pwned) `touch pwned2` \\ ; & | > out"]
    pairs = [("representation", "single_scale"), ("bgs", "single_scale"), ("double", "single_scale")]
    rows = [{"label": label, "model": model, "test": test} for label, (model, test) in zip(labels, pairs)]
    (workflow_copy / "quoted.yaml").write_text(yaml.safe_dump({"tables": {"quoted": rows}}))
    for index, (model, test) in enumerate(pairs):  # cached metrics: the table is the only job to run
        metrics = workflow_copy / "results" / "demo" / "eval" / model / test / "metrics.json"
        metrics.parent.mkdir(parents=True)
        values = {"AP": 10.0 + index, "APr": 1.0, "APc": 2.0, "APf": 3.0}
        metrics.write_text(json.dumps({"segm": values, "bbox": values}))
    result = _snakemake("results/demo/tables/quoted.csv", "--cores", "1", "--configfile", "quoted.yaml",
                        "--allowed-rules", "ablation_table", cwd=workflow_copy)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = pd.read_csv(workflow_copy / "results" / "demo" / "tables" / "quoted.csv")
    assert table["model"].tolist() == labels and table["AP"].tolist() == [10.0, 11.0, 12.0]
    assert not list(workflow_copy.glob("pwned*")) and not (workflow_copy / "out").exists()


def test_dataset_paths_with_spaces_and_quotes_pass_safely(workflow_copy):
    """An LVIS dataset whose annotation path has a space and a quote: the stats rule reads it."""
    train = workflow_copy / "my data" / "it's train.json"
    train.parent.mkdir()
    categories = [{"id": c, "name": f"cat{c}", "frequency": "f", "image_count": 0, "instance_count": 0}
                  for c in (1, 2)]
    images = [{"id": i, "file_name": f"{i}.png", "height": 32, "width": 32, "neg_category_ids": [],
               "not_exhaustive_category_ids": []} for i in (1, 2, 3)]
    annotations = [box_annotation(1, 1, 1, [2, 2, 10, 10]), box_annotation(2, 2, 2, [0, 0, 8, 16]),
                   box_annotation(3, 3, 1, [4, 4, 4, 4])]
    write_lvis(train, images, annotations, categories)
    paths = {"train_json": "my data/it's train.json", "val_json": 'my data/"val".json',
             "unlabeled_json": "my data/un labeled.json", "image_root": "my data/images $(touch pwned)"}
    for name in ('"val".json', "un labeled.json"):  # only a dry run reads these: they need only exist
        (train.parent / name).write_text("{}")
    (train.parent / "images $(touch pwned)").mkdir()
    config = {"dataset": "real", "datasets": {"real": {"source": "lvis", **paths}}}
    (workflow_copy / "real.yaml").write_text(yaml.safe_dump(config))
    result = _snakemake("--cores", "1", "stats", "--configfile", "real.yaml", cwd=workflow_copy)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((workflow_copy / "results" / "real" / "stats" / "summary.json").read_text())
    assert summary["images"] == 3 and summary["instances"] == 3
    assert not list(workflow_copy.glob("pwned*"))
    # every path from the config reaches the other jobs' command lines as one argument
    dry = _snakemake("-n", "--configfile", "real.yaml", cwd=workflow_copy)
    assert dry.returncode == 0, dry.stderr
    command = shlex.split(_shell_commands(dry.stdout)["results/real/predictions/representation/single_scale.json"])
    assert _argument(command, "--annotations") == 'my data/"val".json'
    assert _argument(command, "--image-root") == "my data/images $(touch pwned)"


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
def test_tiny_config_runs_the_whole_dag_to_the_tables(tiny_run):
    workflow_copy = tiny_run  # the whole default DAG, run once for this test and the report's (conftest.py)
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
    # the analysis of each default table: per-row category AP, per-table changes, errors and viewer
    category_ap = pd.read_csv(results / "analysis" / "representation" / "single_scale" / "category_ap.csv")
    assert list(category_ap.columns) == ["category_id", "name", "frequency", "instance_count", "AP_bbox", "AP_segm"]
    changes = pd.read_csv(results / "analysis" / "tables" / "table1" / "category_changes.csv")
    assert changes["step"].unique().tolist() == table1["model"].tolist()[1:]
    errors = pd.read_csv(results / "analysis" / "tables" / "table2" / "errors.csv")
    assert errors["model"].tolist() == table2["model"].tolist() and (errors.filter(like="dAP_") >= 0).all().all()
    for table in ("table1", "table2", "table3"):
        assert (results / "analysis" / "tables" / table / "viewer.png").stat().st_size > 0
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
    # Parameters hold only what a job reads: against the recorded parameters, only the readers changed (the
    # class-aware pseudo-label model reads it too, but reruns anyway: its teacher's branch changed).
    assert _params_changed(workflow_copy, "retrain:\n  images_per_category: 7\n") == {
        _model("tiny", m) for m in ("bgs_class_aware", "bgs_class_aware_mosaic")}
    assert _models_to_rebuild(workflow_copy, "retrain:\n  momentum: 0.5\n") == set()  # adamw never reads it
    # Run settings (logging, loader workers, checkpoint period) are not tracked parameters: nothing reruns.
    run_settings = "train:\n  log_period: 1\n  num_workers: 1\nretrain:\n  checkpoint_period: 1\n  progress_bar: true\n"
    assert _jobs_to_run(workflow_copy, run_settings) == set()
    # The BGS bins are read by classifier retraining, not by representation learning.
    rebuilt = _models_to_rebuild(workflow_copy, "stats:\n  bgs_bins: [5, 50, 500]\n")
    assert "representation" not in rebuilt and {"bgs", "bgs_class_aware"} <= rebuilt


def _params_changed(workflow_copy: Path, override: str) -> set[str]:
    """Outputs that a dry run with tiny.yaml plus ``override`` (YAML text) reruns because their parameters changed.
    (Not `--list-changes params`: Snakemake 9.27 lists every output there, changed or not.)"""
    extra = workflow_copy / "override.yaml"
    extra.write_text(override)
    result = _snakemake("-n", "--configfile", "configs/tiny.yaml", str(extra), cwd=workflow_copy)
    assert result.returncode == 0, result.stderr
    return {output for output, block in _job_blocks(result.stdout).items()
            if "reason: Params have changed" in block}


def _jobs_to_run(workflow_copy: Path, override: str) -> set[str]:
    """First outputs of the jobs a dry run with tiny.yaml plus ``override`` (YAML text) would run."""
    extra = workflow_copy / "override.yaml"
    extra.write_text(override)
    result = _snakemake("-n", "--configfile", "configs/tiny.yaml", str(extra), cwd=workflow_copy)
    assert result.returncode == 0, result.stderr
    return set(_job_blocks(result.stdout))


def _models_to_rebuild(workflow_copy: Path, override: str) -> set[str]:
    """Models whose model_final.pth a dry run with tiny.yaml plus ``override`` (YAML text) would rebuild."""
    extra = workflow_copy / "override.yaml"
    extra.write_text(override)
    result = _snakemake("-n", "--configfile", "configs/tiny.yaml", str(extra), cwd=workflow_copy)
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"output: results/tiny/models/([A-Za-z0-9_]+)/model_final.pth", result.stdout))



def _job_blocks(dry_run_stdout: str) -> dict[str, str]:
    """The jobs of a dry run's output: first output -> the job's text (rule, reason, shell command, ...)."""
    blocks = {}
    for block in re.split(r"\n\[[^\]\n]+\]\n", dry_run_stdout):
        output = re.search(r"^    output: ([^,\n]+)", block, re.M)
        if output:
            blocks[output.group(1)] = block
    return blocks


def _shell_commands(dry_run_stdout: str) -> dict[str, str]:
    """The jobs of a dry run's output (printshellcmds, from profiles/default): first output -> shell command."""
    return {output: block.split("Shell command:", 1)[1].strip()
            for output, block in _job_blocks(dry_run_stdout).items() if "Shell command:" in block}


def _argument(command: str | list[str], option: str) -> str:
    """The value after ``option`` on a command line (a string is split as the shell would)."""
    words = shlex.split(command) if isinstance(command, str) else command
    return words[words.index(option) + 1]


def _job_commands(workflow: Path, override: str) -> dict[str, str]:
    """Every job of the default and control tables (a dry run in a fresh copy), with ``override`` (YAML text)."""
    extra = workflow / "override.yaml"
    extra.write_text(override or "{}\n")
    result = _snakemake("-n", "all", "controls", "--configfile", str(extra), cwd=workflow)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    commands = _shell_commands(result.stdout)
    assert len(commands) > 30, result.stdout[-3000:]
    return commands


@pytest.mark.slow
def test_tiny_methods_table_runs_with_the_protocol_columns(workflow_copy):
    """A real tiny run of table_methods cut to four rows (the shared representation model with and without NorCal,
    Seesaw retraining on it, and Seesaw representation learning): the table has the challenge2021 columns with the
    values of each row's metrics.json, and Table 1 then reuses the representation model."""
    rows = [row for row in yaml.safe_load((workflow_copy / "config.yaml").read_text())["tables"]["table_methods"]
            if (row["model"], row["test"]) in {("representation", "methods"), ("representation", "methods_norcal"),
                                               ("seesaw_retrain", "methods"), ("seesaw", "methods")}]
    assert len(rows) == 4
    (workflow_copy / "methods.yaml").write_text(yaml.safe_dump({"tables": {"table_methods": rows}}))
    result = _snakemake("--cores", "2", "table_methods", "--configfile", "configs/tiny.yaml", "methods.yaml",
                        cwd=workflow_copy)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = workflow_copy / "results" / "tiny"
    table = pd.read_csv(results / "tables" / "table_methods.csv")
    assert table["model"].tolist() == [row["label"] for row in rows]
    groups = ["AP", "APr", "APc", "APf"]
    assert list(table.columns)[1:17] == [g + s for s in ("", "_fixed", "_boundary", "_fixed_boundary") for g in groups]
    for index, row in enumerate(rows):
        metrics = json.loads((results / "eval" / row["model"] / row["test"] / "metrics.json").read_text())
        for column in ("AP", "AP_fixed", "AP_boundary", "AP_fixed_boundary"):
            assert table.loc[index, column] == pytest.approx(metrics["segm"][column], abs=0.05), (row, column)
        assert table.loc[index, "bbox_AP_fixed"] == pytest.approx(metrics["bbox"]["AP_fixed"], abs=0.05)
    checkpoint = torch.load(results / "models" / "seesaw" / "model_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["model_cfg"]["classifier"]["type"] == "seesaw"
    assert "representation" not in _models_to_rebuild(workflow_copy, "{}\n")  # Table 1 reuses it
