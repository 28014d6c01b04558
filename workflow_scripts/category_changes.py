"""Per-category AP change of each ablation step against the previous row of a table: every category in the CSV,
the largest gains and losses named in the PNG (rare categories in bold). Runs under Snakemake (rule
category_changes) or by hand:

    python workflow_scripts/category_changes.py --rows '[{"label": "RFS"}, {"label": "+BGS"}]' \
        --per-category a/per_category.csv b/per_category.csv --category-stats category_stats.csv --top 10 \
        --out-csv category_changes.csv --out-png category_changes.png
"""

from __future__ import annotations

import argparse
import json

import pandas as pd

from longtail_seg.cli import add_table_and_figure_outputs, script_parser
from longtail_seg.evaluation.per_category import ap_changes, category_ap, write_csv
from longtail_seg.plots import plot_ap_changes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--rows", required=True, help='JSON list of the table rows: [{"label": ...}, ...]')
    parser.add_argument("--per-category", nargs="+", required=True, help="per_category.csv per row, in row order")
    parser.add_argument("--category-stats", required=True, help="category_stats.csv of the statistics step")
    parser.add_argument("--iou-type", choices=("segm", "bbox"), default="segm")
    parser.add_argument("--top", type=int, default=10, help="gains and losses named per step in the PNG")
    add_table_and_figure_outputs(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> pd.DataFrame:
    labels = [row["label"] for row in json.loads(args.rows)]
    if len(labels) != len(args.per_category) or len(labels) < 2:
        raise SystemExit(f"category_changes: {len(labels)} rows and {len(args.per_category)} per_category.csv files; "
                         "pass one file per row, two rows or more")
    stats = pd.read_csv(args.category_stats)
    rows = [(label, category_ap(pd.read_csv(path), stats)) for label, path in zip(labels, args.per_category)]
    changes = ap_changes(rows, args.iou_type)
    write_csv(changes, args.out_csv)
    plot_ap_changes(changes, args.out_png, args.top, "mask AP" if args.iou_type == "segm" else "box AP")
    print(f"{changes['step'].nunique()} steps x {len(rows[0][1])} categories -> {args.out_csv}, {args.out_png}")
    return changes


if __name__ == "__main__":
    main(parse_args())
