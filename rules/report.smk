# The workflow report (issue 14): `snakemake --report report.html` after a run gathers every output marked report()
# (captions in report/*.rst; categories and helpers in rules/common.smk). The rules here add what the report shows
# that no other rule writes: the ablation tables and error/confusion summaries as HTML pages (the report shows CSV
# only as a download) and the training loss/LR curves of every trained model.


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
