rule dataset_stats:
    """Per-category counts, LVIS groups, category repeat factors, sampling probabilities and BGS bins of the train
    split, with the long-tail plot."""
    input:
        annotations=lambda wc: annotation_file(wc.dataset, "train"),
    output:
        categories="results/{dataset}/stats/category_stats.csv",
        summary="results/{dataset}/stats/summary.json",
        plot=report(
            "results/{dataset}/stats/long_tail.png",
            caption="../report/long_tail.rst",
            category=REPORT_DATASET,
            labels={"figure": "long-tail distribution"},
        ),
    log:
        "logs/{dataset}/dataset_stats.log",
    benchmark:
        "benchmarks/out/{dataset}/dataset_stats.tsv"
    conda:
        "../envs/longtail_seg.yaml"
    params:
        threshold=config["stats"]["rfs_threshold"],
        bins=config["stats"]["bgs_bins"],
    shell:
        "python workflow_scripts/dataset_stats.py --annotations {input.annotations:q}"
        " --out-dir results/{wildcards.dataset:q}/stats --rfs-threshold {params.threshold}"
        " --bgs-bins {params.bins} --parts categories > {log:q} 2>&1"


rule repeat_factors:
    """Image repeat factors of the train split (what repeat factor sampling and the balanced mosaic read). A job of
    its own, so that a setting it does not read (e.g. `stats.bgs_bins`) does not rerun representation learning.
    """
    input:
        annotations=lambda wc: annotation_file(wc.dataset, "train"),
    output:
        images="results/{dataset}/stats/image_repeat_factors.csv",
    log:
        "logs/{dataset}/repeat_factors.log",
    benchmark:
        "benchmarks/out/{dataset}/repeat_factors.tsv"
    conda:
        "../envs/longtail_seg.yaml"
    params:
        threshold=config["stats"]["rfs_threshold"],
    shell:
        "python workflow_scripts/dataset_stats.py --annotations {input.annotations:q}"
        " --out-dir results/{wildcards.dataset:q}/stats --rfs-threshold {params.threshold}"
        " --parts repeat_factors > {log:q} 2>&1"


rule stats:
    """Target: the dataset statistics of the configured dataset."""
    input:
        expand(
            "results/{dataset}/stats/{name}",
            dataset=DATASET,
            name=[
                "category_stats.csv",
                "image_repeat_factors.csv",
                "summary.json",
                "long_tail.png",
            ],
        ),
