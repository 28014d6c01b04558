"""Seed replicates in the workflow (config `replicates`): the dry-run DAG of table1_replicates on the tiny config
with two seeds: the configured seed reuses the default jobs unchanged, the other trains with its own seed into
results/tiny/seed1/ on the shared data and statistics, and the replicate table reads both seeds' metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.test_workflow import _argument, _job_blocks, _model, _shell_commands, _snakemake


def _dry_run(workflow: Path, *args: str, override: str = "") -> str:
    extra = workflow / "replicates_override.yaml"
    extra.write_text(override or "{}\n")
    result = _snakemake("-n", *args, "--configfile", "configs/tiny.yaml", str(extra), cwd=workflow)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def replicate_run(shared_workflow_copy: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(job blocks, shell commands) of table1_replicates with seeds [0, 1], and the commands of plain table1."""
    stdout = _dry_run(shared_workflow_copy, "table1_replicates", override="replicates: [0, 1]\n")
    table1 = _shell_commands(_dry_run(shared_workflow_copy, "table1"))
    return _job_blocks(stdout), _shell_commands(stdout), table1


def _train_cfg(command: str) -> dict:
    return json.loads(_argument(command, "--train-cfg"))


def test_the_configured_seed_reuses_the_default_jobs_unchanged(replicate_run):
    blocks, commands, table1 = replicate_run
    default_jobs = {o: c for o, c in commands.items() if not o.startswith("results/tiny/seed")}
    training = {o: c for o, c in table1.items() if o.endswith(("model_final.pth", "metrics.json", "labels.json"))}
    assert len(training) == 16  # 10 models, 5 evaluations, the pseudo labels
    assert all(default_jobs[o] == c for o, c in training.items())
    assert not any("seed0" in output for output in blocks)


def test_the_other_seed_trains_with_its_seed_into_its_own_folder(replicate_run):
    blocks, commands, _ = replicate_run
    models = set(re.findall(r"results/tiny/seed1/models/([A-Za-z0-9_]+)/model_final\.pth", " ".join(blocks)))
    assert models == set(re.findall(r"results/tiny/models/([A-Za-z0-9_]+)/model_final\.pth", " ".join(blocks)))
    assert {"representation", "bgs", "double", "bgs_pseudo", "pseudo_double"} <= models
    representation = commands[_model("tiny/seed1", "representation")]
    assert _train_cfg(representation)["seed"] == 1
    assert _train_cfg(commands[_model("tiny", "representation")])["seed"] == 0
    assert _argument(representation, "--repeat-factors") == "results/tiny/stats/image_repeat_factors.csv"
    assert _argument(representation, "--train-annotations") == "data/tiny/annotations/train.json"
    assert "logs/tiny/seed1/train_representation/representation.log" in representation
    for model in ("bgs", "bgs_class_aware_pseudo"):
        retrain = commands[_model("tiny/seed1", model)]
        assert _train_cfg(retrain)["seed"] == 1 and _train_cfg(commands[_model("tiny", model)])["seed"] == 0
        assert _argument(retrain, "--checkpoint") == _model("tiny/seed1", "representation")
        assert _argument(retrain, "--stats-dir") == "results/tiny/stats"
        # apart from the seed, the same job as the default seed's
        assert {**_train_cfg(retrain), "seed": 0} == _train_cfg(commands[_model("tiny", model)])
    assert _argument(commands[_model("tiny/seed1", "bgs_pseudo")], "--pseudo-annotations") == \
        "results/tiny/seed1/pseudo/pseudo_labels.json"
    teacher = commands["results/tiny/seed1/pseudo/pseudo_labels.json"]
    assert _argument(teacher, "--teacher") == _model("tiny/seed1", "mosaic_double")
    assert "benchmark: benchmarks/out/tiny/seed1/train_representation/representation.tsv" in \
        blocks[_model("tiny/seed1", "representation")]
    # one data set, one data check and one set of statistics for both seeds
    assert sum(o.startswith("data/tiny/") for o in blocks) == 1
    assert not any(o.startswith(("results/tiny/seed1/stats", "results/tiny/seed1/checks")) for o in blocks)


def test_the_replicate_table_reads_every_seed_row_by_row(replicate_run):
    _, commands, _ = replicate_run
    command = commands["results/tiny/tables/table1_replicates.csv"]
    assert _argument(command, "--seeds") == "0" and "--seeds 0 1 --metrics" in command
    metrics = command.split("--metrics ", 1)[1].split(" --out-csv")[0].split()
    rows = json.loads(_argument(command, "--rows"))
    assert metrics == [f"results/tiny/{folder}eval/{row['model']}/{row['test']}/metrics.json"
                       for folder in ("", "seed1/") for row in rows]
    assert "logs/tiny/tables/table1_replicates.log" in command


def test_replicates_off_by_default_and_an_empty_list_says_what_to_set(shared_workflow_copy):
    stdout = _dry_run(shared_workflow_copy, "all")
    assert not any("/seed" in output or "replicates" in output for output in _job_blocks(stdout))
    assert "rule replicate_table:" not in stdout
    result = _snakemake("-n", "table1_replicates", "--configfile", "configs/tiny.yaml", cwd=shared_workflow_copy)
    assert result.returncode != 0
    assert "config `replicates` is empty" in result.stdout + result.stderr


def test_the_default_target_replicates_the_replicate_tables(shared_workflow_copy):
    stdout = _dry_run(shared_workflow_copy, override="replicates: [0, 2]\nreplicate_tables: [table1, table2]\n")
    outputs = set(_job_blocks(stdout))
    assert {"results/tiny/tables/table1_replicates.csv", "results/tiny/tables/table2_replicates.csv"} <= outputs
    assert _model("tiny/seed2", "pseudo_double") in outputs and "results/tiny/tables/table3_replicates.csv" \
        not in outputs
