rule train_representation:
    """Stage 1, representation learning: train the whole Mask R-CNN (repeat factor sampling by default).

    On a GPU cluster `resources.gpu` > 1 launches torchrun with one process per GPU; on a laptop it runs on CPU.
    """
    input:
        annotations=lambda wc: annotation_file(wc.dataset, "train"),
        images=lambda wc: image_root(wc.dataset),
        repeat_factors="results/{dataset}/stats/image_repeat_factors.csv",
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
        model_cfg=lambda wc: as_json(config["model"]),
        train_cfg=lambda wc: as_json(train_settings(wc.model)),
        out_dir="results/{dataset}/models/{model}",
    shell:
        """
        if [ {resources.gpu} -gt 1 ]; then
            launcher="torchrun --standalone --nproc_per_node={resources.gpu}"
        else
            launcher=python
        fi
        $launcher workflow_scripts/train.py --train-annotations {input.annotations} \
            --image-root {input.images} --repeat-factors {input.repeat_factors} \
            --model-cfg '{params.model_cfg}' --train-cfg '{params.train_cfg}' \
            --out-dir {params.out_dir} --threads {threads} >{log} 2>&1
        """
