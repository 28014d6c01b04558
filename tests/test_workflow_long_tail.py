"""The workflow wiring of the long-tail classifiers and NorCal (one dry run): a federated classifier reads the
dataset statistics in representation learning and in retraining, a NorCal test passes them to inference, and
the other jobs neither read them nor change."""

from __future__ import annotations

from tests.conftest import copy_workflow
from tests.test_workflow import _argument, _job_blocks, _shell_commands, _snakemake

OVERRIDE = """
model:
  classifier: {type: federated, num_sampled_classes: 20}
models:
  seesaw_rt: {stage: retrain, from: representation, classifier: {type: seesaw}, retrain: {sampler: repeat_factor}}
  federated_rt: {stage: retrain, from: representation, classifier: {type: federated}}
tests:
  norcal: {from: single_scale, norcal_gamma: 0.5}
tables:
  long_tail:
    - {label: "federated", model: representation, test: single_scale}
    - {label: "seesaw + norcal", model: seesaw_rt, test: norcal}
    - {label: "federated retrained", model: federated_rt, test: single_scale}
"""
STATS = "results/tiny/stats/category_stats.csv"


def test_dry_run_passes_the_statistics_only_to_the_jobs_that_read_them(tmp_path):
    workflow = copy_workflow(tmp_path)
    (workflow / "override.yaml").write_text(OVERRIDE)
    result = _snakemake("-n", "long_tail", "--configfile", "configs/tiny.yaml", "override.yaml", cwd=workflow)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    commands, blocks = _shell_commands(result.stdout), _job_blocks(result.stdout)
    train = commands["results/tiny/models/representation/model_final.pth"]
    assert _argument(train, "--category-stats") == STATS
    assert STATS in blocks["results/tiny/models/representation/model_final.pth"].split("output:")[0]
    assert '"type": "seesaw"' in _argument(commands["results/tiny/models/seesaw_rt/model_final.pth"],
                                          "--classifier-cfg")
    norcal = commands["results/tiny/predictions/seesaw_rt/norcal.json"]
    assert _argument(norcal, "--category-stats") == STATS and '"norcal_gamma": 0.5' in _argument(norcal, "--test-cfg")
    plain = commands["results/tiny/predictions/federated_rt/single_scale.json"]
    assert _argument(plain, "--category-stats") == "--out" and "norcal_gamma" not in plain  # the option, no file
    assert STATS not in blocks["results/tiny/predictions/federated_rt/single_scale.json"].split("output:")[0]


def test_an_unknown_key_of_a_new_classifier_fails_the_dag_build_with_its_path(tmp_path):
    workflow = copy_workflow(tmp_path)
    (workflow / "override.yaml").write_text("models:\n  bad: {stage: retrain, from: representation, "
                                            "classifier: {type: eqlv2, gama: 3}}\n")
    result = _snakemake("-n", "--configfile", "configs/tiny.yaml", "override.yaml", cwd=workflow)
    assert result.returncode != 0
    assert "models.bad.classifier.gama: unknown key(s) of the eqlv2 classifier" in result.stdout + result.stderr
