"""Score calibration of the pseudo-label teacher on the val split: per LVIS group (and all), the fraction of its
detections that are true positives (IoU >= 0.5, federated protocol) per score bin, against the mean score, with the
pseudo-label score threshold marked: how much a kept pseudo label can be trusted. Runs under Snakemake (rule
teacher_calibration) or by hand:

    python workflow_scripts/teacher_calibration.py --annotations data/demo/annotations/val.json \
        --predictions results/demo/predictions/mosaic_double/single_scale.json --threshold 0.5 \
        --out-csv calibration.csv --out-png calibration.png
"""

from __future__ import annotations

import argparse

import pandas as pd

from longtail_seg.cli import add_table_and_figure_outputs, exit_on, script_parser
from longtail_seg.evaluation.lvis_eval import calibration_by_group, load_detections, load_ground_truth
from longtail_seg.evaluation.per_category import write_csv
from longtail_seg.plots import plot_calibration


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--annotations", required=True, help="LVIS-format ground truth of the val split")
    parser.add_argument("--predictions", required=True, help="the teacher's LVIS results on that split")
    parser.add_argument("--iou-type", choices=("segm", "bbox"), default="segm")
    parser.add_argument("--bins", type=int, default=10, help="equal-width score bins")
    parser.add_argument("--threshold", type=float, help="the pseudo-label score threshold, marked on the plot")
    parser.add_argument("--title", default="pseudo-label teacher", help="figure title")
    add_table_and_figure_outputs(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> pd.DataFrame:
    with exit_on("teacher_calibration", ValueError, FileNotFoundError):
        gt = load_ground_truth(args.annotations)
        calibration = calibration_by_group(gt, load_detections(gt, args.predictions, (args.iou_type,)), args.iou_type,
                                           bins=args.bins)
    table = pd.DataFrame.from_records([{"group": group, "ece": value["ece"], **b} for group, value in
                                       calibration.items() for b in value["bins"]])
    write_csv(table, args.out_csv, decimals=4)
    plot_calibration(table, args.out_png, args.threshold, args.title)
    print(", ".join(f"{group}: ECE {value['ece']:.3f} ({value['num_detections']} detections)"
                    for group, value in calibration.items()), f"-> {args.out_csv}, {args.out_png}")
    return table


if __name__ == "__main__":
    main(parse_args())
