"""A CSV table (an ablation table, an error breakdown, a confusion summary) as an HTML page for the Snakemake
report, which shows HTML inline but CSV only as a download. Runs under Snakemake (rules table_page,
analysis_table_page) or by hand:

    python workflow_scripts/table_page.py --csv results/demo/tables/table1.csv --title "table1" --out table1.html
"""

from __future__ import annotations

import argparse

from longtail_seg.cli import exit_on, script_parser
from longtail_seg.report_pages import write_table_page


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--csv", required=True, help="the table as CSV")
    parser.add_argument("--title", required=True, help="the page heading")
    parser.add_argument("--note", default="", help="a line under the heading (what the numbers are)")
    parser.add_argument("--decimals", type=int, default=1, help="decimals of the numbers shown")
    parser.add_argument("--out", required=True, help="the HTML page")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    with exit_on("table_page", ValueError):
        table = write_table_page(args.csv, args.out, args.title, args.note, args.decimals)
    print(f"{len(table)} rows of {args.csv} -> {args.out}")


if __name__ == "__main__":
    main(parse_args())
