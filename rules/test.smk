rule infer:
    """Run a trained model on the val split and write LVIS results JSON (boxes and RLE masks, <= 300 per image)."""
    input:
        model="results/{dataset}/models/{model}/model_final.pth",
        annotations=lambda wc: annotation_file(wc.dataset, "val"),
        images=lambda wc: image_root(wc.dataset),
        categories=norcal_category_stats,  # tests with norcal_gamma only: the training instance counts
        check=data_check("val"),
    output:
        predictions="results/{dataset}/predictions/{model}/{test}.json",
    log:
        "logs/{dataset}/infer/{model}/{test}.log",
    benchmark:
        "benchmarks/out/{dataset}/infer/{model}/{test}.tsv"
    priority: test_priority
    conda:
        "../envs/longtail_seg.yaml"
    threads: config["compute"]["infer_threads"]
    resources:
        gpu=min(config["compute"]["gpus"], 1),
        mem_mb=config["compute"]["infer_mem_mb"],
        runtime=config["compute"]["infer_runtime_min"],
    params:
        test_cfg=lambda wc: as_json(test_job_settings(config, wc.test)),
    shell:
        # --category-stats is followed by no file for a test without norcal_gamma (no new parameter: a test that
        # does not calibrate keeps its results)
        "python workflow_scripts/infer.py --checkpoint {input.model:q} --annotations {input.annotations:q}"
        " --image-root {input.images:q} --test-cfg {params.test_cfg:q}"
        " --category-stats {input.categories:q} --out {output.predictions:q}"
        " --threads {threads} > {log:q} 2>&1"


rule evaluate:
    """LVIS evaluation (federated protocol, bbox and segm) of one predictions file, under the test's protocol;
    also each category's AP (read by rules/analysis.smk; the TIDE breakdown is rule tide_errors, table rows only).
    """
    input:
        predictions="results/{dataset}/predictions/{model}/{test}.json",
        annotations=lambda wc: annotation_file(wc.dataset, "val"),
        check=data_check("val"),
    output:
        metrics="results/{dataset}/eval/{model}/{test}/metrics.json",
        per_category="results/{dataset}/eval/{model}/{test}/per_category.csv",
    log:
        "logs/{dataset}/evaluate/{model}/{test}.log",
    benchmark:
        "benchmarks/out/{dataset}/evaluate/{model}/{test}.tsv"
    priority: test_priority
    conda:
        "../envs/longtail_seg.yaml"
    params:
        protocol=lambda wc: evaluation_job_settings(config, wc.test)["protocol"],
        dets_per_category=lambda wc: evaluation_job_settings(config, wc.test)[
            "dets_per_category"
        ],
    shell:
        "python workflow_scripts/evaluate.py --annotations {input.annotations:q}"
        " --predictions {input.predictions:q} --checked {input.check:q}"
        " --protocol {params.protocol:q} --dets-per-category {params.dets_per_category}"
        " --out {output.metrics:q} --out-per-category {output.per_category:q}"
        " > {log:q} 2>&1"
