"""TIDE-style error breakdown of each row of a table (hotcoco's tide_errors, written by the evaluate rule): the AP
points at IoU 0.5 that fixing each error type would add, and its count, as CSV and PNG; and each row's most frequent
mistakes on rare categories (rare object -> detection of another category) as CSV. Runs under Snakemake (rule
error_breakdown) or by hand:

    python workflow_scripts/error_breakdown.py --rows '[{"label": "RFS"}, {"label": "+BGS"}]' \
        --errors a/errors.json b/errors.json --out-csv errors.csv --out-png errors.png --out-confusions confusions.csv
"""

from __future__ import annotations

import argparse
import json

import pandas as pd

from longtail_seg.cli import add_table_and_figure_outputs, exit_on, script_parser
from longtail_seg.evaluation.per_category import confusion_table, error_table, write_csv
from longtail_seg.io_utils import load_json_file
from longtail_seg.plots import plot_error_breakdown


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--rows", required=True, help='JSON list of the table rows: [{"label": ...}, ...]')
    parser.add_argument("--errors", nargs="+", required=True, help="errors.json per row, in row order")
    parser.add_argument("--iou-type", choices=("segm", "bbox"), default="segm")
    add_table_and_figure_outputs(parser)
    parser.add_argument("--out-confusions", help="CSV of each row's most frequent mistakes on rare categories")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> pd.DataFrame:
    labels = [row["label"] for row in json.loads(args.rows)]
    if len(labels) != len(args.errors):
        raise SystemExit(f"error_breakdown: {len(labels)} rows but {len(args.errors)} errors.json files")
    fix = "delete it and rerun the `evaluate` job that writes it"
    loaded = [(label, load_json_file(path, "error breakdown", fix)) for label, path in zip(labels, args.errors)]
    with exit_on("error_breakdown", ValueError, KeyError):
        table = error_table(loaded, args.iou_type)
    write_csv(table, args.out_csv)
    if args.out_confusions:
        write_csv(confusion_table(loaded, args.iou_type), args.out_confusions)
    plot_error_breakdown(table, args.out_png, "mask" if args.iou_type == "segm" else "box")
    print(f"{len(table)} rows -> {args.out_csv}, {args.out_png}")
    return table


if __name__ == "__main__":
    main(parse_args())
