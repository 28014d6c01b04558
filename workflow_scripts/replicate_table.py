"""Assemble an ablation table over seed replicates from metrics.json files (seed by seed, each seed row by row):
each cell's mean ± sd over the seeds and each step's paired change against the previous row, as CSV and markdown."""

from __future__ import annotations

import argparse
import json

from longtail_seg.cli import exit_on, script_parser
from longtail_seg.evaluation.replicates import replicate_markdown, replicate_summary, write_replicate_table
from longtail_seg.evaluation.tables import build_table, read_metrics_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--rows", required=True, help='JSON list of rows: [{"label": ..., "model": ..., "test": ...}]')
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="the replicate seeds, in order")
    parser.add_argument("--metrics", nargs="+", required=True,
                        help="metrics.json per seed and row: all rows of the first seed, then of the second, ...")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-md", required=True)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    rows = json.loads(args.rows)
    if len(args.metrics) != len(rows) * len(args.seeds):
        raise SystemExit(f"replicate_table: {len(args.metrics)} metrics files for {len(args.seeds)} seeds x "
                         f"{len(rows)} rows; pass one per seed and row, seed by seed")
    with exit_on("replicate_table", ValueError):  # a missing or broken metrics.json, named with its fix
        metrics = [read_metrics_file(path) for path in args.metrics]
    tables = {seed: build_table(rows, metrics[index * len(rows):(index + 1) * len(rows)], decimals=None)
              for index, seed in enumerate(args.seeds)}
    summary = replicate_summary(tables)
    write_replicate_table(summary, args.seeds, args.out_csv, args.out_md)
    print(replicate_markdown(summary, args.seeds))


if __name__ == "__main__":
    main(parse_args())
