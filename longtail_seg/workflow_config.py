"""The workflow's whole config checked before any job runs, and the settings each job reads.

``rules/common.smk`` calls, while Snakemake builds the DAG: ``check_unknown_keys`` (a typo anywhere, named by its full
path with the keys allowed there), then the JSON schema, then ``check_workflow_config`` (the names that refer to other
entries, and every section and per-model override built with the code's own config classes). The job-settings
helpers give each rule's parameters only the keys its job reads, so a change reruns exactly the jobs it affects.
``load_configfiles`` merges config.yaml and ``--configfile`` overrides as Snakemake does, for code that reads the
config outside Snakemake (tests, benchmarks). Torch-free: building the DAG never imports torch.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from longtail_seg.config_keys import string_hint
from longtail_seg.engine.config import RetrainConfig, TrainConfig
from longtail_seg.inference.config import TestConfig
from longtail_seg.models.config import resolve_model_cfg
from longtail_seg.models.registry import ROI_HEADS, check_classifier_config

# The keys a model entry of each stage takes (the schema allows their union on every model).
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "representation": ("stage", "train", "classifier"),
    "retrain": ("stage", "from", "classifier", "retrain", "pseudo_labels"),
    "double": ("stage", "branches"),
}
# Which stages take a model key, for the error message of a key on the wrong stage.
KEY_STAGES = {key: [stage for stage, keys in STAGE_KEYS.items() if key in keys]
              for keys in STAGE_KEYS.values() for key in keys if key != "stage"}


# --- config files -------------------------------------------------------------------------------------------------


def merge_configs(*configs: Mapping[str, Any]) -> dict[str, Any]:
    """``configs`` merged in order as Snakemake merges ``configfile:`` and each ``--configfile`` (with its own
    ``snakemake.utils.update_config``): nested mappings key by key, anything else (a list too) replaced whole. The
    inputs are left unchanged."""
    from snakemake.utils import update_config

    merged: dict[str, Any] = {}
    for config in configs:
        update_config(merged, copy.deepcopy(dict(config)))
    return merged


def load_configfiles(*paths: str | Path) -> dict[str, Any]:
    """The YAML files merged in order (``merge_configs``): config.yaml, then each ``--configfile``."""
    return merge_configs(*(yaml.safe_load(Path(path).read_text()) for path in paths))


# --- unknown keys -------------------------------------------------------------------------------------------------


def load_schema(path: str | Path) -> dict[str, Any]:
    """The JSON schema (YAML) at ``path``, for ``check_unknown_keys``."""
    return yaml.safe_load(Path(path).read_text())


def check_unknown_keys(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` listing every key the schema does not allow, each with its full path (e.g.
    ``models.bgs.retrain.smapler``) and the keys allowed there: jsonschema's own message names neither."""
    problems = list(unknown_key_messages(config, schema, schema, ""))
    if problems:
        raise ValueError("\n".join(problems))


def unknown_key_messages(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], path: str) -> Iterator[str]:
    """One message per unknown key under ``value`` (at ``path``), following ``$ref``, ``properties``,
    ``additionalProperties`` (false or a sub-schema) and array ``items``."""
    schema = _resolve(schema, root)
    if isinstance(value, Mapping):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties", True)
        for key, item in value.items():
            key_path = f"{path}.{key}" if path else str(key)
            if key in properties:
                yield from unknown_key_messages(item, properties[key], root, key_path)
            elif additional is False:
                yield _unknown_key_message(str(key), key_path, path, sorted(properties))
            elif isinstance(additional, Mapping):
                yield from unknown_key_messages(item, additional, root, key_path)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            yield from unknown_key_messages(item, schema["items"], root, f"{path}[{index}]")


def _unknown_key_message(key: str, key_path: str, parent: str, allowed: list[str]) -> str:
    """``unknown key PATH (did you mean X?); PARENT allows: ...``."""
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = parent or "the top level"
    return f"config: unknown key {key_path}{hint}; {where} allows: {', '.join(allowed)}"


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """``schema`` with its local ``$ref`` (``#/$defs/...``, any JSON pointer) merged in, recursively."""
    seen = set()
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/") or ref in seen:
            raise ValueError(f"schema: cannot follow $ref {ref!r} (local JSON pointers only, no cycles)")
        seen.add(ref)
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def config_error_message(error: BaseException) -> str:
    """The message of a failed config check; a jsonschema ``ValidationError`` (alone or wrapped in Snakemake's
    ``WorkflowError``) as ``PATH: problem``, without jsonschema's dump of the whole sub-schema; a number or a bool
    written as a string gets a hint (YAML reads ``1e-4`` as a string)."""
    for candidate in (error, error.__cause__, error.__context__):
        if hasattr(candidate, "absolute_path") and hasattr(candidate, "message"):
            path = key_path(candidate.absolute_path)
            hint = string_hint(getattr(candidate, "instance", None)) if getattr(candidate, "validator", "") == "type" \
                else ""
            return f"{path or 'config'}: {candidate.message}{hint} (schemas/config.schema.yaml)"
    return str(error)


def key_path(parts: Iterable[str | int]) -> str:
    """``models.bgs.retrain.sampler``, ``tables.table1[0].label``: a config path from its keys and list indices."""
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


# --- job settings -------------------------------------------------------------------------------------------------


def test_settings(config: Mapping[str, Any], test: str) -> dict[str, Any]:
    """A ``tests`` entry with what it inherits: ``from: OTHER`` starts from OTHER's settings (itself resolved)."""
    tests = config["tests"]
    if test not in tests:
        raise ValueError(f"tests: no entry {test!r} (defined: {sorted(tests)})")
    entry, chain = dict(tests[test]), [test]
    while "from" in entry:
        base = entry.pop("from")
        if base not in tests or base in chain:
            problem = (f"part of a cycle ({' -> '.join([*chain, base])})" if base in chain
                       else "not a key of 'tests'")
            raise ValueError(f"tests.{chain[-1]}.from names {base!r}, which is {problem} (defined: {sorted(tests)}); "
                             "name another entry or remove `from`")
        chain.append(base)
        entry = {**tests[base], **entry}
    return entry


def test_config(config: Mapping[str, Any], test: str) -> TestConfig:
    """The checked ``TestConfig`` of a ``tests`` entry (errors name ``tests.<test>``)."""
    return _build(TestConfig, test_settings(config, test), f"tests.{test}")


def test_job_settings(config: Mapping[str, Any], test: str) -> dict[str, Any]:
    """What an inference job with this test reads (``TestConfig.used_settings``): its ``--test-cfg``."""
    return test_config(config, test).used_settings()


def evaluation_job_settings(config: Mapping[str, Any], test: str) -> dict[str, Any]:
    """What an evaluation of this test reads (``TestConfig.evaluation_settings``): protocol and AP-fixed's k."""
    return test_config(config, test).evaluation_settings()


def is_multi_scale_test(config: Mapping[str, Any], test: str) -> bool:
    """Whether the test takes the multi-scale path (``TestConfig.multi_scale``)."""
    return test_config(config, test).multi_scale


for _helper in (test_settings, test_config, test_job_settings, evaluation_job_settings):
    _helper.__test__ = False  # named after the config's `tests` section: pytest must not collect them as tests


TRAINING_CONFIGS = {"train": TrainConfig, "retrain": RetrainConfig}  # the two training sections and their classes


def training_config(config: Mapping[str, Any], model: str, section: str) -> TrainConfig:
    """The checked ``TrainConfig`` (``section`` train) or ``RetrainConfig`` (retrain) of a model: the section with
    the model's own overrides; errors name the override (``models.<model>.<section>``) when it has one."""
    path = f"models.{model}.{section}" if section in config["models"][model] else section
    return _build(TRAINING_CONFIGS[section], _with_overrides(config, model, section), path)


def training_job_settings(config: Mapping[str, Any], model: str, section: str) -> dict[str, Any]:
    """What decides the weights of the model's training in ``section`` (``computed_settings``): its
    ``--train-cfg``, a tracked parameter of the job."""
    return training_config(config, model, section).computed_settings()


def training_run_settings(config: Mapping[str, Any], model: str, section: str) -> dict[str, Any]:
    """How the model's training in ``section`` runs (``run_settings``: loader workers, logging, checkpoint period):
    its ``--run-cfg``, passed apart so that changing them reruns no job."""
    return training_config(config, model, section).run_settings()


def _with_overrides(config: Mapping[str, Any], model: str, section: str) -> dict[str, Any]:
    """The top-level ``section`` (``train`` / ``retrain``) updated with ``models.<model>.<section>``."""
    return {**config[section], **config["models"][model].get(section, {})}


def model_job_settings(config: Mapping[str, Any], model: str | None = None) -> dict[str, Any]:
    """The ``model`` section with every default filled in and anchors resolved, and a representation ``model``'s
    own ``classifier`` in place of ``model.classifier``: representation learning's ``--model-cfg`` (a config that
    states a default or leaves it out builds the same model, and the same job). Settings of RoI heads the model
    does not use (``model.cascade`` with standard heads) are left out: they change nothing the job builds, so they
    rerun no job; likewise ``model.double_head`` without ``box_head: double``."""
    if model is None or "classifier" not in config["models"][model]:
        settings = resolve_model_cfg(config["model"], "model")
    else:
        settings = resolve_model_cfg({**config["model"], "classifier": config["models"][model]["classifier"]},
                                     f"models.{model}")
    unused = {heads.section for heads in ROI_HEADS.values()} - {ROI_HEADS[settings["roi_heads"]].section}
    if settings["box_head"] != "double":
        unused.add("double_head")
    return {key: value for key, value in settings.items() if key not in unused}


def representation_classifier(config: Mapping[str, Any], model: str) -> Any:
    """The box classifier config a representation model trains with: ``models.<model>.classifier``, else
    ``model.classifier``."""
    return config["models"][model].get("classifier", config["model"]["classifier"])


def uses_pseudo_labels(config: Mapping[str, Any], model: str) -> bool:
    """Whether a retrained model trains on train + the pseudo-labelled unlabeled images."""
    return bool(config["models"][model].get("pseudo_labels", False))


def upstream_models(config: Mapping[str, Any], model: str) -> set[str]:
    """The model and every model it is built from (``from``, ``branches``, transitively)."""
    entry = config["models"][model]
    found = {model}
    for parent in [entry["from"]] if "from" in entry else list(entry.get("branches", [])):
        if parent in config["models"] and parent not in found:
            found |= upstream_models(config, parent)
    return found


# --- seed replicates ----------------------------------------------------------------------------------------------


def replicate_seeds(config: Mapping[str, Any]) -> list[int]:
    """The seeds of the seed replicates (``replicates``; empty: replicates off)."""
    return list(config.get("replicates", []))


def replicate_tables(config: Mapping[str, Any]) -> list[str]:
    """The tables the default target replicates when ``replicates`` is set (``replicate_tables``)."""
    return list(config.get("replicate_tables", ["table1"]))


def replicate_config(config: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The config of one seed replicate: every training seed (``train.seed``, ``retrain.seed`` and each model's own
    ``train``/``retrain`` seed) set to ``seed``; everything else, the data and the dataset's own seed included, as
    configured. Pseudo labels have no seed of their own: a replicate's teacher is its own retrained model."""
    replicate = copy.deepcopy(dict(config))
    for section in TRAINING_CONFIGS:
        replicate[section]["seed"] = seed
        for entry in replicate["models"].values():
            if "seed" in entry.get(section, {}):
                entry[section]["seed"] = seed
    return replicate


def is_configured_run(config: Mapping[str, Any], seed: int) -> bool:
    """Whether replicate ``seed`` trains exactly as the configured run (every training seed already ``seed``): its
    outputs are the default ones, reused without retraining."""
    return replicate_config(config, seed) == dict(config)


def _build(cls: Any, settings: Mapping[str, Any], section: str) -> Any:
    """``cls.from_dict(settings, section=section)``; a wrong type becomes a ValueError naming the section."""
    try:
        return cls.from_dict(settings, section=section)
    except TypeError as error:
        raise ValueError(f"{section}: {error}") from None


# --- cross-field checks -------------------------------------------------------------------------------------------


def check_workflow_config(config: Mapping[str, Any]) -> None:
    """Checks a schema cannot express, after it: names that refer to other entries, which keys each model stage
    takes, and every section and per-model override built with the code's config classes. The first problem
    raises ``ValueError`` naming the key's full path and the fix."""
    for check in (_check_dataset, _check_tables, _check_replicates, _check_tests, _check_sections, _check_models,
                  _check_pseudo_labels):
        check(config)


def _check_dataset(config: Mapping[str, Any]) -> None:
    """``dataset`` is a key of ``datasets``."""
    if config["dataset"] not in config["datasets"]:
        raise ValueError(f"dataset: {config['dataset']!r} is not defined under 'datasets' (defined: "
                         f"{sorted(config['datasets'])}); add it or pick one of those")


def _check_tables(config: Mapping[str, Any]) -> None:
    """``default_tables`` are tables; every row names a model and a test."""
    unknown = sorted(set(config["default_tables"]) - set(config["tables"]))
    if unknown:
        raise ValueError(f"default_tables names {unknown}, which are not keys of 'tables' (defined: "
                         f"{sorted(config['tables'])}); add them to 'tables' or remove them from default_tables")
    for table, rows in config["tables"].items():
        for index, row in enumerate(rows):
            for key, section in (("model", "models"), ("test", "tests")):
                _check_name(row[key], config[section], f"tables.{table}[{index}].{key}", section)


def _check_replicates(config: Mapping[str, Any]) -> None:
    """``replicate_tables`` are tables."""
    unknown = sorted(set(replicate_tables(config)) - set(config["tables"]))
    if unknown:
        raise ValueError(f"replicate_tables names {unknown}, which are not keys of 'tables' (defined: "
                         f"{sorted(config['tables'])}); add them to 'tables' or remove them from replicate_tables")


def _check_tests(config: Mapping[str, Any]) -> None:
    """Every ``tests`` entry resolves (``from`` chains) and builds a ``TestConfig``."""
    for test in config["tests"]:
        test_config(config, test)


def _check_sections(config: Mapping[str, Any]) -> None:
    """``model``, ``train`` and ``retrain`` as the code reads them."""
    resolve_model_cfg(config["model"], "model")
    _build(TrainConfig, config["train"], "train")
    _build(RetrainConfig, config["retrain"], "retrain")


def _check_models(config: Mapping[str, Any]) -> None:
    """Every model entry: the keys of its stage, what it names, its classifier and its settings."""
    for model, entry in config["models"].items():
        _check_stage_keys(model, entry)
        stage = entry["stage"]
        if stage == "representation":
            model_job_settings(config, model)  # its own classifier, if any, checked as models.<model>.classifier
            training_config(config, model, "train")
        elif stage == "retrain":
            _check_retrain_model(config, model)
        else:
            _check_double_model(config, model)


def _check_stage_keys(model: str, entry: Mapping[str, Any]) -> None:
    """A key of another stage (``train`` on a retrain model, ...) would be silently ignored: reject it."""
    stage = entry["stage"]
    for key in entry:
        if key not in STAGE_KEYS[stage]:
            hint = {"train": f"retrain settings go under models.{model}.retrain",
                    "retrain": f"training settings go under models.{model}.train"}.get(key, "remove it")
            if stage == "double":
                hint = "a double model trains nothing: it averages the classifiers of its branches"
            raise ValueError(f"models.{model}.{key}: only {' and '.join(KEY_STAGES[key])} models take {key!r}, and "
                             f"{model} is a {stage} model ({hint}); a {stage} model takes {list(STAGE_KEYS[stage])}")


def _check_retrain_model(config: Mapping[str, Any], model: str) -> None:
    """``from`` is a representation model; the classifier is registered; the merged ``retrain`` builds."""
    entry = config["models"][model]
    _check_name(entry["from"], config["models"], f"models.{model}.from", "models")
    source_stage = config["models"][entry["from"]]["stage"]
    if source_stage != "representation":
        raise ValueError(f"models.{model}.from: {entry['from']!r} is a {source_stage} model; a retrain model starts "
                         f"from a representation model ({_names_of_stage(config, 'representation')})")
    check_classifier_config(entry["classifier"], f"models.{model}.classifier")
    training_config(config, model, "retrain")


def _check_double_model(config: Mapping[str, Any], model: str) -> None:
    """``branches`` are retrain models retrained from the same representation model."""
    branches = config["models"][model]["branches"]
    for index, branch in enumerate(branches):
        path = f"models.{model}.branches[{index}]"
        _check_name(branch, config["models"], path, "models")
        stage = config["models"][branch]["stage"]
        if stage != "retrain":
            raise ValueError(f"{path}: {branch!r} is a {stage} model; a double model averages the classifiers of "
                             f"retrain models ({_names_of_stage(config, 'retrain')})")
    sources = {branch: config["models"][branch]["from"] for branch in branches}
    if len(set(sources.values())) > 1:
        raise ValueError(f"models.{model}.branches: the branches start from different representation models "
                         f"({sources}); both classifiers must sit on one frozen model, so pick branches with the "
                         "same `from`")


def _check_pseudo_labels(config: Mapping[str, Any]) -> None:
    """The teacher is a model that does not learn from its own pseudo labels; the test exists; a real dataset
    lists its unlabeled images when a model needs pseudo labels."""
    section = config["pseudo_labels"]
    teacher = section["teacher"]
    _check_name(teacher, config["models"], "pseudo_labels.teacher", "models")
    _check_name(section["test"], config["tests"], "pseudo_labels.test", "tests")
    students = sorted(m for m in upstream_models(config, teacher) if uses_pseudo_labels(config, m))
    if students:
        raise ValueError(f"pseudo_labels.teacher: {teacher!r} is built from {students}, which train on the pseudo "
                         "labels the teacher makes (a cycle); pick a teacher without pseudo_labels: true upstream")
    users = sorted(m for m in config["models"] if uses_pseudo_labels(config, m))
    dataset = config["datasets"][config["dataset"]]
    if users and dataset["source"] == "lvis" and "unlabeled_json" not in dataset:
        raise ValueError(f"datasets.{config['dataset']}.unlabeled_json: missing, but models {users} have "
                         "pseudo_labels: true; add the unlabeled image list or drop those models")


def _check_name(name: Any, defined: Mapping[str, Any], path: str, section: str) -> None:
    """``name`` is a key of the ``section`` mapping ``defined``; else raise naming ``path``."""
    if name not in defined:
        close = difflib.get_close_matches(str(name), list(defined), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"{path}: {name!r} is not a key of '{section}' ({hint}defined: {sorted(defined)})")


def _names_of_stage(config: Mapping[str, Any], stage: str) -> str:
    """The models of ``stage``, for an error message."""
    return ", ".join(sorted(m for m, e in config["models"].items() if e["stage"] == stage)) or "none defined"
