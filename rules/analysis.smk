# Per-category analysis, error breakdown and prediction viewer (issue 14): cheap figures and CSVs from the evaluate
# rule's per_category.csv / errors.json and the val predictions. Per row: results/{dataset}/analysis/{model}/{test}/;
# per table: results/{dataset}/analysis/tables/{table}/.


rule category_ap:
    """Per-category AP of one evaluated model against training instance counts (CSV, PNG with log x-axis)."""
    input:
        per_category="results/{dataset}/eval/{model}/{test}/per_category.csv",
        stats="results/{dataset}/stats/category_stats.csv",
    output:
        csv=report(
            "results/{dataset}/analysis/{model}/{test}/category_ap.csv",
            caption="../report/category_ap.rst",
            category=REPORT_CATEGORY_AP,
            labels={"model": "{model}", "test": "{test}", "view": "raw CSV"},
        ),
        png=report(
            "results/{dataset}/analysis/{model}/{test}/category_ap.png",
            caption="../report/category_ap.rst",
            category=REPORT_CATEGORY_AP,
            labels={"model": "{model}", "test": "{test}", "view": "figure"},
        ),
    log:
        "logs/{dataset}/analysis/{model}/{test}/category_ap.log",
    benchmark:
        "benchmarks/out/{dataset}/analysis/{model}/{test}/category_ap.tsv"
    localrule: True
    conda:
        "../envs/longtail_seg.yaml"
    params:
        title=lambda wc: f"{wc.model}, {wc.test}",
    shell:
        "python workflow_scripts/category_ap.py --per-category {input.per_category:q}"
        " --category-stats {input.stats:q} --title {params.title:q}"
        " --out-csv {output.csv:q} --out-png {output.png:q} > {log:q} 2>&1"


rule category_changes:
    """Each ablation step's per-category AP change against the previous row (CSV; PNG naming the top gains and
    losses, rare categories in bold)."""
    input:
        per_category=table_row_files("per_category.csv"),
        stats="results/{dataset}/stats/category_stats.csv",
    output:
        csv=report(
            "results/{dataset}/analysis/tables/{table}/category_changes.csv",
            caption="../report/category_changes.rst",
            category=REPORT_ANALYSIS,
            subcategory="{table}",
            labels={"figure": "per-category AP changes (CSV)"},
        ),
        png=report(
            "results/{dataset}/analysis/tables/{table}/category_changes.png",
            caption="../report/category_changes.rst",
            category=REPORT_ANALYSIS,
            subcategory="{table}",
            labels={"figure": "per-category AP changes"},
        ),
    log:
        "logs/{dataset}/analysis/tables/{table}/category_changes.log",
    benchmark:
        "benchmarks/out/{dataset}/analysis/tables/{table}/category_changes.tsv"
    wildcard_constraints:
        table="|".join(re.escape(name) for name in config["tables"]),
    localrule: True
    conda:
        "../envs/longtail_seg.yaml"
    params:
        rows=lambda wc: as_json(table_rows(wc.table)),
        top=config["analysis"]["top_changes"],
    shell:
        "python workflow_scripts/category_changes.py --rows {params.rows:q}"
        " --per-category {input.per_category:q} --category-stats {input.stats:q} --top {params.top}"
        " --out-csv {output.csv:q} --out-png {output.png:q} > {log:q} 2>&1"


rule tide_errors:
    """The TIDE-style error breakdown (hotcoco) of one predictions file and its most frequent mistakes on rare
    categories: a second, standard evaluation for table rows only, so the evaluate rule keeps bare hotcoco's speed
    (the breakdown costs about half an evaluation more)."""
    input:
        predictions="results/{dataset}/predictions/{model}/{test}.json",
        annotations=lambda wc: annotation_file(wc.dataset, "val"),
        check=data_check("val"),
    output:
        errors="results/{dataset}/eval/{model}/{test}/errors.json",
    log:
        "logs/{dataset}/tide_errors/{model}/{test}.log",
    benchmark:
        "benchmarks/out/{dataset}/tide_errors/{model}/{test}.tsv"
    conda:
        "../envs/longtail_seg.yaml"
    params:
        confusion_min_score=config["analysis"]["confusion_min_score"],
    shell:
        "python workflow_scripts/evaluate.py --annotations {input.annotations:q}"
        " --predictions {input.predictions:q} --checked {input.check:q}"
        " --out-errors {output.errors:q} --confusion-min-score {params.confusion_min_score}"
        " > {log:q} 2>&1"


rule error_breakdown:
    """The TIDE-style error breakdown (hotcoco) of every row of a table (CSV, PNG) and its most frequent mistakes on
    rare categories (CSV)."""
    input:
        errors=table_row_files("errors.json"),
    output:
        csv="results/{dataset}/analysis/tables/{table}/errors.csv",
        png=report(
            "results/{dataset}/analysis/tables/{table}/errors.png",
            caption="../report/errors.rst",
            category=REPORT_ANALYSIS,
            subcategory="{table}",
            labels={"figure": "errors"},
        ),
        confusions="results/{dataset}/analysis/tables/{table}/confusions.csv",
    log:
        "logs/{dataset}/analysis/tables/{table}/errors.log",
    benchmark:
        "benchmarks/out/{dataset}/analysis/tables/{table}/errors.tsv"
    wildcard_constraints:
        table="|".join(re.escape(name) for name in config["tables"]),
    localrule: True
    conda:
        "../envs/longtail_seg.yaml"
    params:
        rows=lambda wc: as_json(table_rows(wc.table)),
    shell:
        "python workflow_scripts/error_breakdown.py --rows {params.rows:q} --errors {input.errors:q}"
        " --out-csv {output.csv:q} --out-png {output.png:q} --out-confusions {output.confusions:q}"
        " > {log:q} 2>&1"


rule prediction_viewer:
    """Val images: ground truth next to the first and the last row's predictions of a table (PNG)."""
    input:
        predictions=lambda wc: [
            f"results/{wc.dataset}/predictions/{row['model']}/{row['test']}.json"
            for row in viewer_rows(wc.table)
        ],
        annotations=lambda wc: annotation_file(wc.dataset, "val"),
        images=lambda wc: image_root(wc.dataset),
        check=data_check("val"),
    output:
        png=report(
            "results/{dataset}/analysis/tables/{table}/viewer.png",
            caption="../report/viewer.rst",
            category=REPORT_ANALYSIS,
            subcategory="{table}",
            labels={"figure": "predictions, first and last row"},
        ),
    log:
        "logs/{dataset}/analysis/tables/{table}/viewer.log",
    benchmark:
        "benchmarks/out/{dataset}/analysis/tables/{table}/viewer.tsv"
    wildcard_constraints:
        table="|".join(re.escape(name) for name in config["tables"]),
    localrule: True
    conda:
        "../envs/longtail_seg.yaml"
    params:
        labels=lambda wc: [row["label"] for row in viewer_rows(wc.table)],
        num_images=config["analysis"]["viewer_images"],
        threshold=config["analysis"]["viewer_score_threshold"],
    shell:
        "python workflow_scripts/view_predictions.py --annotations {input.annotations:q}"
        " --image-root {input.images:q} --predictions {input.predictions:q} --labels {params.labels:q}"
        " --num-images {params.num_images} --score-threshold {params.threshold} --out {output.png:q} > {log:q} 2>&1"


rule teacher_calibration:
    """Score calibration of the pseudo-label teacher on val, per LVIS group, next to the pseudo-label summary (the
    score threshold depends on it): CSV and reliability-curve PNG."""
    input:
        predictions=lambda wc: (
            f"results/{wc.dataset}/predictions/{config['pseudo_labels']['teacher']}/"
            f"{config['pseudo_labels']['test']}.json"
        ),
        annotations=lambda wc: annotation_file(wc.dataset, "val"),
        check=data_check("val"),
    output:
        csv=report(
            "results/{dataset}/pseudo/calibration.csv",
            caption="../report/calibration.rst",
            category=REPORT_PSEUDO,
            labels={"figure": "teacher calibration (CSV)"},
        ),
        png=report(
            "results/{dataset}/pseudo/calibration.png",
            caption="../report/calibration.rst",
            category=REPORT_PSEUDO,
            labels={"figure": "teacher calibration"},
        ),
    log:
        "logs/{dataset}/pseudo/calibration.log",
    benchmark:
        "benchmarks/out/{dataset}/pseudo/calibration.tsv"
    localrule: True
    conda:
        "../envs/longtail_seg.yaml"
    params:
        threshold=config["pseudo_labels"]["score_threshold"],
        title=lambda wc: (
            f"teacher {config['pseudo_labels']['teacher']}, {config['pseudo_labels']['test']}, val"
        ),
    shell:
        "python workflow_scripts/teacher_calibration.py --annotations {input.annotations:q}"
        " --predictions {input.predictions:q} --threshold {params.threshold} --title {params.title:q}"
        " --out-csv {output.csv:q} --out-png {output.png:q} > {log:q} 2>&1"
