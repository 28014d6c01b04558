# Long-tail instance segmentation on LVIS: "Balanced Mosaic and Double Classifier" (LVIS Challenge 2020) as a
# Snakemake workflow. `snakemake --cores all` reproduces Table 1 on the embedded demo dataset; see README.md.


configfile: "config.yaml"


# `snakemake --report report.html` after a run: the outputs marked report() (rules/report.smk), this text on top.
report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/stats.smk"
include: "rules/augment.smk"
include: "rules/train.smk"
include: "rules/pseudo.smk"
include: "rules/test.smk"
include: "rules/analysis.smk"
include: "rules/tables.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
