"""Precision of pseudo labels against the unlabeled split's hidden ground truth (synthetic datasets only).

    python workflow_scripts/pseudo_label_precision.py --pseudo results/demo/pseudo/pseudo_labels.json \
        --hidden-gt data/demo/annotations/unlabeled_hidden_gt.json \
        --category-stats results/demo/stats/category_stats.csv --out results/demo/pseudo/precision.json

Only this evaluation reads the hidden file; training never does.
"""

from __future__ import annotations

import argparse

from longtail_seg.cli import script_parser
from longtail_seg.data.lvis_io import load_json
from longtail_seg.io_utils import atomic_write_json
from longtail_seg.pseudo_labels import pseudo_label_precision, read_frequency_groups


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--pseudo", required=True, help="pseudo-label LVIS JSON (rule pseudo_labels)")
    parser.add_argument("--hidden-gt", required=True, help="the unlabeled split's hidden ground truth (LVIS JSON)")
    parser.add_argument("--category-stats", required=True, help="category_stats.csv (frequency group per category)")
    parser.add_argument("--iou-threshold", type=float, default=0.5, help="box IoU for a correct label (default 0.5)")
    parser.add_argument("--out", required=True, help="precision JSON to write")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    report = pseudo_label_precision(load_json(args.pseudo), load_json(args.hidden_gt),
                                    read_frequency_groups(args.category_stats), args.iou_threshold)
    atomic_write_json(args.out, report, indent=2)
    shown = {k: (None if v is None else round(v, 3)) for k, v in report["precision"].items()}
    print(f"pseudo-label precision at IoU {args.iou_threshold}: {shown} over {report['labels']} labels -> {args.out}")
    return report


if __name__ == "__main__":
    main(parse_args())
