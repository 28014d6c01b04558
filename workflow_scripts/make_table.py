"""Assemble an ablation table from metrics.json files (one per row, in row order) into CSV and markdown."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from longtail_seg.cli import script_parser
from longtail_seg.evaluation.tables import build_table, table_to_markdown, write_table
from longtail_seg.io_utils import load_json_file

# What to do about a broken metrics.json (the error names the file).
REWRITE_METRICS = ("delete it and rerun the `evaluate` job that writes it (`snakemake --cores all` rebuilds a "
                   "missing file; by hand: workflow_scripts/evaluate.py)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--rows", required=True, help='JSON list of rows: [{"label": ..., "model": ..., "test": ...}]')
    parser.add_argument("--metrics", nargs="+", required=True, help="metrics.json per row, in row order")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-md", required=True)
    return parser.parse_args(argv)


def load_metrics(path: str) -> dict:
    """A metrics.json of workflow_scripts/evaluate.py; a missing, truncated or malformed one exits naming the file
    and the fix."""
    if not Path(path).is_file():
        raise SystemExit(f"make_table: metrics file {path} does not exist; run the `evaluate` job first")
    try:
        metrics = load_json_file(path, "metrics file", REWRITE_METRICS)
    except ValueError as error:
        raise SystemExit(f"make_table: {error}") from None
    iou_types = [t for t in ("segm", "bbox") if isinstance(metrics, dict) and t in metrics]
    if not iou_types or not all(isinstance(metrics[t], dict) for t in iou_types):
        raise SystemExit(f"make_table: {path} is not a metrics file of workflow_scripts/evaluate.py (a JSON object "
                         f"with 'segm' and/or 'bbox' metrics); {REWRITE_METRICS}")
    return metrics


def main(args: argparse.Namespace) -> None:
    rows = json.loads(args.rows)
    table = build_table(rows, [load_metrics(path) for path in args.metrics])
    write_table(table, args.out_csv, args.out_md)
    print(table_to_markdown(table))


if __name__ == "__main__":
    main(parse_args())
