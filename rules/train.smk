rule train_representation:
    """Stage 1, representation learning: train the whole Mask R-CNN (repeat factor sampling by default).

    On a GPU cluster `resources.gpu` > 1 launches torchrun with one process per GPU; on a laptop it runs on CPU.
    """
    input:
        annotations=lambda wc: annotation_file(wc.dataset, "train"),
        images=lambda wc: image_root(wc.dataset),
        repeat_factors=stats_file("image_repeat_factors.csv"),
        categories=train_category_stats,  # federated classifier only: its training image counts
        check=data_check("train"),
    output:
        model="results/{dataset}/models/{model}/model_final.pth",
    log:
        "logs/{dataset}/train_representation/{model}.log",
    benchmark:
        "benchmarks/out/{dataset}/train_representation/{model}.tsv"
    wildcard_constraints:
        model="|".join(models_of_stage("representation")) or "__none__",
    conda:
        "../envs/longtail_seg.yaml"
    threads: config["compute"]["train_threads"]
    resources:
        gpu=config["compute"]["gpus"],
        mem_mb=config["compute"]["train_mem_mb"],
        runtime=config["compute"]["train_runtime_min"],
    params:
        model_cfg=lambda wc: as_json(model_job_settings(config, wc.model)),
        train_cfg=lambda wc: as_json(
            training_job_settings(run_config(wc.dataset), wc.model, "train")
        ),
        # how the job runs (loader workers, logging, checkpoint period), not what it computes: a parameter function
        # of `threads` is one Snakemake does not track, so changing these reruns no job (README: rerun triggers)
        run_cfg=lambda wc, threads: as_json(
            training_run_settings(config, wc.model, "train")
        ),
        out_dir=lambda wc, output: Path(output.model).parent,
        extra=train_extra_args,
    shell:
        """
        if [ {resources.gpu} -gt 1 ]; then
            launcher="torchrun --standalone --nproc_per_node={resources.gpu}"
        else
            launcher=python
        fi
        $launcher workflow_scripts/train.py --train-annotations {input.annotations:q} \
            --image-root {input.images:q} --repeat-factors {input.repeat_factors:q} \
            --model-cfg {params.model_cfg:q} --train-cfg {params.train_cfg:q} --run-cfg {params.run_cfg:q} \
            {params.extra:q} \
            --out-dir {params.out_dir:q} --threads {threads} >{log:q} 2>&1
        """


rule retrain_classifier:
    """Decoupled classifier retraining: everything but a fresh box classifier (any registered type) stays frozen.

    Models with `retrain: {mosaic: true}` see balanced mosaics; models with `pseudo_labels: true` also train on the
    pseudo-labelled unlabeled images (strong augmentation on those only).
    """
    input:
        model=source_model,
        pseudo=retrain_pseudo_input,
        annotations=lambda wc: annotation_file(wc.dataset, "train"),
        images=lambda wc: image_root(wc.dataset),
        categories=stats_file("category_stats.csv"),
        repeat_factors=stats_file("image_repeat_factors.csv"),
        check=data_check("train"),
    output:
        model="results/{dataset}/models/{model}/model_final.pth",
    log:
        "logs/{dataset}/retrain_classifier/{model}.log",
    benchmark:
        "benchmarks/out/{dataset}/retrain_classifier/{model}.tsv"
    wildcard_constraints:
        model="|".join(models_of_stage("retrain")) or "__none__",
    priority: training_priority
    conda:
        "../envs/longtail_seg.yaml"
    threads: config["compute"]["retrain_threads"]
    resources:
        gpu=config["compute"]["gpus"],
        mem_mb=config["compute"]["train_mem_mb"],
        runtime=config["compute"]["train_runtime_min"],
    params:
        classifier_cfg=lambda wc: as_json(config["models"][wc.model]["classifier"]),
        train_cfg=lambda wc: as_json(
            training_job_settings(run_config(wc.dataset), wc.model, "retrain")
        ),
        run_cfg=lambda wc, threads: as_json(
            training_run_settings(config, wc.model, "retrain")
        ),
        out_dir=lambda wc, output: Path(output.model).parent,
        stats_dir=lambda wc, input: Path(input.categories).parent,
        extra=retrain_extra_args,
    shell:
        """
        if [ {resources.gpu} -gt 1 ]; then
            launcher="torchrun --standalone --nproc_per_node={resources.gpu}"
        else
            launcher=python
        fi
        $launcher workflow_scripts/retrain.py --checkpoint {input.model:q} \
            --train-annotations {input.annotations:q} --image-root {input.images:q} \
            --stats-dir {params.stats_dir:q} --classifier-cfg {params.classifier_cfg:q} \
            --train-cfg {params.train_cfg:q} --run-cfg {params.run_cfg:q} {params.extra:q} \
            --out-dir {params.out_dir:q} \
            --threads {threads} >{log:q} 2>&1
        """


rule combine_classifiers:
    """The double classifier: two retrained classifiers on one frozen model, their box scores averaged."""
    input:
        first=lambda wc: branch_models(wc)[0],
        second=lambda wc: branch_models(wc)[1],
    output:
        model="results/{dataset}/models/{model}/model_final.pth",
    log:
        "logs/{dataset}/combine_classifiers/{model}.log",
    benchmark:
        "benchmarks/out/{dataset}/combine_classifiers/{model}.tsv"
    wildcard_constraints:
        model="|".join(models_of_stage("double")) or "__none__",
    priority: training_priority
    localrule: True
    conda:
        "../envs/longtail_seg.yaml"
    shell:
        "python workflow_scripts/combine_classifiers.py --first {input.first:q} --second {input.second:q}"
        " --out {output.model:q} > {log:q} 2>&1"
