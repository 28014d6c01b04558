# The workflow report (issue 14): `snakemake --report report.html` after a run gathers every output marked report()
# (captions in report/*.rst). The rules here add what the report shows that no other rule writes: the ablation
# tables and error/confusion summaries as HTML pages (the report shows CSV only as a download) and the training
# loss/LR curves of every trained model.

REPORT_TABLES = "Ablation tables"
REPORT_ANALYSIS = "Analysis per table"
REPORT_CATEGORY_AP = "Per-category AP"
REPORT_TRAINING = "Training curves"
REPORT_DATASET = "Dataset"
REPORT_PSEUDO = "Pseudo labels"

# The analysis CSVs of a table shown as pages: name -> (heading, note, decimals).
ANALYSIS_PAGES = {
    "errors": (
        "TIDE error breakdown of the mask AP at IoU 0.5",
        "AP50: the row's mask AP at IoU 0.5; dAP_TYPE: the AP50 points fixing every error of that type would add;"
        " count_TYPE: how many errors of that type.",
        2,
    ),
    "confusions": (
        "Most frequent mistakes on rare categories",
        "Per row, rare-category objects detected as another category (predicted_name, its LVIS group"
        " predicted_frequency), with how often.",
        0,
    ),
}


def training_stage_name(model):
    stage = config["models"][model]["stage"]
    return (
        "representation learning"
        if stage == "representation"
        else "classifier retraining"
    )


def trained_models(table):
    """The models a table's rows rest on that ran a training job (representation learning or classifier
    retraining): the rows' models, the branches of double classifiers, the models retraining starts from and the
    pseudo-label teacher, in first-seen order."""
    seen, pending = [], [row["model"] for row in table_rows(table)]
    while pending:
        model = pending.pop(0)
        if model in seen:
            continue
        seen.append(model)
        settings = config["models"][model]
        pending += settings.get("branches", [])
        pending += [settings["from"]] if "from" in settings else []
        if uses_pseudo_labels(config, model):
            pending.append(config["pseudo_labels"]["teacher"])
    return [
        m for m in seen if config["models"][m]["stage"] in ("representation", "retrain")
    ]


def report_targets(dataset, table):
    """What the report shows of a table beyond its analysis: the table's page, its error and confusion pages, and
    the training curves of the models it rests on."""
    folder = f"results/{dataset}/analysis/tables/{table}"
    targets = [f"results/{dataset}/tables/{table}.html"]
    targets += [f"{folder}/{name}.html" for name in ANALYSIS_PAGES]
    targets += [
        f"results/{dataset}/figures/training/{model}.{ext}"
        for model in trained_models(table)
        for ext in ("png", "csv")
    ]
    return targets


rule training_curves:
    """Loss terms and learning rate against iteration of one trained model, from its training run's metrics.csv
    (PNG, and the plotted series as CSV)."""
    input:
        model="results/{dataset}/models/{model}/model_final.pth",
    output:
        png=report(
            "results/{dataset}/figures/training/{model}.png",
            caption="../report/training_curves.rst",
            category=REPORT_TRAINING,
            subcategory=lambda wc: training_stage_name(wc.model),
            labels={"model": "{model}", "figure": "loss and LR"},
        ),
        csv="results/{dataset}/figures/training/{model}.csv",
    log:
        "logs/{dataset}/training_curves/{model}.log",
    benchmark:
        "benchmarks/out/{dataset}/training_curves/{model}.tsv"
    wildcard_constraints:
        model="|".join(models_of_stage("representation") + models_of_stage("retrain"))
        or "__none__",
    localrule: True
    conda:
        "../envs/longtail_seg.yaml"
    params:
        metrics=lambda wc, input: Path(input.model).parent / "metrics.csv",
        title=lambda wc: f"{wc.model} ({training_stage_name(wc.model)})",
    shell:
        "python workflow_scripts/training_curves.py --metrics {params.metrics:q} --title {params.title:q}"
        " --out-png {output.png:q} --out-csv {output.csv:q} > {log:q} 2>&1"


rule table_page:
    """An ablation table as an HTML page for the report."""
    input:
        csv="results/{dataset}/tables/{table}.csv",
    output:
        html=report(
            "results/{dataset}/tables/{table}.html",
            caption="../report/table.rst",
            category=REPORT_TABLES,
            labels={"table": "{table}", "view": "page"},
        ),
    log:
        "logs/{dataset}/tables/{table}_page.log",
    benchmark:
        "benchmarks/out/{dataset}/tables/{table}_page.tsv"
    wildcard_constraints:
        table="|".join(re.escape(name) for name in config["tables"]),
    localrule: True
    conda:
        "../envs/longtail_seg.yaml"
    params:
        title=lambda wc: f"{wc.table} ({wc.dataset}): mask AP (AP, APr, APc, APf) and box AP (bbox_*), %",
        note=lambda wc: "Rows: "
        + "; ".join(
            f"{row['label']} = model {row['model']}, test {row['test']}"
            for row in table_rows(wc.table)
        ),
    shell:
        "python workflow_scripts/table_page.py --csv {input.csv:q} --title {params.title:q}"
        " --note {params.note:q} --out {output.html:q} > {log:q} 2>&1"


rule analysis_table_page:
    """A table's error breakdown or confusion summary (analysis CSVs) as an HTML page for the report."""
    input:
        csv="results/{dataset}/analysis/tables/{table}/{page}.csv",
    output:
        html=report(
            "results/{dataset}/analysis/tables/{table}/{page}.html",
            caption="../report/analysis_page.rst",
            category=REPORT_ANALYSIS,
            subcategory="{table}",
            labels={"figure": "{page} (table)"},
        ),
    log:
        "logs/{dataset}/analysis/tables/{table}/{page}_page.log",
    benchmark:
        "benchmarks/out/{dataset}/analysis/tables/{table}/{page}_page.tsv"
    wildcard_constraints:
        table="|".join(re.escape(name) for name in config["tables"]),
        page="|".join(ANALYSIS_PAGES),
    localrule: True
    conda:
        "../envs/longtail_seg.yaml"
    params:
        title=lambda wc: f"{wc.table}: {ANALYSIS_PAGES[wc.page][0]}",
        note=lambda wc: ANALYSIS_PAGES[wc.page][1],
        decimals=lambda wc: ANALYSIS_PAGES[wc.page][2],
    shell:
        "python workflow_scripts/table_page.py --csv {input.csv:q} --title {params.title:q}"
        " --note {params.note:q} --decimals {params.decimals} --out {output.html:q} > {log:q} 2>&1"
