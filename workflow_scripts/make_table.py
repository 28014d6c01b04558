"""Assemble an ablation table from metrics.json files (one per row, in row order) into CSV and markdown."""

from __future__ import annotations

import argparse
import json

from longtail_seg.cli import exit_on, script_parser
from longtail_seg.evaluation.tables import build_table, read_metrics_file, table_to_markdown, write_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--rows", required=True, help='JSON list of rows: [{"label": ..., "model": ..., "test": ...}]')
    parser.add_argument("--metrics", nargs="+", required=True, help="metrics.json per row, in row order")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-md", required=True)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    rows = json.loads(args.rows)
    with exit_on("make_table", ValueError):  # a missing or broken metrics.json, named with its fix
        metrics = [read_metrics_file(path) for path in args.metrics]
    table = build_table(rows, metrics)
    write_table(table, args.out_csv, args.out_md)
    print(table_to_markdown(table))


if __name__ == "__main__":
    main(parse_args())
