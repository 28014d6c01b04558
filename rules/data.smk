from longtail_seg.data.synthetic_config import (
    check_synthetic_datasets,
    make_dataset_arguments,
    synthetic_job_settings,
)

# The generator settings of every synthetic dataset, checked while the DAG is built (an lvis-mode train split too
# small for the 1203 categories, a key the mode does not read, ...).
try:
    check_synthetic_datasets(config["datasets"])
except ValueError as error:
    raise config_error(error) from None


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
        # tracked: `mode` left out when it is the default, so the demo's recorded parameters stay as they were
        settings=lambda wc: synthetic_job_settings(
            dataset_config(wc.dataset)["synthetic"]
        ),
        # the same settings as options; a function of `output`, so Snakemake does not track them a second time
        arguments=lambda wc, output: make_dataset_arguments(
            dataset_config(wc.dataset)["synthetic"]
        ),
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
