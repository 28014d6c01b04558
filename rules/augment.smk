rule mosaic_samples:
    """A grid of balanced-mosaic samples with masks, boxes and labels drawn: what the model sees (augment.mosaic)."""
    input:
        annotations=lambda wc: annotation_file(wc.dataset, "train"),
        images=lambda wc: image_root(wc.dataset),
        repeat_factors="results/{dataset}/stats/image_repeat_factors.csv",
    output:
        report(
            "results/{dataset}/figures/mosaic_samples.png",
            caption="../report/mosaic_samples.rst",
            category=REPORT_DATASET,
            labels={"figure": "balanced-mosaic samples"},
        ),
    log:
        "logs/{dataset}/mosaic_samples.log",
    benchmark:
        "benchmarks/out/{dataset}/mosaic_samples.tsv"
    conda:
        "../envs/longtail_seg.yaml"
    params:
        mosaic_cfg=as_json(config["augment"]["mosaic"]),
    shell:
        "python workflow_scripts/mosaic_samples.py --train-annotations {input.annotations:q}"
        " --image-root {input.images:q} --repeat-factors {input.repeat_factors:q}"
        " --mosaic-cfg {params.mosaic_cfg:q} --out {output:q} > {log:q} 2>&1"
