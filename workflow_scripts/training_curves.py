"""Training loss and learning-rate curves of one trained model (representation learning or classifier retraining),
from the metrics.csv its training run wrote next to model_final.pth: PNG, and CSV of the series as drawn. Runs
under Snakemake (rule training_curves) or by hand:

    python workflow_scripts/training_curves.py --metrics results/demo/models/bgs/metrics.csv \
        --title "bgs (classifier retraining)" --out-png bgs.png --out-csv bgs.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from longtail_seg.cli import script_parser
from longtail_seg.io_utils import atomic_path
from longtail_seg.plots import plot_training_curves


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--metrics", required=True, help="metrics.csv of a training run (next to model_final.pth)")
    parser.add_argument("--title", default="", help="figure title (the model and its stage)")
    parser.add_argument("--out-png", required=True)
    parser.add_argument("--out-csv", required=True, help="the plotted series, one column per line, by iteration")
    return parser.parse_args(argv)


def read_metrics(path: str) -> pd.DataFrame:
    """A training run's metrics.csv; a missing or unreadable one, or one without iteration/lr/loss columns, exits
    naming the file and the fix."""
    fix = "rerun the training job that writes it (delete its model_final.pth, then `snakemake --cores all`)"
    if not Path(path).is_file():
        raise SystemExit(f"training_curves: {path} does not exist; the training run writes it next to "
                         f"model_final.pth; {fix}")
    try:
        metrics = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise SystemExit(f"training_curves: {path}: cannot read this metrics file ({error}); {fix}") from None
    missing = {"iteration", "lr", "loss"} - set(metrics.columns)
    if missing:
        raise SystemExit(f"training_curves: {path} has no column(s) {sorted(missing)}; it is not a metrics.csv of "
                         f"longtail_seg/engine/train.py; {fix}")
    return metrics


def main(args: argparse.Namespace) -> pd.DataFrame:
    metrics = read_metrics(args.metrics)
    drawn = plot_training_curves(metrics, args.out_png, args.title)
    with atomic_path(args.out_csv) as tmp:
        drawn.to_csv(tmp)
    print(f"{len(metrics)} logged iterations of {args.metrics} -> {args.out_png}, {args.out_csv}")
    return drawn


if __name__ == "__main__":
    main(parse_args())
