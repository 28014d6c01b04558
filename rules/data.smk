from longtail_seg.data.synthetic_config import (
    DEFAULT_MODE,
    check_synthetic_settings,
    synthetic_mode,
)


def check_synthetic_datasets():
    """The generator settings of every synthetic dataset, checked while the DAG is built (an lvis-mode train
    split too small for the 1203 categories, a key the mode does not read, ...)."""
    for name, entry in config["datasets"].items():
        if entry["source"] == "synthetic":
            try:
                check_synthetic_settings(
                    entry["synthetic"], f"datasets.{name}.synthetic"
                )
            except ValueError as error:
                raise config_error(error) from None


check_synthetic_datasets()


def synthetic_settings(dataset):
    """The generator settings of a synthetic dataset, the make_dataset job's tracked parameter. `mode` is left
    out when it is the default, so the demo's recorded parameters (and its generated data) are those from before
    the key existed."""
    settings = dict(dataset_config(dataset)["synthetic"])
    if settings.get("mode") == DEFAULT_MODE:
        del settings["mode"]
    return settings


def make_dataset_arguments(dataset):
    """The generator settings as make_dataset.py options (shell-quoted by `{params.arguments:q}`)."""
    settings = dataset_config(dataset)["synthetic"]
    arguments = ["--mode", synthetic_mode(settings), "--seed", str(settings["seed"])]
    for key in ("num_train", "num_val", "num_unlabeled", "image_size"):
        if key in settings:
            arguments += ["--" + key.replace("_", "-"), str(settings[key])]
    return arguments


rule make_dataset:
    """Generate a synthetic long-tail dataset (only for datasets with `source: synthetic`): the embedded demo, or
    the LVIS-shaped data of the LVIS rehearsal (`synthetic.mode: lvis`)."""
    output:
        train="data/{dataset}/annotations/train.json",
        val="data/{dataset}/annotations/val.json",
        unlabeled="data/{dataset}/annotations/unlabeled.json",
        hidden_gt="data/{dataset}/annotations/unlabeled_hidden_gt.json",
        images=directory("data/{dataset}/images"),
    log:
        "logs/{dataset}/make_dataset.log",
    benchmark:
        "benchmarks/out/{dataset}/make_dataset.tsv"
    conda:
        "../envs/longtail_seg.yaml"
    params:
        settings=lambda wc: synthetic_settings(wc.dataset),
        # the same settings as options; a function of `output`, so Snakemake does not track them a second time
        arguments=lambda wc, output: make_dataset_arguments(wc.dataset),
    shell:
        "python workflow_scripts/make_dataset.py --out-dir data/{wildcards.dataset:q} {params.arguments:q}"
        " > {log:q} 2>&1"


rule check_dataset:
    """The data check before training (train split) and before inference and evaluation (val split): structure,
    image records, segmentations and boxes against their image, and every image file decoded in full, with every
    problem listed in one pass (longtail_seg/data/check.py). Runs once per dataset version: again only when the
    annotation file or the image folder changes. The jobs that wait for it take its report through
    `data_check` (rules/common.smk), a gate and not a trigger.
    """
    input:
        annotations=lambda wc: annotation_file(wc.dataset, wc.split),
        images=lambda wc: image_root(wc.dataset),
    output:
        report="results/{dataset}/checks/{split}.json",
    log:
        "logs/{dataset}/check_dataset/{split}.log",
    benchmark:
        "benchmarks/out/{dataset}/check_dataset/{split}.tsv"
    wildcard_constraints:
        split="train|val",
    conda:
        "../envs/longtail_seg.yaml"
    threads: config["compute"]["check_threads"]
    params:
        role=lambda wc: "train" if wc.split == "train" else "eval",
    shell:
        "python workflow_scripts/check_dataset.py --annotations {input.annotations:q}"
        " --image-root {input.images:q} --role {params.role} --workers {threads}"
        " --out {output.report:q} > {log:q} 2>&1"
