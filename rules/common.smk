import json
import re
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")


validate(config, "../schemas/config.schema.yaml")

DATASET = config["dataset"]
if DATASET not in config["datasets"]:
    raise ValueError(
        f"config: dataset '{DATASET}' is not defined under 'datasets' "
        f"(defined: {sorted(config['datasets'])}); add it or pick one of those"
    )
UNKNOWN_DEFAULT_TABLES = sorted(set(config["default_tables"]) - set(config["tables"]))
if UNKNOWN_DEFAULT_TABLES:
    raise ValueError(
        f"config: default_tables names {UNKNOWN_DEFAULT_TABLES}, which are not keys of 'tables' "
        f"(defined: {sorted(config['tables'])}); add them to 'tables' or remove them from default_tables"
    )


wildcard_constraints:
    dataset="[A-Za-z0-9_.-]+",
    model="[A-Za-z0-9_.-]+",
    test="[A-Za-z0-9_.-]+",


def dataset_config(dataset):
    """The `datasets` entry of a dataset name, with a clear error for an unknown one."""
    if dataset not in config["datasets"]:
        raise ValueError(f"config: no entry '{dataset}' under 'datasets'")
    return config["datasets"][dataset]


def is_synthetic(dataset):
    return dataset_config(dataset)["source"] == "synthetic"


def annotation_file(dataset, split):
    """Annotation JSON of a split: generated under data/ for the synthetic dataset, from config otherwise."""
    if is_synthetic(dataset):
        return f"data/{dataset}/annotations/{split}.json"
    return dataset_config(dataset)[f"{split}_json"]


def image_root(dataset):
    """Folder that image records' file names are relative to."""
    if is_synthetic(dataset):
        return f"data/{dataset}/images"
    return dataset_config(dataset)["image_root"]


def as_json(section):
    """A config section as a JSON string for a workflow script's command line (shell-quoted by the rule)."""
    return json.dumps(section, sort_keys=True)


def table_rows(table):
    """The (label, model, test) rows of an ablation table, from config['tables']."""
    return config["tables"][table]


def metrics_file(dataset, model, test):
    return f"results/{dataset}/eval/{model}/{test}/metrics.json"


def table_metrics(wildcards):
    """Every metrics.json a table needs: one per row."""
    return [
        metrics_file(wildcards.dataset, row["model"], row["test"])
        for row in table_rows(wildcards.table)
    ]


def models_of_stage(stage):
    return [name for name, m in config["models"].items() if m["stage"] == stage]


def test_settings(test):
    """A `tests` entry with what it inherits: `from: OTHER` starts from OTHER's settings (itself resolved)."""
    entry, seen = dict(config["tests"][test]), [test]
    while "from" in entry:
        base = entry.pop("from")
        if base not in config["tests"] or base in seen:
            raise ValueError(
                f"config: tests.{seen[-1]}.from names '{base}', which is "
                + ("part of a cycle" if base in seen else "not a key of 'tests'")
                + f" (defined: {sorted(config['tests'])})"
            )
        seen.append(base)
        entry = {**config["tests"][base], **entry}
    return entry


def is_multi_scale_test(test):
    """Whether a `tests` entry uses any multi-scale key (inference/tta.py). The twin of `TestConfig.multi_scale`
    (longtail_seg/inference/predict.py), kept here so that building the DAG does not import torch.
    """
    settings = test_settings(test)
    return (
        any(
            settings.get(key)
            for key in ("scales", "flip", "scale_ranges", "mask_voting")
        )
        or settings.get("merge", "nms") != "nms"
    )


def test_priority(wildcards):
    """Single-scale passes (what Table 1 waits for) go before the several-times-dearer multi-scale ones."""
    return 0 if is_multi_scale_test(wildcards.test) else 1


def retrain_settings(model):
    """The `retrain` section with the model's own overrides (sampler, images per category, ...)."""
    return {**config["retrain"], **config["models"][model].get("retrain", {})}


def source_model(wildcards):
    """The representation checkpoint a retrained model starts from."""
    source = config["models"][wildcards.model]["from"]
    return f"results/{wildcards.dataset}/models/{source}/model_final.pth"


def branch_models(wildcards):
    """The two retrained models whose classifiers a double-classifier model averages."""
    return [
        f"results/{wildcards.dataset}/models/{branch}/model_final.pth"
        for branch in config["models"][wildcards.model]["branches"]
    ]


def train_settings(model):
    """The `train` section with the model's own overrides applied (e.g. the uniform-sampling baseline)."""
    return {**config["train"], **config["models"][model].get("train", {})}


def uses_pseudo_labels(model):
    """Whether a retrained model trains on train + the pseudo-labelled unlabeled images."""
    return bool(config["models"][model].get("pseudo_labels", False))


def pseudo_label_chain():
    """The models on the workflow's longest chain: the pseudo-label teacher with its branches, and the models
    retrained on pseudo labels with the double classifiers built from them (empty without pseudo-label models).
    """
    pseudo = {name for name in config["models"] if uses_pseudo_labels(name)}
    if not pseudo:
        return set()
    teacher = config["pseudo_labels"]["teacher"]
    chain = {teacher, *config["models"][teacher].get("branches", []), *pseudo}
    for name, settings in config["models"].items():
        if set(settings.get("branches", [])) & pseudo:
            chain.add(name)
    return chain


def training_priority(wildcards):
    """Retraining on the pseudo-label chain first (2): on a few cores, starting the short retrainings first would
    push the whole chain (teacher, pseudo labels, student) back by their length; then the other retrainings (1),
    ahead of the multi-scale test passes (0), so Table 1 is complete before Table 2 starts.
    """
    return 2 if wildcards.model in pseudo_label_chain() else 1


def pseudo_label_file(dataset):
    return f"results/{dataset}/pseudo/pseudo_labels.json"


def retrain_pseudo_input(wildcards):
    """The pseudo-label file for models with `pseudo_labels: true` (nothing for the others)."""
    return (
        [pseudo_label_file(wildcards.dataset)]
        if uses_pseudo_labels(wildcards.model)
        else []
    )


def mosaic_args(settings):
    """--mosaic-cfg for a run with `mosaic: true` (empty otherwise, so the mosaic settings are not a parameter
    of the runs that do not use them and changing them reruns only the mosaic models).
    """
    if not settings.get("mosaic", False):
        return ""
    return f"--mosaic-cfg '{as_json(config['augment']['mosaic'])}'"


def retrain_extra_args(wildcards):
    """Optional retraining arguments: the mosaic settings, and the pseudo labels with their strong augmentation.

    A function of the wildcards only, so that Snakemake records it as a parameter and a change of these settings
    reruns exactly the models that use them.
    """
    args = [mosaic_args(retrain_settings(wildcards.model))]
    if uses_pseudo_labels(wildcards.model):
        args += [
            f"--pseudo-annotations {pseudo_label_file(wildcards.dataset)}",
            f"--strong-augment-cfg '{as_json(config['augment']['strong'])}'",
            f"--rfs-threshold {config['stats']['rfs_threshold']}",
        ]
    return " ".join(arg for arg in args if arg)


def pseudo_teacher(wildcards):
    """The teacher model of the pseudo labels (pseudo_labels.teacher)."""
    teacher = config["pseudo_labels"]["teacher"]
    return f"results/{wildcards.dataset}/models/{teacher}/model_final.pth"


def any_model_uses_pseudo_labels():
    return any(uses_pseudo_labels(name) for name in config["models"])


def all_targets():
    """Default target: the default_tables of the configured dataset, the mosaic sample grid, and (synthetic data
    with pseudo-label models) the pseudo-label precision against the hidden ground truth.
    """
    targets = [
        f"results/{DATASET}/tables/{table}.{ext}"
        for table in config["default_tables"]
        for ext in ("csv", "md")
    ]
    targets.append(f"results/{DATASET}/figures/mosaic_samples.png")
    if any_model_uses_pseudo_labels() and is_synthetic(DATASET):
        targets.append(f"results/{DATASET}/pseudo/precision.json")
    return targets
