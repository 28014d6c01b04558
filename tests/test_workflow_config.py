"""longtail_seg/workflow_config.py: every typo and every inconsistent config fails before any job runs, naming the key's
full path and the fix; config.yaml, the schema and the code's config classes agree; each job's settings hold only
the keys it reads."""

from __future__ import annotations

import copy
import subprocess
import sys
from dataclasses import asdict, fields
from typing import Any

import jsonschema
import pytest
import yaml

from longtail_seg import workflow_config
from longtail_seg.config_keys import check_int
from longtail_seg.engine.config import (
    NAMED_LR_SCHEDULES,
    OPTIMIZERS,
    RETRAIN_SAMPLERS,
    RETRAIN_VALUE_CHECKS,
    TRAIN_SAMPLERS,
    TRAIN_VALUE_CHECKS,
    RetrainConfig,
    TrainConfig,
)
from longtail_seg.inference.config import MERGE_METHODS, PROTOCOLS, SOFT_NMS_METHODS, TestConfig
from longtail_seg.inference.config import VALUE_CHECKS as TEST_VALUE_CHECKS
from longtail_seg.models.config import BACKBONES, DEFAULT_MODEL_CFG, MODEL_VALUE_CHECKS, NORMS, resolve_model_cfg
from longtail_seg.models.registry import ROI_HEADS
from longtail_seg.workflow_config import (
    check_unknown_keys,
    check_workflow_config,
    config_error_message,
    is_multi_scale_test,
    key_path,
    load_configfiles,
    load_schema,
    merge_configs,
    model_job_settings,
    training_job_settings,
)
from tests.conftest import REPO_ROOT

SCHEMA = load_schema(REPO_ROOT / "schemas" / "config.schema.yaml")
BASE = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
DEFS = SCHEMA["$defs"]


def merged(*overrides: dict[str, Any]) -> dict[str, Any]:
    """config.yaml with ``overrides`` merged in as Snakemake merges --configfile (``merge_configs``)."""
    return merge_configs(BASE, *overrides)


def check_config(config: dict[str, Any]) -> None:
    """What rules/common.smk runs while building the DAG: unknown keys, the schema, the cross-field checks."""
    check_unknown_keys(config, SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(config)
    check_workflow_config(config)


def _error(config: dict[str, Any]) -> str:
    with pytest.raises(ValueError) as error:
        check_config(config)
    return str(error.value)


def _resolved(schema: dict[str, Any]) -> dict[str, Any]:
    """A sub-schema with its local $ref followed."""
    while "$ref" in schema:
        target: Any = SCHEMA
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


@pytest.mark.parametrize("configfile", [None, "configs/tiny.yaml", "configs/lvis_v1.yaml"])
def test_shipped_configs_pass_every_check(configfile):
    override = yaml.safe_load((REPO_ROOT / configfile).read_text()) if configfile else {}
    check_config(merged(override))


def test_importing_the_checks_does_not_import_torch():
    code = "import sys, longtail_seg.workflow_config; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- config files merged as Snakemake merges --configfile -----------------------------------------------------------

BASE_FILE = {"train": {"lr": 0.02, "steps": [8, 11], "amp": {"enabled": False, "dtype": "bf16"}},
             "tests": {"single_scale": {"min_size": 800}}, "dataset": "demo"}
OVERRIDE_FILE = {"train": {"steps": [3], "amp": {"enabled": True}}, "tests": {"multi_scale": {"min_size": 600}},
                 "dataset": "lvis_v1"}
MERGED_FILES = {"train": {"lr": 0.02, "steps": [3], "amp": {"enabled": True, "dtype": "bf16"}},
                "tests": {"single_scale": {"min_size": 800}, "multi_scale": {"min_size": 600}},
                "dataset": "lvis_v1"}


def test_merge_configs_merges_mappings_key_by_key_and_replaces_lists_and_scalars():
    assert merge_configs(BASE_FILE, OVERRIDE_FILE) == MERGED_FILES


def test_merge_configs_leaves_its_inputs_unchanged_and_shares_nothing_with_them():
    base, override = copy.deepcopy(BASE_FILE), copy.deepcopy(OVERRIDE_FILE)
    result = merge_configs(base, override)
    result["train"]["steps"].append(99)
    result["tests"]["single_scale"]["min_size"] = 1
    assert (base, override) == (BASE_FILE, OVERRIDE_FILE)


def test_merge_configs_later_files_win_and_none_gives_an_empty_config():
    assert merge_configs() == {}
    assert merge_configs({"a": {"b": 1}}, {"a": {"b": 2}}, {"a": {"b": 3, "c": 4}}) == {"a": {"b": 3, "c": 4}}
    assert merge_configs({"a": 1}, {"a": {"b": 2}}) == {"a": {"b": 2}}  # a mapping replaces a scalar
    assert merge_configs({"a": {"b": 2}}, {"a": [1]}) == {"a": [1]}  # and a list replaces a mapping


def test_load_configfiles_gives_what_snakemake_gives_for_configfile_then_two_configfiles(tmp_path):
    """Parity with Snakemake itself: a workflow with ``configfile:`` run with ``--configfile A B`` dumps the config it
    sees; ``load_configfiles`` of the three files must equal it."""
    second = {"train": {"amp": {"dtype": "fp16"}}, "extra": [1, 2]}
    files = [tmp_path / name for name in ("base.yaml", "override.yaml", "second.yaml")]
    for path, content in zip(files, (BASE_FILE, OVERRIDE_FILE, second)):
        path.write_text(yaml.safe_dump(content))
    (tmp_path / "Snakefile").write_text(
        'import json\n\nconfigfile: "base.yaml"\n\n'
        'with open("seen.json", "w") as seen:\n    json.dump(config, seen)\n\n'
        "rule all:\n    input: []\n"
    )
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile",
                             *map(str, files[1:])], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = yaml.safe_load((tmp_path / "seen.json").read_text())
    assert seen == load_configfiles(*files)
    assert seen["train"] == {"lr": 0.02, "steps": [3], "amp": {"enabled": True, "dtype": "fp16"}}


# --- a typo anywhere: its full path and the keys allowed there ------------------------------------------------------

TYPOS = [
    ({"datset": "demo"}, "datset", "dataset"),
    ({"datasets": {"demo": {"sorce": "synthetic"}}}, "datasets.demo.sorce", "source"),
    ({"datasets": {"demo": {"synthetic": {"num_trian": 5}}}}, "datasets.demo.synthetic.num_trian", "num_train"),
    ({"datasets": {"lvis_v1": {"image_rot": "coco"}}}, "datasets.lvis_v1.image_rot", "image_root"),
    ({"stats": {"rfs_treshold": 0.1}}, "stats.rfs_treshold", "rfs_threshold"),
    ({"model": {"backbon": "tiny"}}, "model.backbon", "backbone"),
    ({"model": {"classifier": {"type": "softmax", "dropuot": 0.1}}}, "model.classifier.dropuot", "dropout"),
    ({"train": {"smapler": "uniform"}}, "train.smapler", "sampler"),
    ({"train": {"images_per_category": 3}}, "train.images_per_category", "sampler"),  # a retrain-only key
    ({"retrain": {"images_per_categroy": 3}}, "retrain.images_per_categroy", "images_per_category"),
    ({"augment": {"mosaic": {"porb": 0.5}}}, "augment.mosaic.porb", "prob"),
    ({"augment": {"mosaic": {"color_jitter": {"hue_": 0.1}}}}, "augment.mosaic.color_jitter.hue_", "hue"),
    ({"augment": {"strong": {"blur_prb": 0.5}}}, "augment.strong.blur_prb", "blur_prob"),
    ({"augment": {"strong": {"color_jitter": {"bright": 0.1}}}}, "augment.strong.color_jitter.bright", "brightness"),
    ({"pseudo_labels": {"score_treshold": 0.5}}, "pseudo_labels.score_treshold", "score_threshold"),
    ({"models": {"bgs": {"pseudo_label": True}}}, "models.bgs.pseudo_label", "pseudo_labels"),
    ({"models": {"double": {"branch": ["bgs", "bgs_class_aware"]}}}, "models.double.branch", "branches"),
    ({"models": {"representation": {"train": {"lr_shedule": "constant"}}}},
     "models.representation.train.lr_shedule", "lr_schedule"),
    ({"models": {"representation": {"train": {"images_per_category": 3}}}},
     "models.representation.train.images_per_category", "sampler"),
    ({"models": {"bgs": {"retrain": {"smapler": "uniform"}}}}, "models.bgs.retrain.smapler", "sampler"),
    ({"models": {"bgs_class_aware": {"retrain": {"images_per_categroy": 3}}}},
     "models.bgs_class_aware.retrain.images_per_categroy", "images_per_category"),
    ({"models": {"bgs": {"classifier": {"type": "bgs", "others_ratio": 4}}}},
     "models.bgs.classifier.others_ratio", "others_sample_ratio"),
    ({"tests": {"single_scale": {"min_sise": 64}}}, "tests.single_scale.min_sise", "min_size"),
    ({"tests": {"multi_scale_box": {"flipp": True}}}, "tests.multi_scale_box.flipp", "flip"),
    ({"tables": {"table3": [{"label": "x", "model": "bgs", "tset": "single_scale"}]}}, "tables.table3[0].tset", "test"),
    ({"compute": {"gpu": 1}}, "compute.gpu", "gpus"),
]


@pytest.mark.parametrize("override, path, allowed", TYPOS, ids=[path for _, path, _ in TYPOS])
def test_a_typo_names_its_full_path_and_the_allowed_keys(override, path, allowed):
    message = _error(merged(override))
    assert path in message and allowed in message, message


def test_every_unknown_key_is_listed_with_a_suggestion():
    with pytest.raises(ValueError) as error:
        check_unknown_keys(merged({"retrain": {"smapler": "uniform"}, "tests": {"single_scale": {"min_sise": 1}}}),
                           SCHEMA)
    message = str(error.value)
    assert "retrain.smapler (did you mean 'sampler'?)" in message
    assert "tests.single_scale.min_sise (did you mean 'min_size'?)" in message
    assert "retrain allows: amp, batch_size," in message


# --- cross-field checks: what the schema cannot see ---------------------------------------------------------------

TWO_REPRESENTATIONS = {"models": {
    "representation_uniform": {"stage": "representation", "train": {"sampler": "uniform"}},
    "bgs_uniform": {"stage": "retrain", "from": "representation_uniform", "classifier": {"type": "bgs"}},
    "double": {"branches": ["bgs", "bgs_uniform"]},
}}
CROSS_FIELD = [
    ({"dataset": "lvis"}, ["dataset: 'lvis'", "lvis_v1"]),
    ({"default_tables": ["table1", "tabel2"]}, ["default_tables", "['tabel2']"]),
    ({"tables": {"table1": [{"label": "x", "model": "bsg", "test": "single_scale"}]}},
     ["tables.table1[0].model", "'bsg'", "did you mean 'bgs'"]),
    ({"tables": {"table2": [{"label": "x", "model": "bgs", "test": "multi_scale"}]}},
     ["tables.table2[0].test", "'multi_scale'"]),
    ({"tests": {"multi_scale_adaptive": {"scale_ranges": [[0, 10], [0, 20]]}}},
     ["tests.multi_scale_adaptive", "scale_ranges", "3 scales"]),
    ({"tests": {"multi_scale_box": {"from": "missing"}}}, ["tests.multi_scale_box.from", "not a key of 'tests'"]),
    ({"tests": {"single_scale": {"from": "multi_scale_mask"}}}, ["tests.", ".from", "part of a cycle"]),
    ({"model": {"anchor_sizes": [16, 32]}}, ["model.anchor_sizes", "4 FPN levels"]),
    ({"model": {"roi_heads": "cascde"}}, ["model.roi_heads", "cascade", "standard"]),
    ({"model": {"classifier": {"type": "double"}}}, ["model.classifier", "branches"]),
    ({"train": {"lr_schedule": [[0, -1]]}}, ["train.lr_schedule"]),
    ({"retrain": {"epochs": 0, "max_iterations": None}}, ["retrain.epochs", "retrain.max_iterations"]),
    ({"models": {"bgs": {"retrain": {"lr_schedule": [[-1, 0.1]]}}}}, ["models.bgs.retrain.lr_schedule"]),
    ({"models": {"bgs_long": {"retrain": {"epochs": 0, "max_iterations": None}}}}, ["models.bgs_long.retrain.epochs"]),
    ({"models": {"representation": {"train": {"epochs": 0, "max_iterations": None}}}},
     ["models.representation.train.epochs"]),
    ({"models": {"bgs": {"train": {"lr": 0.1}}}}, ["models.bgs.train", "retrain model", "models.bgs.retrain"]),
    ({"models": {"representation": {"retrain": {"lr": 0.1}}}},
     ["models.representation.retrain", "models.representation.train"]),
    ({"models": {"representation": {"pseudo_labels": True}}}, ["models.representation.pseudo_labels"]),
    ({"models": {"double": {"classifier": {"type": "softmax"}}}},
     ["models.double.classifier: only representation and retrain models take 'classifier'", "double model"]),
    ({"models": {"bgs": {"branches": ["bgs_long", "bgs_class_aware"]}}}, ["models.bgs.branches", "retrain model"]),
    ({"models": {"bgs": {"from": "represention"}}}, ["models.bgs.from", "did you mean 'representation'"]),
    ({"models": {"bgs_class_aware": {"from": "bgs"}}}, ["models.bgs_class_aware.from", "representation model"]),
    ({"models": {"bgs": {"classifier": {"type": "bsg"}}}}, ["models.bgs.classifier.type", "'bgs'"]),
    ({"models": {"double": {"branches": ["bgs", "bgs_classaware"]}}},
     ["models.double.branches[1]", "did you mean 'bgs_class_aware'"]),
    ({"models": {"mosaic_double": {"branches": ["bgs", "double"]}}},
     ["models.mosaic_double.branches[1]", "'double' is a double model"]),
    (TWO_REPRESENTATIONS, ["models.double.branches", "different representation models", "same `from`"]),
    ({"pseudo_labels": {"teacher": "nope"}}, ["pseudo_labels.teacher", "'nope'"]),
    ({"pseudo_labels": {"teacher": "pseudo_double"}}, ["pseudo_labels.teacher", "bgs_pseudo", "cycle"]),
    ({"pseudo_labels": {"teacher": "bgs_class_aware_pseudo"}}, ["pseudo_labels.teacher", "cycle"]),
    ({"pseudo_labels": {"test": "single"}}, ["pseudo_labels.test", "did you mean 'single_scale'"]),
    ({"replicate_tables": ["table1", "tabel2"]}, ["replicate_tables names ['tabel2']", "not keys of 'tables'"]),
]


@pytest.mark.parametrize("override, expected", CROSS_FIELD, ids=[str(i) for i in range(len(CROSS_FIELD))])
def test_inconsistent_config_passes_the_schema_and_fails_the_cross_field_check(override, expected):
    config = merged(override)
    check_unknown_keys(config, SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(config)  # the schema alone lets it through
    with pytest.raises(ValueError) as error:
        check_workflow_config(config)
    message = str(error.value)
    assert all(part in message for part in expected), message


def test_pseudo_labels_on_lvis_need_the_unlabeled_image_list():
    config = merged({"dataset": "lvis_v1"})
    del config["datasets"]["lvis_v1"]["unlabeled_json"]
    assert "datasets.lvis_v1.unlabeled_json" in _error(config)
    for model in ("bgs_pseudo", "bgs_class_aware_pseudo"):
        config["models"][model]["pseudo_labels"] = False
    config["tables"] = {"table1": config["tables"]["table1"]}
    config["default_tables"] = ["table1"]
    check_config(config)  # without pseudo-label models, no unlabeled split is needed


def test_schema_errors_read_as_path_and_problem():
    with pytest.raises(jsonschema.ValidationError) as error:
        jsonschema.Draft202012Validator(SCHEMA).validate(merged({"tables": {"table1": [{"label": 3, "model": "bgs",
                                                                                       "test": "single_scale"}]}}))
    assert config_error_message(error.value).startswith("tables.table1[0].label: 3 is not of type 'string'")
    assert key_path(["models", "bgs", "retrain", "sampler"]) == "models.bgs.retrain.sampler"
    assert config_error_message(ValueError("plain")) == "plain"


# --- config.yaml, the schema and the code agree ---------------------------------------------------------------------


def test_config_yaml_states_every_default_of_the_code():
    assert BASE["model"] == DEFAULT_MODEL_CFG
    assert BASE["train"] == asdict(TrainConfig())
    assert BASE["retrain"] == asdict(RetrainConfig())
    assert BASE["model"]["roi_heads"] in ROI_HEADS


def test_schema_sections_have_the_code_keys():
    assert set(DEFS["model_settings"]["properties"]) == set(DEFAULT_MODEL_CFG)
    assert set(DEFS["train_settings"]["properties"]) == set(TrainConfig.keys())
    assert set(DEFS["retrain_settings"]["properties"]) == set(RetrainConfig.keys())
    assert set(DEFS["test_settings"]["properties"]) == {"from", *(f.name for f in fields(TestConfig))}
    for section, definition in (("model", "model_settings"), ("train", "train_settings"),
                                ("retrain", "retrain_settings")):
        assert SCHEMA["properties"][section]["$ref"] == f"#/$defs/{definition}"
    model_entry = DEFS["model_entry"]["properties"]
    assert model_entry["train"]["$ref"] == "#/$defs/train_settings"
    assert model_entry["retrain"]["$ref"] == "#/$defs/retrain_settings"
    assert model_entry["classifier"]["$ref"] == SCHEMA["$defs"]["model_settings"]["properties"]["classifier"]["$ref"]
    assert SCHEMA["properties"]["tests"]["additionalProperties"]["$ref"] == "#/$defs/test_settings"


def _enum(definition: str, key: str) -> list[Any]:
    return _resolved(DEFS[definition]["properties"][key])["enum"]


def test_schema_enums_are_the_code_choices():
    backbone = _resolved(DEFS["model_settings"]["properties"]["backbone"])  # names checked by the code: + timm:<name>
    assert backbone["type"] == "string" and all(f"`{name}`" in backbone["description"] for name in BACKBONES)
    assert _enum("model_settings", "norm") == list(NORMS)
    assert _enum("train_settings", "sampler") == list(TRAIN_SAMPLERS)
    assert _enum("retrain_settings", "sampler") == list(RETRAIN_SAMPLERS)
    assert _enum("train_settings", "optimizer") == _enum("retrain_settings", "optimizer") == list(OPTIMIZERS)
    assert _resolved(DEFS["retrain_settings"]["properties"]["lr_schedule"])["oneOf"][0]["enum"] == list(
        NAMED_LR_SCHEDULES)
    assert _enum("test_settings", "merge") == list(MERGE_METHODS)
    assert _enum("test_settings", "soft_nms_method") == list(SOFT_NMS_METHODS)
    assert _enum("test_settings", "protocol") == list(PROTOCOLS)


def _undocumented(schema: Any, path: str) -> list[str]:
    """Properties of ``schema`` (recursively) without a description of their own or through their $ref."""
    missing = []
    if isinstance(schema, dict):
        for key, sub in schema.get("properties", {}).items():
            if "description" not in _resolved(sub):
                missing.append(f"{path}.{key}")
        for key, sub in schema.items():
            if key not in ("if", "then"):  # conditions only, their keys are documented in `properties`
                missing += _undocumented(sub, f"{path}.{key}")
    elif isinstance(schema, list):
        for index, sub in enumerate(schema):
            missing += _undocumented(sub, f"{path}[{index}]")
    return missing


def test_every_schema_key_is_documented():
    assert _undocumented(SCHEMA, "schema") == []


def test_every_section_and_override_is_closed():
    assert _closed_objects_missing(SCHEMA, "schema") == []


def _closed_objects_missing(schema: Any, path: str) -> list[str]:
    """Object schemas with properties but no additionalProperties: false (the classifier, checked by the registry,
    is the one open mapping)."""
    missing = []
    if isinstance(schema, dict):
        if "properties" in schema and schema.get("additionalProperties") is not False \
                and path != "schema.$defs.classifier":
            missing.append(path)
        for key, sub in schema.items():
            if key not in ("if", "then"):
                missing += _closed_objects_missing(sub, f"{path}.{key}")
    elif isinstance(schema, list):
        for index, sub in enumerate(schema):
            missing += _closed_objects_missing(sub, f"{path}[{index}]")
    return missing


# --- job settings: only what the job reads --------------------------------------------------------------------------


def test_retrain_settings_hold_only_what_the_run_reads():
    config = merged()
    class_aware = {m for m, e in config["models"].items() if e.get("retrain", {}).get("sampler") == "class_aware"}
    retrained = {m for m, e in config["models"].items() if e["stage"] == "retrain"}
    assert class_aware and retrained - class_aware
    for model in retrained:
        settings = training_job_settings(config, model, "retrain")
        assert ("images_per_category" in settings) == (model in class_aware)
        assert "momentum" not in settings  # adamw
        if config["models"][model]["retrain"].get("mosaic"):
            assert not {"min_size_range", "max_size", "flip_prob"} & set(settings)
    sgd = merged({"models": {"bgs": {"retrain": {"optimizer": "sgd"}}}})
    assert training_job_settings(sgd, "bgs", "retrain")["momentum"] == 0.9


def test_train_and_model_settings_are_complete_and_resolved():
    config = merged()
    assert training_job_settings(config, "representation", "train")["sampler"] == "repeat_factor"
    uniform = merged({"models": {"representation": {"train": {"sampler": "uniform"}}}})
    assert training_job_settings(uniform, "representation", "train")["sampler"] == "uniform"
    model = model_job_settings(config)
    assert set(model) == set(DEFAULT_MODEL_CFG) - {"cascade", "double_head"}
    assert model["anchor_sizes"] == [16, 32, 64, 128]
    cascade = model_job_settings(merged({"model": {"roi_heads": "cascade"}}))  # the heads' own section only if used
    assert set(cascade) == set(DEFAULT_MODEL_CFG) - {"double_head"}
    assert cascade["cascade"]["iou_thresholds"] == [0.5, 0.6, 0.7]
    double = model_job_settings(merged({"model": {"box_head": "double"}}))  # double_head only with the double head
    assert double["double_head"] == {"conv_blocks": 4, "conv_channels": 256}


def test_a_representation_model_trains_with_its_own_classifier():
    """``models.NAME.classifier`` on a representation model replaces ``model.classifier`` in its --model-cfg only; a
    representation model without one keeps the shared model config (its job, and its cached model, unchanged)."""
    config = merged({"models": {"sl": {"stage": "representation", "classifier": {"type": "seesaw", "p": 0.5}}}})
    check_config(config)
    shared = model_job_settings(config)
    assert model_job_settings(config, "representation") == shared
    own = model_job_settings(config, "sl")
    assert own["classifier"] == {"type": "seesaw", "p": 0.5}
    assert {k: v for k, v in own.items() if k != "classifier"} == {k: v for k, v in shared.items() if k != "classifier"}
    assert workflow_config.representation_classifier(config, "sl") == {"type": "seesaw", "p": 0.5}
    assert workflow_config.representation_classifier(config, "representation") == {"type": "softmax"}


@pytest.mark.parametrize("classifier, expected", [
    ({"type": "seesaw", "pp": 1}, "models.sl.classifier.pp"),
    ({"type": "seesw"}, "models.sl.classifier.type"),
])
def test_a_bad_representation_classifier_names_the_model(classifier, expected):
    config = merged({"models": {"sl": {"stage": "representation", "classifier": classifier}}})
    assert expected in _error(config)


def test_test_settings_inherit_and_keep_only_their_path_keys():
    config = merged()
    assert workflow_config.test_settings(config, "multi_scale_mask")["scales"] == [128, 160, 192]
    assert workflow_config.test_settings(config, "multi_scale_mask")["min_size"] == 128
    single = workflow_config.test_job_settings(config, "single_scale")
    assert "scales" not in single and "merge" not in single and single["max_dets"] == 100
    multi = workflow_config.test_job_settings(config, "multi_scale_box")
    assert multi["scales"] == [128, 160, 192] and "min_size" not in multi and "soft_nms_method" not in multi
    assert workflow_config.test_job_settings(config, "multi_scale_soft_nms")["soft_nms_method"] == "linear"
    assert not is_multi_scale_test(config, "single_scale")
    assert "protocol" not in single  # standard: inference as always, its job params unchanged
    challenge = workflow_config.test_job_settings(config, "single_scale_challenge")
    assert challenge["protocol"] == "challenge2021" and challenge["dets_per_category"] == 10000
    assert workflow_config.evaluation_job_settings(config, "single_scale_challenge") == {
        "protocol": "challenge2021", "dets_per_category": 10000}
    assert workflow_config.evaluation_job_settings(config, "single_scale")["protocol"] == "standard"
    assert all(is_multi_scale_test(config, t) for t in config["tests"] if t.startswith("multi_scale"))


# --- a wrong type or an out-of-range value: its full path, whichever check catches it --------------------------------

NAN, INF = float("nan"), float("inf")


def _dag_message(config: dict[str, Any]) -> str:
    """What rules/common.smk reports for ``config``: the first failing check's message."""
    try:
        check_config(config)
    except (ValueError, jsonschema.ValidationError) as error:
        return config_error_message(error)
    raise AssertionError("the config passed every check")


BAD_VALUES = [
    # the schema catches these (and the code's checks would, naming the same path: see the tests below)
    ({"retrain": {"batch_size": "4"}},
     "retrain.batch_size: '4' is not of type 'integer' (a string: write the number without quotes)"),
    ({"retrain": {"batch_size": -1}}, "retrain.batch_size: -1 is less than the minimum of 1"),
    ({"models": {"bgs": {"retrain": {"batch_size": -1}}}}, "models.bgs.retrain.batch_size: -1 is less than"),
    ({"models": {"bgs": {"retrain": {"batch_size": "4"}}}}, "models.bgs.retrain.batch_size: '4' is not of type"),
    ({"retrain": {"lr": "1e-4"}}, "retrain.lr: '1e-4' is not of type 'number' (a string: write the number without "
                                  "quotes; YAML reads 1e-4 as a string, write 1.0e-4)"),
    ({"models": {"representation": {"train": {"momentum": 1.0}}}},
     "models.representation.train.momentum: 1.0 is greater than or equal to the maximum of 1"),
    ({"train": {"seed": -1}}, "train.seed: -1 is less than the minimum of 0"),
    ({"tests": {"single_scale": {"protocol": "fixd"}}}, "tests.single_scale.protocol: 'fixd' is not one of"),
    ({"tests": {"single_scale": {"dets_per_category": 0}}},
     "tests.single_scale.dets_per_category: 0 is less than the minimum of 1"),
    # the schema lets these through (NaN compares false, lo <= hi is no JSON-schema rule); the code names the path
    ({"retrain": {"lr": NAN}}, "retrain.lr must be a number > 0, got nan"),
    ({"train": {"flip_prob": NAN}}, "train.flip_prob must be a number in [0, 1], got nan"),
    ({"models": {"bgs": {"retrain": {"min_size_range": [144, 112]}}}},
     "models.bgs.retrain.min_size_range must be an integer >= 1 or a [lo, hi] pair of them with lo <= hi, "
     "got [144, 112]"),
    ({"models": {"representation": {"train": {"weight_decay": NAN}}}},
     "models.representation.train.weight_decay must be a number >= 0, got nan"),
    ({"models": {"bgs_class_aware": {"retrain": {"grad_clip_norm": INF}}}},
     "models.bgs_class_aware.retrain.grad_clip_norm must be a number > 0 or null, got inf"),
    ({"tests": {"single_scale": {"mask_threshold": NAN}}},
     "tests.single_scale: mask_threshold must be a number in (0, 1], got nan"),
    ({"model": {"box_nms_thresh": NAN}}, "model.box_nms_thresh must be a number in [0, 1], got nan"),
    ({"model": {"image_mean": [0.5, NAN, 0.5]}}, "model.image_mean must be 3 numbers, got [0.5, nan, 0.5]"),
    ({"model": {"backbone": "resnet"}}, "model.backbone: unknown backbone 'resnet'; choose one of"),
    ({"model": {"dcn": {"stages": [5]}}}, "model.dcn.stages must be a list of distinct stages in [2, 4]"),
]


@pytest.mark.parametrize("override, expected", BAD_VALUES, ids=[e.split(" ")[0] for _, e in BAD_VALUES])
def test_a_bad_value_fails_the_dag_checks_naming_its_full_path(override, expected):
    message = _dag_message(merged(override))
    assert message.startswith(expected), message


SECTION_CLASSES = {  # the schema definition, and how the code builds one section from a dict
    "train_settings": lambda cfg: TrainConfig.from_dict(cfg, section="s"),
    "retrain_settings": lambda cfg: RetrainConfig.from_dict(cfg, section="s"),
    "test_settings": lambda cfg: TestConfig.from_dict(cfg, section="s"),
    "model_settings": lambda cfg: resolve_model_cfg(cfg, section="s"),
}


def _bounded_keys() -> list[tuple[str, str, Any]]:
    """(definition, key, value) at and just past every numeric bound the schema states, and wrong types."""
    cases = []
    for definition in SECTION_CLASSES:
        for key, prop in DEFS[definition]["properties"].items():
            prop = _resolved(prop)
            types = prop.get("type", [])
            types = [types] if isinstance(types, str) else types
            if not {"integer", "number"} & set(types):
                continue
            step = 1 if "integer" in types and "number" not in types else 0.5
            for bound, sign in (("minimum", -1), ("exclusiveMinimum", -1), ("maximum", 1), ("exclusiveMaximum", 1)):
                if bound in prop:
                    cases += [(definition, key, prop[bound]), (definition, key, prop[bound] + sign * step)]
            cases += [(definition, key, "1"), (definition, key, True)]
    return cases


def _code_bounded_keys() -> list[tuple[str, str, Any]]:
    """(definition, key, value) at and just past every bound the code's checks state."""
    cases = []
    for definition, checks in (("train_settings", TRAIN_VALUE_CHECKS), ("retrain_settings", RETRAIN_VALUE_CHECKS),
                               ("test_settings", TEST_VALUE_CHECKS), ("model_settings", MODEL_VALUE_CHECKS)):
        for key, (check, bounds) in checks.items():
            step = 1 if check is check_int else 0.5
            for bound, sign in (("minimum", -1), ("maximum", 1)):
                if bounds.get(bound) is not None:
                    cases += [(definition, key, bounds[bound]), (definition, key, bounds[bound] + sign * step)]
            if bounds.get("allow_none"):
                cases.append((definition, key, None))
    return cases


BOUNDED = _bounded_keys() + _code_bounded_keys()


@pytest.mark.parametrize("definition, key, value", BOUNDED, ids=[f"{d}.{k}={v!r}" for d, k, v in BOUNDED])
def test_schema_and_code_agree_on_every_bound_and_type(definition, key, value):
    """A hand-run script gets the code's checks only: they accept exactly what the schema accepts, and name the
    key."""
    schema_ok = jsonschema.Draft202012Validator(_resolved(DEFS[definition]["properties"][key])).is_valid(value)
    try:
        SECTION_CLASSES[definition]({key: value})
        code_error = None
    except ValueError as error:
        code_error = str(error)
    assert schema_ok == (code_error is None), (schema_ok, code_error)
    if code_error is not None:
        assert code_error.startswith((f"s.{key} ", f"s: {key} ")), code_error


def test_the_bound_cases_cover_every_numeric_key():
    assert {k for d, k, _ in BOUNDED if d == "train_settings"} >= {"batch_size", "lr", "momentum", "warmup_factor",
                                                                   "flip_prob", "seed", "min_size_range"}
    assert {k for d, k, _ in BOUNDED if d == "retrain_settings"} >= {"images_per_category", "rois_per_image"}
    assert {k for d, k, _ in BOUNDED if d == "test_settings"} >= {"min_size", "max_dets", "merge_iou"}
    assert {k for d, k, _ in BOUNDED if d == "model_settings"} >= {"fpn_channels", "box_nms_thresh",
                                                                   "trainable_backbone_layers"}


def test_a_replicate_sets_every_training_seed_and_nothing_else():
    """Seed 3: train.seed, retrain.seed and a model's own seed become 3; the data's seed and all else stay."""
    config = merged({"models": {"bgs": {"retrain": {"seed": 7}}, "rfs_short": {"train": {"seed": 5}}}})
    replicate = workflow_config.replicate_config(config, 3)
    assert replicate["train"]["seed"] == replicate["retrain"]["seed"] == 3
    assert replicate["models"]["bgs"]["retrain"] == {"sampler": "repeat_factor", "seed": 3}
    assert replicate["models"]["rfs_short"]["train"]["seed"] == 3
    assert "seed" not in replicate["models"]["bgs_class_aware"]["retrain"]  # inherits retrain.seed = 3
    assert workflow_config.training_job_settings(replicate, "bgs_class_aware", "retrain")["seed"] == 3
    assert replicate["datasets"]["demo"]["synthetic"]["seed"] == 0
    for section in ("train", "retrain"):
        replicate[section]["seed"] = config[section]["seed"]
    replicate["models"]["bgs"]["retrain"]["seed"], replicate["models"]["rfs_short"]["train"]["seed"] = 7, 5
    assert replicate == config
    assert config["train"]["seed"] == 0 and config["models"]["bgs"]["retrain"]["seed"] == 7  # not changed in place


def test_only_the_seed_of_every_configured_seed_is_the_configured_run():
    config = merged({})
    assert workflow_config.is_configured_run(config, 0)
    assert not workflow_config.is_configured_run(config, 1)
    mixed = merged({"retrain": {"seed": 1}})  # train 0, retrain 1: no single seed gives both
    assert not any(workflow_config.is_configured_run(mixed, seed) for seed in (0, 1))


def test_replicates_are_off_by_default_and_replicate_table1():
    assert workflow_config.replicate_seeds(BASE) == []
    assert workflow_config.replicate_tables(BASE) == ["table1"]
