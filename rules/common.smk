import functools
import json
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from longtail_seg.models.category_counts import needs_image_counts
from longtail_seg.snakemake_locks import snakemake_lock_note
from longtail_seg.workflow_config import (
    check_unknown_keys,
    check_workflow_config,
    config_error_message,
    evaluation_job_settings,
    is_configured_run,
    is_multi_scale_test,
    load_schema,
    model_job_settings,
    replicate_config,
    replicate_seeds,
    replicate_tables,
    representation_classifier,
    test_job_settings,
    training_job_settings,
    training_run_settings,
    uses_pseudo_labels,
)

min_version("9.0")

SCHEMA_FILE = Path(workflow.basedir, "schemas", "config.schema.yaml")


def config_error(error):
    """A clean WorkflowError for a bad config. Dry runs log to stdout, so the message goes to stderr as well."""
    message = f"Invalid configuration:\n{config_error_message(error)}"
    if getattr(getattr(workflow, "output_settings", None), "stdout", False):
        print(message, file=sys.stderr)
    return WorkflowError(message)


# Before any job: unknown keys with their full path and the allowed ones, the schema (types and ranges), then what
# a schema cannot check (names that refer to other entries, the code's own value checks, every per-model override).
try:
    check_unknown_keys(config, load_schema(SCHEMA_FILE))
    validate(config, str(SCHEMA_FILE))
    check_workflow_config(config)
except (ValueError, WorkflowError) as error:
    raise config_error(error) from None

DATASET = config["dataset"]

# Whose Snakemake lock this folder holds (a live run, or the stale leftover of a killed one), said before Snakemake
# refuses to start with "Directory cannot be locked"; only in the main process, not in cluster jobs.
if getattr(workflow, "is_main_process", True):
    lock_note = snakemake_lock_note(Path.cwd())
    if lock_note:
        print(lock_note, file=sys.stderr)


# `dataset` is a dataset name, or NAME/seedN for a seed replicate's outputs (see run_config below).
wildcard_constraints:
    dataset="[A-Za-z0-9_.-]+(/seed[0-9]+)?",
    model="[A-Za-z0-9_.-]+",
    test="[A-Za-z0-9_.-]+",


# --- seed replicates (config `replicates`): a replicate's jobs are the usual rules with `dataset` = NAME/seedN, so
# its outputs, logs and benchmarks go to results/NAME/seedN/, logs/NAME/seedN/, benchmarks/out/NAME/seedN/; they read
# the data, data checks and statistics of NAME and train with the replicate's seeds.


def base_dataset(dataset):
    """The dataset name of an output folder: `demo` for results/demo/ and for a replicate's results/demo/seed1/."""
    return dataset.split("/")[0]


def replicate_folder(dataset, seed):
    """The output folder of replicate `seed`: the configured run's own (no retraining) when the seed gives the
    configured training seeds, else NAME/seedN."""
    return dataset if is_configured_run(config, seed) else f"{dataset}/seed{seed}"


def run_config(dataset):
    """The config the jobs of an output folder run with: the configured one, or a replicate's (its seeds)."""
    match = re.fullmatch(r"[^/]+/seed([0-9]+)", dataset)
    return config if match is None else seed_config(int(match.group(1)))


@functools.cache
def seed_config(seed):
    """The config of replicate `seed` (built once per seed: rule parameters ask for it job by job)."""
    return replicate_config(config, seed)


def stats_path(dataset, name):
    """A file of the dataset statistics (results/NAME/stats/): one for the dataset and its seed replicates."""
    return f"results/{base_dataset(dataset)}/stats/{name}"


def stats_file(name):
    """Input function: `stats_path` of the job's dataset."""
    return lambda wc: stats_path(wc.dataset, name)


def dataset_config(dataset):
    """The `datasets` entry of a dataset name (or replicate folder), with a clear error for an unknown one."""
    name = base_dataset(dataset)
    if name not in config["datasets"]:
        raise ValueError(f"config: no entry '{name}' under 'datasets'")
    return config["datasets"][name]


def is_synthetic(dataset):
    return dataset_config(dataset)["source"] == "synthetic"


def annotation_file(dataset, split):
    """Annotation JSON of a split: generated under data/ for the synthetic dataset, from config otherwise."""
    if is_synthetic(dataset):
        return f"data/{base_dataset(dataset)}/annotations/{split}.json"
    return dataset_config(dataset)[f"{split}_json"]


def image_root(dataset):
    """Folder that image records' file names are relative to."""
    if is_synthetic(dataset):
        return f"data/{base_dataset(dataset)}/images"
    return dataset_config(dataset)["image_root"]


def data_check(split):
    """Input function: the data check report of a split (rule check_dataset), a gate and not a trigger.

    The report is `ancient`: re-running the check (forced, or after deleting results/{dataset}/checks/) never by
    itself reruns the jobs that wait for it, trained models above all. Except while the check's own inputs (the
    annotation file, the image folder) are newer than its report, i.e. the data changed and the check reruns:
    then the report is a plain input, because Snakemake 9 skips the jobs below a rerunning job that are linked to
    it only by ancient files even when their own inputs changed (snakemake/snakemake#4166), and jobs on changed
    data must rerun in the same invocation.
    """

    def report(wildcards):
        path = Path(f"results/{base_dataset(wildcards.dataset)}/checks/{split}.json")
        sources = [
            Path(annotation_file(wildcards.dataset, split)),
            Path(image_root(wildcards.dataset)),
        ]
        if path.exists() and any(
            s.exists() and snakemake_mtime(s) > path.stat().st_mtime for s in sources
        ):
            return str(path)
        return ancient(str(path))

    return report


def snakemake_mtime(path):
    """A path's modification time as Snakemake reads it (a directory() output's .snakemake_timestamp)."""
    stamp = path / ".snakemake_timestamp"
    return (stamp if stamp.exists() else path).stat().st_mtime


def as_json(section):
    """A config section as a JSON string for a workflow script's command line (quoted there by `{params.x:q}`)."""
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


def test_priority(wildcards):
    """Single-scale passes (what Table 1 waits for) go before the several-times-dearer multi-scale ones."""
    return 0 if is_multi_scale_test(config, wildcards.test) else 1


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


def pseudo_label_chain():
    """The models on the workflow's longest chain: the pseudo-label teacher with its branches, and the models
    retrained on pseudo labels with the double classifiers built from them (empty without pseudo-label models).
    """
    pseudo = {name for name in config["models"] if uses_pseudo_labels(config, name)}
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
        if uses_pseudo_labels(config, wildcards.model)
        else []
    )


def mosaic_args(settings):
    """--mosaic-cfg for a run with `mosaic: true` (nothing otherwise, so the mosaic settings are not a parameter
    of the runs that do not use them and changing them reruns only the mosaic models). A list of arguments, each
    shell-quoted by the rule's `{params.extra:q}`.
    """
    if not settings["mosaic"]:
        return []
    return ["--mosaic-cfg", as_json(config["augment"]["mosaic"])]


def train_extra_args(wildcards):
    """Optional representation-learning arguments: the mosaic settings of a mosaic run, and the category statistics
    of a federated classifier (its training image counts)."""
    args = mosaic_args(training_job_settings(config, wildcards.model, "train"))
    if needs_image_counts(representation_classifier(config, wildcards.model)):
        args += [
            "--category-stats",
            stats_path(wildcards.dataset, "category_stats.csv"),
        ]
    return args


def train_category_stats(wildcards):
    """category_stats.csv for a representation model whose classifier needs image counts (federated), else none:
    other models do not rerun when the statistics change."""
    if needs_image_counts(representation_classifier(config, wildcards.model)):
        return [stats_path(wildcards.dataset, "category_stats.csv")]
    return []


def norcal_category_stats(wildcards):
    """category_stats.csv for a test with NorCal calibration (its training instance counts), else none."""
    if test_job_settings(config, wildcards.test).get("norcal_gamma") is not None:
        return [stats_path(wildcards.dataset, "category_stats.csv")]
    return []


def retrain_extra_args(wildcards):
    """Optional retraining arguments: the mosaic settings, and the pseudo labels with their strong augmentation.

    A function of the wildcards only, so that Snakemake records it as a parameter and a change of these settings
    reruns exactly the models that use them.
    """
    args = mosaic_args(training_job_settings(config, wildcards.model, "retrain"))
    if uses_pseudo_labels(config, wildcards.model):
        args += [
            "--pseudo-annotations",
            pseudo_label_file(wildcards.dataset),
            "--strong-augment-cfg",
            as_json(config["augment"]["strong"]),
            "--rfs-threshold",
            str(config["stats"]["rfs_threshold"]),
        ]
    return args


def pseudo_teacher(wildcards):
    """The teacher model of the pseudo labels (pseudo_labels.teacher)."""
    teacher = config["pseudo_labels"]["teacher"]
    return f"results/{wildcards.dataset}/models/{teacher}/model_final.pth"


def pseudo_label_options():
    """The optional pseudo_labels.py arguments (a list, shell-quoted by `{params.options:q}`): every image or
    rare-only, class-agnostic NMS, ignore regions.
    """
    section = config["pseudo_labels"]
    options = [] if section["rare_only"] else ["--keep-all-images"]
    if section["class_agnostic_nms_iou"] is not None:
        options += ["--class-agnostic-nms", str(section["class_agnostic_nms_iou"])]
    if section.get("ignore_threshold") is not None:
        options += ["--ignore-threshold", str(section["ignore_threshold"])]
    return options


def any_model_uses_pseudo_labels():
    return any(uses_pseudo_labels(config, name) for name in config["models"])


# --- the workflow report (rules/report.smk) ---

REPORT_TABLES = "Ablation tables"
REPORT_ANALYSIS = "Analysis per table"
REPORT_CATEGORY_AP = "Per-category AP"
REPORT_TRAINING = "Training curves"
REPORT_DATASET = "Dataset"
REPORT_PSEUDO = "Pseudo labels"
# An output shown two ways (a table's page and its CSV, a figure and its CSV) carries a label "view"; the report
# makes it a toggle that opens on the alphabetically first value, so the CSV is "raw CSV" (after "figure", "page").

# The analysis CSVs of a table shown as pages: name -> (heading, note, decimals).
ANALYSIS_PAGES = {
    "errors": (
        "TIDE error breakdown of the mask AP at IoU 0.5",
        "AP50: the row's mask AP at IoU 0.5; dAP_TYPE: the AP50 points fixing every error of that type would add;"
        " count_TYPE: how many errors of that type.",
        2,
    ),
    "confusions": (
        "Most frequent mistakes on rare categories",
        "Per row, rare-category objects detected as another category (predicted_name, its LVIS group"
        " predicted_frequency), with how often.",
        0,
    ),
}


def training_stage_name(model):
    """The report's subcategory of a trained model's curves: its training stage in words."""
    stage = config["models"][model]["stage"]
    return (
        "representation learning"
        if stage == "representation"
        else "classifier retraining"
    )


def trained_models(table):
    """The models a table's rows rest on that ran a training job (representation learning or classifier
    retraining): the rows' models, the branches of double classifiers, the models retraining starts from and the
    pseudo-label teacher, in first-seen order."""
    seen, pending = [], [row["model"] for row in table_rows(table)]
    while pending:
        model = pending.pop(0)
        if model in seen:
            continue
        seen.append(model)
        settings = config["models"][model]
        pending += settings.get("branches", [])
        pending += [settings["from"]] if "from" in settings else []
        if uses_pseudo_labels(config, model):
            pending.append(config["pseudo_labels"]["teacher"])
    return [
        m for m in seen if config["models"][m]["stage"] in ("representation", "retrain")
    ]


def report_targets(dataset, table):
    """What the report shows of a table beyond its analysis: the table's page, its error and confusion pages, and
    the training curves of the models it rests on."""
    folder = f"results/{dataset}/analysis/tables/{table}"
    targets = [f"results/{dataset}/tables/{table}.html"]
    targets += [f"{folder}/{name}.html" for name in ANALYSIS_PAGES]
    targets += [
        f"results/{dataset}/figures/training/{model}.{ext}"
        for model in trained_models(table)
        for ext in ("png", "csv")
    ]
    return targets


# --- the per-category analysis (rules/analysis.smk) ---


def row_file(dataset, row, name):
    """A file of the evaluate rule's output folder of one table row."""
    return f"results/{dataset}/eval/{row['model']}/{row['test']}/{name}"


def table_row_files(name):
    """Input function: ``name`` (per_category.csv, errors.json) of every row of the table, in row order."""
    return lambda wc: [row_file(wc.dataset, row, name) for row in table_rows(wc.table)]


def viewer_rows(table):
    """The rows the viewer shows: the table's first and last (one when the table has one row)."""
    rows = table_rows(table)
    return [rows[0]] if len(rows) == 1 else [rows[0], rows[-1]]


def analysis_targets(dataset, table):
    """What each built table comes with: per row its category_ap, per table the error breakdown and viewer, and
    (two rows or more) the per-category changes."""
    targets = [
        f"results/{dataset}/analysis/{row['model']}/{row['test']}/category_ap.{ext}"
        for row in table_rows(table)
        for ext in ("csv", "png")
    ]
    folder = f"results/{dataset}/analysis/tables/{table}"
    targets += [f"{folder}/errors.csv", f"{folder}/errors.png", f"{folder}/viewer.png"]
    if len(table_rows(table)) > 1:
        targets += [f"{folder}/category_changes.csv", f"{folder}/category_changes.png"]
    return targets


def all_targets():
    """Default target: the default_tables of the configured dataset with their analysis (rules/analysis.smk), the
    seed replicates of replicate_tables (when `replicates` is set), the mosaic sample grid, and (synthetic data with
    pseudo-label models) the pseudo-label precision against the hidden ground truth.
    """
    targets = [
        f"results/{DATASET}/tables/{table}.{ext}"
        for table in config["default_tables"]
        for ext in ("csv", "md")
    ]
    for table in config["default_tables"]:  # rules/analysis.smk, rules/report.smk
        targets += analysis_targets(DATASET, table) + report_targets(DATASET, table)
    if replicate_seeds(config):  # rules/tables.smk
        targets += replicate_table_targets(DATASET, replicate_tables(config))
    targets.append(f"results/{DATASET}/figures/mosaic_samples.png")
    if any_model_uses_pseudo_labels() and is_synthetic(DATASET):
        targets.append(f"results/{DATASET}/pseudo/precision.json")
    if any_model_uses_pseudo_labels():  # rules/analysis.smk
        targets.append(f"results/{DATASET}/pseudo/calibration.png")
    return targets


def replicate_table_targets(dataset, tables):
    """The seed-replicate tables ({table}_replicates.csv and .md) of `tables`."""
    return [
        f"results/{dataset}/tables/{table}_replicates.{ext}"
        for table in tables
        for ext in ("csv", "md")
    ]


def replicate_metrics(wildcards):
    """Input function: every metrics.json of a replicated table, seed by seed (config `replicates` order), each seed
    row by row. A clear error when `replicates` is empty."""
    seeds = replicate_seeds(config)
    if not seeds:
        raise WorkflowError(
            f"{wildcards.table}_replicates: config `replicates` is empty; list the seeds, e.g. "
            "`--configfile configs/replicates.yaml` (replicates: [0, 1, 2])"
        )
    return [
        metrics_file(
            replicate_folder(wildcards.dataset, seed), row["model"], row["test"]
        )
        for seed in seeds
        for row in table_rows(wildcards.table)
    ]
