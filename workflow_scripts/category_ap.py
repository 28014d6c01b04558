"""Per-category AP of one evaluated model against each category's training instance count: CSV and PNG (log x-axis,
coloured by LVIS group). Runs under Snakemake (rule category_ap) or by hand:

    python workflow_scripts/category_ap.py --per-category results/demo/eval/bgs/single_scale/per_category.csv \
        --category-stats results/demo/stats/category_stats.csv --title "bgs, single_scale" \
        --out-csv category_ap.csv --out-png category_ap.png
"""

from __future__ import annotations

import argparse

import pandas as pd

from longtail_seg.cli import add_table_and_figure_outputs, exit_on, script_parser
from longtail_seg.evaluation.per_category import category_ap, write_csv
from longtail_seg.plots import plot_category_ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--per-category", required=True, help="per_category.csv of workflow_scripts/evaluate.py")
    parser.add_argument("--category-stats", required=True, help="category_stats.csv of the statistics step")
    parser.add_argument("--title", default="", help="figure title (the model and test)")
    add_table_and_figure_outputs(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> pd.DataFrame:
    with exit_on(f"category_ap: {args.per_category}, {args.category_stats}", ValueError, KeyError):
        table = category_ap(pd.read_csv(args.per_category), pd.read_csv(args.category_stats))
    write_csv(table, args.out_csv)
    plot_category_ap(table, args.out_png, f"Per-category AP vs training instances: {args.title}")
    print(f"{len(table)} categories -> {args.out_csv}, {args.out_png}")
    return table


if __name__ == "__main__":
    main(parse_args())
