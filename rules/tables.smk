rule ablation_table:
    """Assemble one of the report's ablation tables (rows from config['tables']) from cached metrics.json files."""
    input:
        table_metrics,
    output:
        csv=report(
            "results/{dataset}/tables/{table}.csv",
            caption="../report/table_csv.rst",
            category=REPORT_TABLES,
            labels={"table": "{table}", "view": "raw CSV"},
        ),
        md="results/{dataset}/tables/{table}.md",
    log:
        "logs/{dataset}/tables/{table}.log",
    benchmark:
        "benchmarks/out/{dataset}/tables/{table}.tsv"
    wildcard_constraints:
        table="|".join(re.escape(name) for name in config["tables"]),
    # instant: never left waiting behind a long job for a free core (Table 1 done = its last metrics done)
    priority: 2
    localrule: True
    conda:
        "../envs/longtail_seg.yaml"
    params:
        rows=lambda wc: as_json(table_rows(wc.table)),
    shell:
        "python workflow_scripts/make_table.py --rows {params.rows:q} --metrics {input:q}"
        " --out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"


rule replicate_table:
    """An ablation table over the seed replicates (config `replicates`): each cell's mean +- sd over the seeds, and
    each step's paired change against the previous row (longtail_seg/evaluation/replicates.py).
    """
    input:
        replicate_metrics,
    output:
        csv="results/{dataset}/tables/{table}_replicates.csv",
        md="results/{dataset}/tables/{table}_replicates.md",
    log:
        "logs/{dataset}/tables/{table}_replicates.log",
    benchmark:
        "benchmarks/out/{dataset}/tables/{table}_replicates.tsv"
    wildcard_constraints:
        table="|".join(re.escape(name) for name in config["tables"]),
    priority: 2
    localrule: True
    conda:
        "../envs/longtail_seg.yaml"
    params:
        rows=lambda wc: as_json(table_rows(wc.table)),
        seeds=replicate_seeds(config),
    shell:
        "python workflow_scripts/replicate_table.py --rows {params.rows:q} --seeds {params.seeds}"
        " --metrics {input:q} --out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"


# One target rule per table, named after it: `snakemake --cores all table1` (or controls, ...).
for table_name in config["tables"]:

    rule:
        name:
            table_name
        input:
            expand(
                "results/{dataset}/tables/{table}.{ext}",
                dataset=DATASET,
                table=table_name,
                ext=["csv", "md"],
            ),
            analysis_targets(DATASET, table_name),
            report_targets(DATASET, table_name),

    # ... and its seed replicates: `snakemake --cores all table1_replicates` (needs config `replicates`).
    rule:
        name:
            f"{table_name}_replicates"
        input:
            replicate_table_targets(DATASET, [table_name]),
