rule pseudo_labels:
    """Pseudo labels: the teacher's detections with score >= pseudo_labels.score_threshold on the unlabeled images,
    keeping only images with at least one rare-category label (LVIS JSON with boxes, labels, RLE masks), plus
    ignore regions for the detections between pseudo_labels.ignore_threshold and the score threshold.
    """
    input:
        teacher=pseudo_teacher,
        unlabeled=lambda wc: annotation_file(wc.dataset, "unlabeled"),
        images=lambda wc: image_root(wc.dataset),
        train=lambda wc: annotation_file(wc.dataset, "train"),
        categories=stats_file("category_stats.csv"),
    output:
        pseudo="results/{dataset}/pseudo/pseudo_labels.json",
        summary="results/{dataset}/pseudo/summary.json",
    log:
        "logs/{dataset}/pseudo_labels.log",
    benchmark:
        "benchmarks/out/{dataset}/pseudo_labels.tsv"
    priority: 2
    conda:
        "../envs/longtail_seg.yaml"
    threads: config["compute"]["infer_threads"]
    resources:
        gpu=min(config["compute"]["gpus"], 1),
        mem_mb=config["compute"]["infer_mem_mb"],
        runtime=config["compute"]["infer_runtime_min"],
    params:
        test_cfg=lambda wc: as_json(
            test_job_settings(config, config["pseudo_labels"]["test"])
        ),
        threshold=config["pseudo_labels"]["score_threshold"],
        options=pseudo_label_options(),
    shell:
        "python workflow_scripts/pseudo_labels.py --teacher {input.teacher:q} --unlabeled {input.unlabeled:q}"
        " --image-root {input.images:q} --train-annotations {input.train:q} --category-stats {input.categories:q}"
        " --test-cfg {params.test_cfg:q} --score-threshold {params.threshold} {params.options:q}"
        " --out {output.pseudo:q} --summary {output.summary:q} --threads {threads} > {log:q} 2>&1"


rule pseudo_label_precision:
    """Precision of the pseudo labels against the unlabeled split's hidden ground truth (synthetic data only;
    training never reads that file)."""
    input:
        pseudo="results/{dataset}/pseudo/pseudo_labels.json",
        hidden_gt="data/{dataset}/annotations/unlabeled_hidden_gt.json",
        categories="results/{dataset}/stats/category_stats.csv",
    output:
        report(
            "results/{dataset}/pseudo/precision.json",
            caption="../report/pseudo_precision.rst",
            category=REPORT_PSEUDO,
            labels={"figure": "pseudo-label precision (JSON)"},
        ),
    log:
        "logs/{dataset}/pseudo_label_precision.log",
    benchmark:
        "benchmarks/out/{dataset}/pseudo_label_precision.tsv"
    localrule: True
    conda:
        "../envs/longtail_seg.yaml"
    shell:
        "python workflow_scripts/pseudo_label_precision.py --pseudo {input.pseudo:q} --hidden-gt {input.hidden_gt:q}"
        " --category-stats {input.categories:q} --out {output:q} > {log:q} 2>&1"
