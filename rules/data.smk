rule make_dataset:
    """Generate the embedded synthetic long-tail dataset (only for datasets with `source: synthetic`)."""
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
        settings=lambda wc: dataset_config(wc.dataset)["synthetic"],
    shell:
        "python workflow_scripts/make_dataset.py --out-dir data/{wildcards.dataset:q}"
        " --seed {params.settings[seed]} --image-size {params.settings[image_size]}"
        " --num-train {params.settings[num_train]} --num-val {params.settings[num_val]}"
        " --num-unlabeled {params.settings[num_unlabeled]} > {log:q} 2>&1"
