rule ablation_table:
    """Assemble one of the report's ablation tables (rows from config['tables']) from cached metrics.json files."""
    input:
        table_metrics,
    output:
        csv="results/{dataset}/tables/{table}.csv",
        md="results/{dataset}/tables/{table}.md",
    log:
        "logs/{dataset}/tables/{table}.log",
    benchmark:
        "benchmarks/out/{dataset}/tables/{table}.tsv"
    wildcard_constraints:
        table="table[0-9]+",
    localrule: True
    conda:
        "../envs/longtail_seg.yaml"
    params:
        rows=lambda wc: as_json(table_rows(wc.table)),
    shell:
        "python workflow_scripts/make_table.py --rows '{params.rows}' --metrics {input}"
        " --out-csv {output.csv} --out-md {output.md} > {log} 2>&1"


rule table1:
    """Target: Table 1 (training ablation) of the configured dataset."""
    input:
        expand(
            "results/{dataset}/tables/table1.{ext}", dataset=DATASET, ext=["csv", "md"]
        ),


rule table2:
    """Target: Table 2 (test-time strategies) of the configured dataset."""
    input:
        expand(
            "results/{dataset}/tables/table2.{ext}", dataset=DATASET, ext=["csv", "md"]
        ),


rule table3:
    """Target: Table 3 (baseline vs ours) of the configured dataset."""
    input:
        expand(
            "results/{dataset}/tables/table3.{ext}", dataset=DATASET, ext=["csv", "md"]
        ),
